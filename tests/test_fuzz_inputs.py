"""Property test: generated malformed inputs get a DiffspeedError, never a raw exception.

Throws hypothesis-generated values (wrong types, shapes, ranges, NaN/Inf, unknown names) at
``sample``, ``wrap`` / ``from_diffusers``, the cache configs, the bench row parser and
``TrainConfig``. A call may succeed (some generated inputs are valid) or raise a
``DiffspeedError``; anything else fails. Example counts are bounded to keep CI fast.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffspeed
from diffspeed.errors import DiffspeedError

FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Scalars of every kind a user might pass where a number or a name is expected.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 12), max_size=4),
    st.just(math.nan),
    st.just(-1),
    st.just(0),
)

_TEACHER = {}


def teacher():
    if not _TEACHER:
        from diffspeed.models.teacher import load_teacher

        _TEACHER["t"] = load_teacher()
    return _TEACHER["t"]


def only_diffspeed_errors(fn, *args, **kwargs):
    """Call ``fn``; pass on success or a DiffspeedError, fail on anything else."""
    try:
        fn(*args, **kwargs)
    except DiffspeedError:
        pass
    except Exception as e:  # noqa: BLE001 - the property under test
        pytest.fail(f"raw {type(e).__name__}: {e}")


@st.composite
def noise_tensors(draw):
    rank = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
    fill = draw(st.sampled_from([0.0, 1.0, math.nan, math.inf]))
    t = torch.randn(shape) if fill == 0.0 else torch.full(shape, fill)
    return t.to(dtype) if dtype in (torch.float32, torch.float64) else t.to(dtype)


@st.composite
def conds(draw):
    key = draw(st.sampled_from(["class_labels", "class_label", "labels", "y"]))
    kind = draw(st.sampled_from(["ints", "floats", "junk", "2d", "none"]))
    n = draw(st.integers(0, 6))
    if kind == "ints":
        value = torch.tensor(draw(st.lists(st.integers(-5, 15), min_size=n, max_size=n)))
    elif kind == "floats":
        value = torch.rand(n) * 10
    elif kind == "2d":
        value = torch.zeros(n, 2, dtype=torch.long)
    elif kind == "none":
        return None
    else:
        value = draw(junk)
    return {key: value}


@FAST
@given(noise=noise_tensors(), cond=conds(), steps=junk, solver=st.sampled_from(
    ["ddim", "euler", "dpmpp2m", "heun", "", "unipc", "EULER"]))  # fmt: skip
def test_sample_refuses_with_diffspeed_errors(noise, cond, steps, solver):
    steps = steps if not isinstance(steps, int) or isinstance(steps, bool) else steps % 5
    only_diffspeed_errors(diffspeed.sample, teacher(), noise, solver, steps, cond=cond)


@FAST
@given(
    schedule=st.sampled_from(["karras", "exponential", "polyexponential", "trailing", "x"]),
    key=st.sampled_from(["rho", "sigma_min", "sigma_max", "final", "rh0"]),
    value=junk,
    steps=st.integers(-2, 3),
)
def test_schedule_options_refuse_with_diffspeed_errors(schedule, key, value, steps):
    noise = torch.randn(2, 1, 8, 8)
    only_diffspeed_errors(
        diffspeed.sample,
        teacher(),
        noise,
        "ddim",
        steps,
        schedule,
        cond={"class_labels": torch.tensor([1, 2])},
        schedule_options={key: value},
    )


@FAST
@given(scale=junk)
def test_guidance_scale_refuses_with_diffspeed_errors(scale):
    only_diffspeed_errors(diffspeed.guidance, teacher(), scale)


@FAST
@given(model=junk, prediction=junk, alphas=st.one_of(junk, st.just([0.9, 0.5])))
def test_wrap_refuses_with_diffspeed_errors(model, prediction, alphas):
    only_diffspeed_errors(diffspeed.wrap, model, prediction, alphas)


@FAST
@given(scheduler=junk, prediction=st.one_of(st.none(), junk), learned=st.one_of(st.none(), junk))
def test_from_diffusers_refuses_with_diffspeed_errors(scheduler, prediction, learned):
    net = torch.nn.Linear(2, 2)
    only_diffspeed_errors(
        diffspeed.from_diffusers, net, scheduler, prediction=prediction, learned_sigma=learned
    )


@FAST
@given(
    method=st.sampled_from(["deepcache", "teacache", "fora", "taylorseer", "fbcache", "deepcach"]),
    field=st.sampled_from(["interval", "threshold", "branch", "order", "schedule", "bogus"]),
    value=junk,
)
def test_cache_configs_refuse_with_diffspeed_errors(method, field, value):
    from diffspeed.cache import config_from_dict

    only_diffspeed_errors(config_from_dict, {"method": method, field: value})


@FAST
@given(text=st.text(alphabet="abcdefgst=.,0123456789-_ ", max_size=40))
def test_bench_row_parser_refuses_with_diffspeed_errors(text):
    from diffspeed.bench.config import parse_row_arg

    only_diffspeed_errors(parse_row_arg, text)


@FAST
@given(data=st.dictionaries(st.sampled_from(["steps", "guidance", "solver", "cache", "x"]), junk))
def test_bench_row_dict_refuses_with_diffspeed_errors(data):
    from diffspeed.bench.config import Row

    only_diffspeed_errors(Row.from_dict, data)


@FAST
@given(
    field=st.sampled_from(
        ["steps", "batch_size", "lr", "warmup", "lr_schedule", "grad_accum", "ema_decay",
         "mixed_precision", "max_grad_norm", "weight_decay", "seed", "max_bad_steps",
         "checkpoint_every", "eval_every", "log_every"]
    ),
    value=junk,
)  # fmt: skip
def test_train_config_refuses_with_diffspeed_errors(field, value):
    from diffspeed.distill.trainer import TrainConfig

    only_diffspeed_errors(TrainConfig, **{field: value})
