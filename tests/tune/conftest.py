"""A tiny model for the tuner's tests: an analytic Gaussian-mixture denoiser seen through a
v-prediction, cosine-schedule discrete VP adapter (what a diffusers model trained that way
looks like), and a small search space, so each search runs in a second or two."""

from __future__ import annotations

import pytest
import torch

from diffspeed.core.contract import CondSpec
from diffspeed.tune.space import SearchSpace


def cosine_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """``alphas_cumprod`` of diffusers' "squaredcos_cap_v2" betas."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2")
    return sched.alphas_cumprod.double()


def make_toy() -> object:
    """Unconditional [1, 4, 4] mixture model, v-prediction, cosine betas."""
    import diffspeed
    from diffspeed.toy import GaussianMixtureToy, vp_eps_network

    gen = torch.Generator().manual_seed(0)
    means = torch.rand(3, 16, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    toy = GaussianMixtureToy(means, 0.3)
    ac = cosine_alphas_cumprod()
    net = vp_eps_network(toy, ac, "v_prediction")
    den = diffspeed.wrap(net, prediction="v_prediction", alphas_cumprod=ac)
    den.cond_spec = CondSpec(keys=(), uncond={}, sample_shape=(1, 4, 4))
    return den


@pytest.fixture
def toy():
    return make_toy()


@pytest.fixture
def small_space() -> SearchSpace:
    return SearchSpace(
        solvers=("ddim", "dpmpp_2m"),
        schedules=("trailing", "karras"),
        tuned_schedules=("dp",),
        max_nfe=10,
        time_shifts=(),
        caches=(),
        students=(),
        top_branches=1,
    )


#: Small calibration rungs, validation set and reference for fast searches.
FAST = {"rungs": (4, 8), "validation": 8, "reference_steps": 60}
