"""Install / remove / reset contract of every cache on every supported model family."""

import numpy as np
import pytest
import torch

import diffspeed
from diffspeed.cache import (
    FORA,
    ConditionCache,
    DeepCache,
    FirstBlockCache,
    TaylorSeer,
    TeaCache,
)
from diffspeed.core.steps import listeners_of

OFF = {
    "unet": [
        DeepCache(interval=1),
        DeepCache(interval=1, branch=1, schedule="nonuniform"),
        DeepCache(interval=1, input_branch=True),
    ],
    "transformer": [
        FORA(interval=1),
        FirstBlockCache(threshold=0.0),
        TeaCache(threshold=0.0),
        TeaCache(threshold=0.0, coefficients=(2.0, -1.0, 0.0)),
        TaylorSeer(interval=1, order=2),
    ],
}
LOSSY = {
    "unet": [
        DeepCache(interval=2),
        DeepCache(interval=3, branch=1, schedule="nonuniform"),
        DeepCache(interval=2, input_branch=True),
    ],
    "transformer": [
        FORA(interval=2),
        FirstBlockCache(threshold=0.5),
        TeaCache(threshold=0.5),
        TaylorSeer(interval=2, order=1),
    ],
}


def family(case):
    return "unet" if "UNet" in type(case.model).__name__ else "transformer"


def snapshot(model):
    """Everything a cache could leave behind: weights, attributes, forwards, hooks."""
    mods = {}
    for name, m in model.named_modules():
        mods[name] = (
            sorted(vars(m)),
            m.__dict__.get("forward"),
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return mods, state


def assert_restored(model, snap):
    mods, state = snapshot(model)
    assert mods == snap[0]
    assert state.keys() == snap[1].keys()
    assert all(torch.equal(state[k], snap[1][k]) for k in state)
    assert listeners_of(model) == []


def test_off_setting_is_bit_identical(case):
    ref = case.run()
    for cfg in OFF[family(case)] + [ConditionCache()]:
        with diffspeed.apply_cache(case.den, cfg) as handle:
            assert torch.equal(case.run(), ref), cfg
            assert handle.stats["full"] == handle.stats["evals"]


def test_lossy_cache_skips_resets_and_removes(case):
    ref = case.run()
    snap = snapshot(case.model)
    for cfg in LOSSY[family(case)]:
        handle = diffspeed.apply_cache(case.model, cfg)
        first = case.run()
        second = case.run()
        assert torch.equal(first, second), f"{cfg}: state leaked between runs"
        assert torch.isfinite(first).all()
        assert 0 < handle.stats["full"] < handle.stats["evals"], f"{cfg} never skipped"
        assert not torch.equal(first, ref)
        handle.remove()
        handle.remove()  # idempotent
        assert_restored(case.model, snap)
        assert torch.equal(case.run(), ref)


def test_partial_evaluation_reuses_exact_features(case):
    """Same input twice: the second (cached) evaluation reproduces the full one."""
    x = case.noise * 3.0
    sigma = torch.full((2,), 2.0)
    full = case.den(x, sigma, **case.cond)
    for cfg in LOSSY[family(case)]:
        with diffspeed.apply_cache(case.model, cfg) as handle:
            handle.start_run(10)
            for index in range(2):
                handle.set_step(diffspeed.core.steps.StepContext(index, 2.0, 10, 10))
                out = case.den(x, sigma, **case.cond)
                torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-4)
            assert handle.stats == {"evals": 2, "full": 1}, cfg
            handle.end_run()


def test_steps_inferred_without_sampler():
    """A loop that calls the model itself: each call is a step; a larger timestep restarts."""
    from cache_models import CASES

    case = CASES["unet_cond"]()
    sigmas = [8.0, 4.0, 2.0, 1.0, 0.5]

    def loop():
        x, outs = case.noise * 9.0, []
        for s in sigmas:
            outs.append(case.den(x, torch.full((2,), s), **case.cond))
        return torch.stack(outs)

    ref = loop()
    with diffspeed.apply_cache(case.model, DeepCache(interval=2)) as h:
        a, b = loop(), loop()
        assert h.stats == {"evals": 10, "full": 6}
    assert torch.equal(a, b)
    assert torch.equal(a[0], ref[0]) and torch.equal(a[2], ref[2]) and not torch.equal(a[1], ref[1])


def test_stacked_caches_remove_in_any_supported_order():
    from cache_models import CASES

    case = CASES["dit"]()
    ref, snap = case.run(), snapshot(case.model)
    h1 = diffspeed.apply_cache(case.model, ConditionCache())
    h2 = diffspeed.apply_cache(case.model, FORA(interval=2))
    both = case.run()
    h2.remove()
    h1.remove()
    assert_restored(case.model, snap)
    with diffspeed.apply_cache(case.model, FORA(interval=2)):
        assert torch.equal(case.run(), both)
    assert torch.equal(case.run(), ref)


def test_nonuniform_schedule_spends_same_budget():
    from diffspeed.cache.deepcache import nonuniform_full_steps

    for total, interval in [(50, 3), (20, 5), (7, 2), (4, 8)]:
        steps = nonuniform_full_steps(total, -(-total // interval), 0.5, 1.4)
        assert 0 in steps and len(steps) == min(total, -(-total // interval))
        assert all(0 <= s < total for s in steps)
    mid = sorted(nonuniform_full_steps(50, 10, 0.5, 2.0))
    gaps = [b - a for a, b in zip(mid, mid[1:], strict=False)]
    assert min(gaps) < max(gaps)  # denser in the middle than at the ends


def test_taylor_forecast_is_exact_for_polynomials():
    from diffspeed.cache.taylorseer import newton_forecast

    xs = [0.0, 3.0, 5.0]
    ys = [(torch.tensor([2 * x * x - x + 1.0]), None) for x in xs]
    out = newton_forecast(xs, ys, 7.0)
    assert out[1] is None
    torch.testing.assert_close(out[0], torch.tensor([2 * 49 - 7 + 1.0]))


def test_input_branch_runs_only_conv_in_the_last_up_layer_and_the_head():
    """On a partial evaluation the input branch skips the first down block and every layer
    of the last up block but the final one; branch 0 still runs them."""
    from cache_models import CASES

    for name in ("teacher", "unet_cond"):
        case = CASES[name]()
        up = case.model.up_blocks[-1]
        watched = {
            # children of the wrapped modules: they run only when the layer is computed
            "down0": case.model.down_blocks[0].resnets[0].conv1,
            "up_first": up.resnets[0].conv1,
            "up_last": up.resnets[-1].conv1,
            "conv_in": case.model.conv_in,
        }
        calls = dict.fromkeys(watched, 0)
        hooks = [
            m.register_forward_hook(lambda *_, k=k, c=calls: c.__setitem__(k, c[k] + 1))
            for k, m in watched.items()
        ]
        for cfg, runs_down0 in [
            (DeepCache(interval=4), 4),
            (DeepCache(interval=4, input_branch=True), 1),
        ]:
            calls.update(dict.fromkeys(calls, 0))
            with diffspeed.apply_cache(case.den, cfg):
                case.run(steps=4)
            assert calls["conv_in"] == calls["up_last"] == 4, (name, cfg, calls)
            assert calls["down0"] == calls["up_first"] == runs_down0, (name, cfg, calls)
        for h in hooks:
            h.remove()


def _tiny_ddpm_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler
    from tiny_sd import tiny_unet

    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _calls(pipe, steps, seeds):
    return [
        pipe(
            generator=torch.Generator().manual_seed(s),
            num_inference_steps=steps,
            output_type="np",
        ).images
        for s in seeds
    ]


@pytest.mark.parametrize("on_pipeline", [False, True])
def test_separate_pipeline_calls_never_share_features(on_pipeline):
    """Three separate one-step pipeline calls: each computes its own deep features (a cache
    that kept call 1's features would hand them to calls 2 and 3)."""
    pipe = _tiny_ddpm_pipeline()
    exact = _calls(pipe, 1, [1, 2, 3])
    with diffspeed.apply_cache(pipe if on_pipeline else pipe.unet, DeepCache(interval=3)) as h:
        cached = _calls(pipe, 1, [1, 2, 3])
        assert h.stats == {"evals": 3, "full": 3}
    for a, b in zip(cached, exact, strict=True):
        assert np.array_equal(a, b)


def test_cache_on_a_pipeline_follows_its_scheduler():
    """On a pipeline, every call is one run of its scheduler's length; removal restores it."""
    pipe = _tiny_ddpm_pipeline()
    with diffspeed.apply_cache(pipe, DeepCache(interval=2)) as h:
        a, b = _calls(pipe, 4, [5, 5])
        assert "set_timesteps" in vars(pipe.scheduler)
        assert h.stats == {"evals": 8, "full": 4}
    assert np.array_equal(a, b)
    assert "set_timesteps" not in vars(pipe.scheduler)
