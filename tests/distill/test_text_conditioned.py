"""diffspeed.distill on a text-conditioned model: a tiny random-weight UNet2DConditionModel
trained on (latents, encoder_hidden_states) pairs with its empty-prompt uncond, built offline.
The LCM-LoRA it writes loads into a StableDiffusionPipeline and samples with LCMScheduler."""

import copy
import csv
import math

import pytest
import torch

import diffspeed
from diffspeed.core.adapters import from_diffusers
from diffspeed.core.contract import CondSpec
from diffspeed.distill import LCM, LCMLoRA, Progressive, TrainConfig
from diffspeed.distill.consistency import load_consistency, sample_consistency
from diffspeed.distill.lora import fuse_lora
from diffspeed.distill.students import load_student, sample_student
from diffspeed.errors import UnsupportedModelError

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

#: Stable Diffusion's training schedule (scaled-linear betas).
SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
PROMPTS = ["a cat", "a dog", "red car", "blue sky"]
KEY = "encoder_hidden_states"


@pytest.fixture(scope="module")
def sd(sd_components):
    """Tiny SD components, the teacher denoiser (with its spec) and training pairs."""
    unet, text, tok = (sd_components[k] for k in ("unet", "text_encoder", "tokenizer"))

    def embed(prompts):
        ids = tok(prompts, padding="max_length", max_length=16, return_tensors="pt").input_ids
        with torch.no_grad():
            return text(ids)[0]

    teacher = from_diffusers(unet, diffusers.DDPMScheduler(**SD_BETAS))
    teacher.cond_spec = CondSpec(keys=(KEY,), uncond={KEY: embed([""])}, sample_shape=(4, 8, 8))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(32, 4, 8, 8, generator=g) * 0.8
    embs = embed(PROMPTS).repeat(8, 1, 1)
    return {"teacher": teacher, "data": (latents, {KEY: embs}), "embs": embs, **sd_components}


def _train(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, lr=1e-3, ema_decay=0.9, checkpoint_every=0)


def _finite_log(run_dir) -> bool:
    with open(run_dir / "train_log.csv") as f:
        return all(math.isfinite(float(r["loss"])) for r in csv.DictReader(f))


def test_progressive_on_a_text_unet(sd, tmp_path):
    cfg = Progressive(teacher_steps=4, final_steps=1, guidance=2.0)
    path = diffspeed.distill(
        sd["teacher"], cfg, train=[_train(12), _train(12)], out=tmp_path, data=sd["data"]
    )
    assert path == tmp_path / "round-1" / "student.safetensors"
    assert _finite_log(tmp_path / "round-2") and _finite_log(tmp_path / "round-1")
    den, recipe = load_student(path)
    assert type(den.model).__name__ == "UNet2DConditionModel" and recipe.steps == 1
    # the student keeps the teacher's conditioning, empty-prompt embeddings included
    spec = den.cond_spec
    assert spec.keys == (KEY,) and spec.sample_shape == (4, 8, 8)
    torch.testing.assert_close(spec.uncond[KEY], sd["teacher"].cond_spec.uncond[KEY])
    x = sample_student((den, recipe), torch.randn(4, 4, 8, 8), {KEY: sd["embs"][:4]})
    assert x.shape == (4, 4, 8, 8) and torch.isfinite(x).all()


def test_lcm_on_a_text_unet(sd, tmp_path):
    cfg = LCM(strength=1.0, w_range=(1.5, 1.5), guidance=1.5, groups=2)
    path = diffspeed.distill(sd["teacher"], cfg, train=_train(24), out=tmp_path, data=sd["data"])
    assert _finite_log(tmp_path)
    den, recipe = load_consistency(path)
    assert not recipe.w_conditioned and recipe.guidance == 1.5
    x = sample_consistency((den, recipe), torch.randn(4, 4, 8, 8), {KEY: sd["embs"][:4]}, 2)
    assert x.shape == (4, 4, 8, 8) and torch.isfinite(x).all()
    # a range of scales needs a guidance embedding, which only class-embedding UNets get here
    with pytest.raises(UnsupportedModelError, match="one guidance scale"):
        ranged = LCM(w_range=(1.0, 2.0))
        diffspeed.distill(
            sd["teacher"], ranged, train=_train(1), out=tmp_path / "w", data=sd["data"]
        )


def test_lcm_lora_on_a_text_unet_loads_into_a_stable_diffusion_pipeline(sd, tmp_path):
    cfg = LCMLoRA(strength=1.0, guidance=1.5, rank=4, groups=2)
    train = TrainConfig(steps=24, batch_size=8, lr=1e-2, ema_decay=0.0, checkpoint_every=0)
    lora = diffspeed.distill(sd["teacher"], cfg, train=train, out=tmp_path, data=sd["data"])
    assert lora == tmp_path / "lora" and _finite_log(tmp_path)
    pipe = diffusers.StableDiffusionPipeline(
        unet=copy.deepcopy(sd["unet"]),  # the adapter loads into a copy
        vae=sd["vae"], text_encoder=sd["text_encoder"],
        tokenizer=sd["tokenizer"], scheduler=diffusers.LCMScheduler(**SD_BETAS, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(
            ["a cat", "a dog"], num_inference_steps=2, guidance_scale=1.0, generator=g,
            output_type="latent",
        ).images  # fmt: skip

    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([999, 499]), sd["embs"][:2]
    with torch.no_grad():
        ours = fuse_lora(sd["unet"], lora)(x, t, encoder_hidden_states=c).sample
    before = run()
    pipe.load_lora_weights(lora)
    after = run()
    assert after.shape == (2, 4, 8, 8) and torch.isfinite(after).all()
    assert not torch.allclose(before, after)  # the trained adapter changes the sampler
    # the pipeline's adapted UNet computes what diffspeed's fused copy computes
    with torch.no_grad():
        theirs = pipe.unet(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
