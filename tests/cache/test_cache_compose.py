"""Caches compose with every solver, guidance, diffusers pipelines and torch.compile."""

import pytest
import torch

import diffspeed
from diffspeed.cache import FORA, ConditionCache, DeepCache, FirstBlockCache, TaylorSeer
from diffspeed.models.teacher import guided_teacher, load_teacher
from diffspeed.solvers import SOLVERS, available


@pytest.fixture(scope="module")
def guided():
    return guided_teacher(2.0, load_teacher())


@pytest.mark.parametrize("solver", available())
def test_every_solver_with_guidance(guided, solver):
    noise = diffspeed.seeded_noise([900_001, 900_002], (1, 8, 8))
    cond = {"class_labels": torch.tensor([4, 9])}
    gen = [11, 12] if SOLVERS[solver].stochastic else None

    def run():
        return diffspeed.sample(guided, noise, solver, 4, cond=cond, generator=gen)

    ref = run()
    with diffspeed.apply_cache(guided, DeepCache(interval=1)):
        assert torch.equal(run(), ref)
    with diffspeed.apply_cache(guided, DeepCache(interval=2)) as h:
        a, b = run(), run()
        if SOLVERS[solver].fn.__name__ == "paradigms":
            # the Picard window changes the batch layout at every call: cached deep features
            # never fit, so every evaluation falls back to a full (exact) one
            assert h.stats["full"] == h.stats["evals"] > 0
            torch.testing.assert_close(a, ref)
        else:
            assert 0 < h.stats["full"] < h.stats["evals"]
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_condition_cache_embeds_once_per_run(guided, monkeypatch):
    calls = []
    embed = torch.nn.Embedding.forward

    def counting(self, x):
        calls.append(1)
        return embed(self, x)

    monkeypatch.setattr(torch.nn.Embedding, "forward", counting)
    noise = diffspeed.seeded_noise([900_003, 900_004], (1, 8, 8))
    cond = {"class_labels": torch.tensor([1, 2])}
    ref = diffspeed.sample(guided, noise, "heun", 3, cond=cond)
    assert len(calls) == 5  # once per evaluation without the cache
    calls.clear()
    with diffspeed.apply_cache(guided, ConditionCache()):
        out = diffspeed.sample(guided, noise, "heun", 3, cond=cond)
        assert len(calls) == 1
        diffspeed.sample(guided, noise, "heun", 3, cond={"class_labels": torch.tensor([5, 6])})
        assert len(calls) == 2  # new labels, new run: embedded again
    assert torch.equal(out, ref)


def _tiny_uncond_unet():
    from diffusers import UNet2DModel

    from diffspeed.models.teacher import UNET_CONFIG

    torch.manual_seed(0)
    cfg = {k: v for k, v in UNET_CONFIG.items() if k != "num_class_embeds"}
    return UNet2DModel(**cfg).eval()


def test_inside_a_diffusers_pipeline():
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(unet=_tiny_uncond_unet(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(batch_size=2, generator=g, num_inference_steps=6, output_type="np").images

    ref = run()
    with diffspeed.apply_cache(pipe.unet, DeepCache(interval=1)):
        assert (run() == ref).all()
    with diffspeed.apply_cache(pipe.unet, DeepCache(interval=2, branch=1)) as h:
        a, b = run(), run()
        assert h.stats == {"evals": 12, "full": 6}
    assert (a == b).all() and not (a == ref).all()
    assert abs(a - ref).max() < 0.5


def test_inside_a_dit_pipeline():
    from cache_models import tiny_dit
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
    ).eval()
    pipe = DiTPipeline(transformer=tiny_dit(), vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(
            [1, 2], guidance_scale=3.0, generator=g, num_inference_steps=5, output_type="np"
        ).images

    ref = run()
    with diffspeed.apply_cache(pipe.transformer, FORA(interval=1)):
        assert (run() == ref).all()
    with diffspeed.apply_cache(pipe.transformer, TaylorSeer(interval=2)) as h:
        a, b = run(), run()
        assert h.stats == {"evals": 10, "full": 6}
    assert (a == b).all() and not (a == ref).all()


@pytest.mark.parametrize("config", [FORA(interval=3), TaylorSeer(interval=2), FirstBlockCache(0.5)])
def test_torch_compile_does_not_recompile_per_step(config):
    """The step index and skip decisions stay out of the graphs: a longer run compiles nothing
    new (guards on the step index recompiled at every step and hit dynamo's limit on GPU)."""
    from cache_models import CASES
    from torch._dynamo.utils import counters

    case = CASES["dit"]()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(case.model, backend="eager")
    den = diffspeed.wrap(lambda x, t, **c: compiled(x, t, **c), "epsilon", case.den.alphas_cumprod)
    try:
        with diffspeed.apply_cache(case.model, config):
            diffspeed.sample(den, case.noise, "ddim", 6, cond=case.cond)
            graphs = counters["stats"]["unique_graphs"]
            diffspeed.sample(den, case.noise, "ddim", 12, cond=case.cond)
        assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()


def test_torch_compile_matches_eager():
    """Compile after installing: decisions run eagerly (graph breaks), blocks compile."""
    from cache_models import CASES

    case = CASES["dit"]()
    with diffspeed.apply_cache(case.model, TaylorSeer(interval=2)):
        eager = case.run(steps=4)
        torch._dynamo.reset()
        compiled = torch.compile(case.model, backend="aot_eager")
        den = diffspeed.wrap(
            lambda x, t, **c: compiled(x, t, **c), "epsilon", case.den.alphas_cumprod
        )
        out = diffspeed.sample(den, case.noise, "ddim", 4, cond=case.cond)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
