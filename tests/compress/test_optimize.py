"""optimize: off is exact, dtype / layout / attention applied, compile + cache compiles once."""

import copy

import pytest
import torch

import diffspeed
from diffspeed.cache import DeepCache, apply_cache
from diffspeed.compress import Optimize, optimize
from diffspeed.errors import ConfigError
from diffspeed.models.teacher import load_teacher
from diffspeed.solvers import seeded_noise


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


def _run(den, steps=4, n=2):
    noise = seeded_noise(list(range(n)), (1, 8, 8))
    return diffspeed.sample(den, noise, "ddim", steps, cond=den.cond_spec.example_cond(n))


def test_off_is_bit_identical(teacher):
    den = copy.deepcopy(teacher)
    assert optimize(den, Optimize()) is den
    assert Optimize().is_off
    assert torch.equal(_run(den), _run(teacher))


def test_dtype_layout_attention(teacher):
    den = optimize(
        copy.deepcopy(teacher),
        Optimize(dtype="bfloat16", memory_format="channels_last", attention="classic"),
    )
    assert den.model.conv_in.weight.dtype == torch.bfloat16
    assert den.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    procs = {type(m.processor).__name__ for m in den.model.modules() if hasattr(m, "processor")}
    assert procs == {"AttnProcessor"}
    x = _run(den)
    assert x.dtype == torch.float32  # the solver state stays float32
    assert (x - _run(teacher)).abs().max() < 0.1


def test_round_trip_and_bad_values():
    cfg = Optimize(compile="max-autotune", dtype="float16", attention="sdpa")
    assert Optimize.from_dict(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="reduce-overhead"):
        Optimize(compile="fast")
    with pytest.raises(ConfigError, match="float16, bfloat16"):
        Optimize(dtype="int8")


def test_sdpa_kernel_unsupported_on_cpu_names_supported(teacher):
    with pytest.raises(ConfigError, match="supported there: math"):
        optimize(copy.deepcopy(teacher), Optimize(attention="flash"))


def test_compile_with_cache_does_not_recompile_per_step(teacher):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    den = copy.deepcopy(teacher)
    handle = apply_cache(den, DeepCache(interval=2))
    optimize(den, Optimize(compile="default", backend="eager"))
    eager = copy.deepcopy(teacher)
    with apply_cache(eager, DeepCache(interval=2)):
        expected = _run(eager, steps=6)
    counters.clear()
    out = _run(den, steps=4)
    after_short = dict(counters["stats"])
    out = _run(den, steps=6)
    assert dict(counters["stats"]).get("unique_graphs") == after_short.get("unique_graphs")
    assert counters["stats"]["unique_graphs"] <= 6  # a few graphs per cache branch, not per step
    assert handle.stats["evals"] == 10 and handle.stats["full"] < 10
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
