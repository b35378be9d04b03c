"""mini-sd: its tokenizer, data maps, the shipped pipeline folder, and a resumable training."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffspeed.errors import DiffspeedError, WeightsError
from diffspeed.models.minisd import data as msd
from diffspeed.models.minisd.lora import mini_sd_lcm_lora_path
from diffspeed.models.minisd.quality import load_pipeline, mini_sd_path
from diffspeed.models.minisd.tokenizer import MAX_LENGTH, save_tokenizer

SCRIPT = Path(__file__).with_name("minisd_train_script.py")


def test_every_caption_word_is_one_token(tmp_path):
    from transformers import CLIPTokenizer

    save_tokenizer(tmp_path, msd.all_captions())
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for text in msd.all_captions():
        ids = tok(text).input_ids
        words = text.replace(",", " ,").split()
        assert len(ids) == len(words) + 2 <= MAX_LENGTH
        assert tok.unk_token_id not in ids[1:-1]
    # other text still tokenises (as characters), and the empty prompt is start + end
    assert len(tok("zebra").input_ids) > 3
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]


def test_styles_order_stroke_mass_and_translation():
    x, y, s = msd.dataset()
    mass = [float(msd.stroke_mass(x[s == k]).mean()) for k in range(len(msd.STYLES))]
    regular, thin, thick = mass
    assert thin < regular < thick
    assert msd.pool_to_8x8(x[:3]).shape == (3, 1, 8, 8)
    moved = msd.translate(x[:2], 2, -1)  # two right, one up; the uncovered border is background
    assert torch.equal(moved[..., :-1, 2:], x[:2, :, 1:, :-2])
    assert (moved[..., :, :2] == -1).all() and (moved[..., -1, :] == -1).all()


@pytest.mark.skipif(not (mini_sd_path() / "model_index.json").is_file(), reason="not shipped")
def test_shipped_folder_loads_offline_and_generates(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline()
    out = pipe(
        ["a handwritten seven", "a thin 3"], num_inference_steps=3, height=32, width=32,
        output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    total = sum(p.stat().st_size for p in mini_sd_path().rglob("*.safetensors"))
    assert total < 12 * 2**20


def test_pickled_pipeline_folder_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match="pickled"):
        load_pipeline(tmp_path)


def _run(out, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _weights(folder):
    return {
        part: load_file(folder / part / "diffusion_pytorch_model.safetensors")
        for part in ("unet", "vae")
    }


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    ref = tmp_path_factory.mktemp("minisd") / "ref"
    done = _run(ref)
    assert done.returncode == 0, done.stderr[-2000:]
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3])  # inside the VAE stage; inside the UNet stage
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference_run, kill_after):
    ref = reference_run
    run = tmp_path / "run"
    killed = _run(run, "--kill-after-checkpoint", str(kill_after))
    assert killed.returncode == -9  # SIGKILL
    assert not (run / "unet").exists()
    done = _run(run)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(ref), _weights(run)
    for part in a:
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


@pytest.mark.skipif(not (mini_sd_path() / "model_index.json").is_file(), reason="not shipped")
def test_latent_denoiser_reads_its_spec_and_caches_prompts():
    import diffspeed
    from diffspeed.models.minisd.quality import mini_sd_denoiser

    den = mini_sd_denoiser()
    assert den.cond_spec.keys == ("encoder_hidden_states",)
    cond = den.cond_spec.example_cond(12)  # 12 samples, 10 distinct prompts
    assert len(den.prompts.table) == 11  # ten digit prompts and the empty one (uncond)
    noise = diffspeed.seeded_noise(range(12), (4, 8, 8))
    x = diffspeed.sample(diffspeed.guidance(den, 3.0), noise, "dpmpp_2m", 6, cond=cond)
    assert x.shape == (12, 4, 8, 8) and torch.isfinite(x).all()
    assert torch.equal(cond["encoder_hidden_states"][0], cond["encoder_hidden_states"][10])


@pytest.mark.skipif(not (mini_sd_path() / "model_index.json").is_file(), reason="not shipped")
def test_a_long_prompt_is_truncated_with_a_warning():
    import logging

    from diffusers.utils import logging as dlog

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = dlog.get_logger("diffusers")
    logger.addHandler(handler)
    try:
        pipe = load_pipeline()
        prompt = "a thin handwritten seven " * 6  # 24 words: longer than the 16 tokens
        out = pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="pt").images
    finally:
        logger.removeHandler(handler)
    assert torch.isfinite(out).all()
    assert any("truncated" in r.getMessage() for r in records)


@pytest.mark.skipif(not (mini_sd_lcm_lora_path()).is_dir(), reason="not shipped")
@pytest.mark.parametrize("steps", [2, 4])
def test_shipped_lcm_lora_in_plain_diffusers_pipelines(steps):
    from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline

    pipe = load_pipeline()
    pipe.load_lora_weights(str(mini_sd_lcm_lora_path()))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(0)
    kw = {"num_inference_steps": steps, "guidance_scale": 1.0, "output_type": "pt"}
    out = pipe(["a handwritten seven", "a thin 3"], height=32, width=32, generator=gen, **kw)
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    again = img2img(["a thick 2", "a handwritten one"], image=out.images, strength=0.6,
                    generator=gen, **kw).images  # fmt: skip
    assert again.shape == (2, 3, 32, 32) and torch.isfinite(again).all()


@pytest.mark.skipif(not (mini_sd_path() / "model_index.json").is_file(), reason="not shipped")
def test_student_pipeline_export_samples_like_its_recipe(tmp_path):
    """A progressive mini-sd student exported as a diffusers folder (v prediction, trailing
    DDIM, guidance 1) reproduces diffspeed's own recipe from the same latents."""
    from diffspeed.distill import Progressive, TrainConfig, distill, sample_student
    from diffspeed.models.minisd.quality import mini_sd_denoiser, prompts_for
    from diffspeed.models.minisd.student import export_pipeline
    from diffspeed.solvers.noise import seeded_noise

    pipe = load_pipeline()
    den = mini_sd_denoiser(pipe)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(8, 4, 8, 8, generator=g), {"encoder_hidden_states": den.prompts(
        prompts_for(list(range(8))))})  # fmt: skip
    cfg = Progressive(teacher_steps=4, final_steps=2, guidance=7.5)
    train = TrainConfig(steps=2, batch_size=4, lr=1e-3, checkpoint_every=0)
    student = distill(den, cfg, train=[train], out=tmp_path / "run", data=data)
    folder = export_pipeline(student, tmp_path / "pipe")
    spipe = load_pipeline(folder)
    assert spipe.scheduler.config.prediction_type == "v_prediction"
    latents = seeded_noise([0, 1], (4, 8, 8))
    prompts = prompts_for([3, 7])
    out = spipe(
        prompts, num_inference_steps=2, guidance_scale=1.0, latents=latents, height=32,
        width=32, output_type="latent",
    ).images  # fmt: skip
    ours = sample_student(student, latents, {"encoder_hidden_states": den.prompts(prompts)})
    assert torch.allclose(out, ours, atol=1e-5)
    assert not (tmp_path / "pipe.tmp").exists()


def test_style_finetune_data_keeps_one_style():
    from diffspeed.models.minisd.finetune import style_reference

    thick, thin = style_reference("thick"), style_reference("thin")
    assert thick.shape == thin.shape and not np.allclose(thick.mean(0), thin.mean(0))
    with pytest.raises(DiffspeedError, match="regular"):
        style_reference("bold")


@pytest.mark.skipif(not (mini_sd_path() / "model_index.json").is_file(), reason="not shipped")
def test_shipped_student_runs_in_a_plain_pipeline(monkeypatch):
    from diffspeed.models import mini_sd_student_path, student_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert mini_sd_student_path().is_file()
    pipe = student_pipeline()
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    out = pipe(
        ["a handwritten seven", "a thin 3"], num_inference_steps=4, guidance_scale=1.0,
        height=32, width=32, output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.skipif(not (mini_sd_path() / "model_index.json").is_file(), reason="not shipped")
def test_reference_samples_with_heun_karras_and_restores_the_scheduler():
    from diffspeed.models.minisd.quality import reference

    pipe = load_pipeline()
    own = pipe.scheduler
    ref = reference(pipe, [3], guidance=7.5)
    assert pipe.scheduler is own
    assert ref.images.shape == (1, 3, 32, 32) and ref.digits.tolist() == [3]
    assert torch.isfinite(ref.images).all()
