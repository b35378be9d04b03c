"""diffspeed's Scheduler inside Stable Diffusion pipelines against diffusers' own schedulers.

Same tiny random-weight components, same spacing, same generator: the latents must agree to
>= 60 dB PSNR in text-to-image, img2img at several strengths, inpainting and a pipeline whose
``callback_on_step_end`` edits the latents.

The spacing is "trailing", which every diffusers scheduler defines the same way. (Its multistep
schedulers split the range into ``n + 1`` parts for "leading" and "linspace", DDIM into ``n``;
diffspeed's names follow DDIM's, checked in ``test_text_to_image``.)
"""

import pytest
import torch
from tiny_sd import SD_SCHEDULER, make_pipeline

from diffspeed.errors import ConfigError
from diffspeed.integrations.diffusers import Scheduler

diffusers = pytest.importorskip("diffusers")

#: (diffspeed solver, its options, the diffusers scheduler it must match, that one's options)
PAIRS = {
    "ddim": ("ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True}),
    "dpmpp_2m": ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {}),
    "unipc": ("unipc", {"order": 2}, "UniPCMultistepScheduler", {}),
}
STEPS = 10
PROMPT = ["a thin 3", "a thick 7"]


def psnr(a, b):
    rmse = (a.double() - b.double()).pow(2).mean().sqrt()
    return float(20 * torch.log10(b.double().abs().max() / rmse))


def schedulers(name, spacing="trailing"):
    solver, opts, cls, theirs = PAIRS[name]
    config = {**SD_SCHEDULER, "timestep_spacing": spacing}
    ref = getattr(diffusers, cls).from_config(config, **theirs)
    ours = Scheduler.from_config(ref.config, solver=solver, solver_options=opts)
    return ours, ref


def latents(pipe_cls, components, scheduler, **kwargs):
    pipe = make_pipeline(pipe_cls, components, scheduler)
    out = pipe(
        prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=3.0, height=16, width=16,
        generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs,
    )  # fmt: skip
    return out.images


def init_image():
    g = torch.Generator().manual_seed(5)
    return torch.rand(2, 3, 16, 16, generator=g)


@pytest.mark.parametrize(
    ("name", "spacing"), [(n, "trailing") for n in sorted(PAIRS)] + [("ddim", "leading")]
)
def test_text_to_image(sd_components, name, spacing):
    ours, ref = schedulers(name, spacing)
    a = latents(diffusers.StableDiffusionPipeline, sd_components, ours)
    b = latents(diffusers.StableDiffusionPipeline, sd_components, ref)
    assert psnr(a, b) >= 60


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img(sd_components, name, strength):
    ours, ref = schedulers(name)
    kw = {"image": init_image(), "strength": strength}
    a = latents(diffusers.StableDiffusionImg2ImgPipeline, sd_components, ours, **kw)
    b = latents(diffusers.StableDiffusionImg2ImgPipeline, sd_components, ref, **kw)
    assert psnr(a, b) >= 60


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_inpainting(sd_components, name):
    ours, ref = schedulers(name)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:10] = 1
    kw = {"image": init_image(), "mask_image": mask}
    a = latents(diffusers.StableDiffusionInpaintPipeline, sd_components, ours, **kw)
    b = latents(diffusers.StableDiffusionInpaintPipeline, sd_components, ref, **kw)
    assert psnr(a, b) >= 60


def _edit_at_step_3(pipe, i, t, kwargs):
    if i == 3:
        return {"latents": kwargs["latents"] * 0.5 + 0.25}
    return {}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_callback_edits_count(sd_components, name):
    ours, ref = schedulers(name)
    kw = {
        "callback_on_step_end": _edit_at_step_3,
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    a = latents(diffusers.StableDiffusionPipeline, sd_components, ours, **kw)
    b = latents(diffusers.StableDiffusionPipeline, sd_components, ref, **kw)
    plain = latents(diffusers.StableDiffusionPipeline, sd_components, ours)
    assert psnr(a, b) >= 60
    assert psnr(a, plain) < 40  # the edit changed the result: it was not ignored


def test_betas_come_from_the_config():
    ours, ref = schedulers("ddim")
    assert torch.allclose(ours.alphas_cumprod.double(), ref.alphas_cumprod.double())
    with pytest.raises(ConfigError, match="from_config"):
        Scheduler(solver="ddim")


def test_start_at_unknown_timestep_is_refused():
    ours, _ = schedulers("dpmpp_2m")
    ours.set_timesteps(STEPS)
    with pytest.raises(ConfigError, match="not one of"):
        ours.step(torch.zeros(1, 4, 8, 8), 500, torch.zeros(1, 4, 8, 8))


def test_set_begin_index_refuses_mid_step():
    from diffusers import DDPMScheduler

    sched = Scheduler.from_config(DDPMScheduler().config, solver="heun")
    sched.set_timesteps(4)
    assert sched.order == 2 and len(sched.timesteps) == 7
    sched.set_begin_index(2)
    with pytest.raises(ConfigError, match="start of a solver step"):
        sched.set_begin_index(1)


def test_sde_noise_comes_from_the_pipeline_generator(sd_components):
    from diffusers import DDPMScheduler

    def run(seed):
        sched = Scheduler.from_config(DDPMScheduler().config, solver="euler_ancestral")
        pipe = make_pipeline(diffusers.StableDiffusionPipeline, sd_components, sched)
        return pipe(
            prompt=PROMPT, num_inference_steps=4, height=16, width=16, output_type="latent",
            generator=torch.Generator().manual_seed(seed),
        ).images  # fmt: skip

    a, b = run(0), run(0)
    assert torch.equal(a, b)
    # same start noise, different SDE noise: the second generator differs only after its
    # first draws, so the results differ
    assert not torch.equal(a, run(1))
