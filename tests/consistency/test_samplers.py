"""Multistep consistency sampling and LCM sampling as diffspeed solvers."""

import numpy as np
import pytest
import torch

import diffspeed
from diffspeed.distill.consistency import ConsistencyDenoiser
from diffspeed.solvers import SOLVERS, NoiseSampler, seeded_noise
from diffspeed.solvers.schedules import get_sigmas

SOLVER_NAMES = ["consistency", "lcm"]


@pytest.fixture
def student(tiny_teacher):
    return ConsistencyDenoiser(tiny_teacher)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_registered_as_one_eval_per_step_stochastic(solver):
    spec = SOLVERS[solver]
    assert spec.stochastic and spec.evals_per_step == 1 and spec.nfe(4) == 4


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_deterministic_given_a_generator(student, solver):
    noise = seeded_noise(range(6), (1, 8, 8))
    y = torch.arange(6) % 10

    def run(gen):
        return diffspeed.sample(
            student, noise, solver, 4, "lcm", cond={"class_labels": y}, generator=gen
        )

    a = run(torch.Generator().manual_seed(3))
    b = run(torch.Generator().manual_seed(3))
    c = run(torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the re-noising really uses the generator


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_independent_of_batch_size_with_per_sample_seeds(student, solver):
    seeds = [11, 12, 13, 14, 15]
    noise = seeded_noise(seeds, (1, 8, 8))
    y = torch.tensor([0, 1, 2, 3, 4])
    full = diffspeed.sample(
        student, noise, solver, 3, "lcm", cond={"class_labels": y}, generator=NoiseSampler(seeds)
    )
    part = diffspeed.sample(
        student, noise[2:4], solver, 3, "lcm", cond={"class_labels": y[2:4]}, generator=seeds[2:4]
    )
    torch.testing.assert_close(part, full[2:4], rtol=1e-4, atol=1e-4)  # batched-conv rounding


def test_one_step_is_one_consistency_evaluation(student):
    noise = seeded_noise(range(3), (1, 8, 8))
    y = torch.tensor([1, 2, 3])
    x, info = diffspeed.sample(
        student, noise, "consistency", 1, "lcm", cond={"class_labels": y}, return_info=True
    )
    smax = get_sigmas(student, "lcm", 1)[0]
    with torch.no_grad():
        ref = student(noise * student.noise_scale(float(smax)), smax.expand(3), class_labels=y)
    assert info["nfe"] == 1
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_schedule_matches_diffusers(tiny_teacher, steps):
    from diffusers import LCMScheduler

    sched = LCMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sched.set_timesteps(steps)
    sigmas = get_sigmas(tiny_teacher, "lcm", steps)
    assert float(sigmas[-1]) == 0
    ts = tiny_teacher.sigma_to_t(sigmas[:-1])
    np.testing.assert_allclose(ts.numpy(), sched.timesteps.numpy(), atol=1e-6)


def test_lcm_sampling_matches_diffusers_lcm_scheduler(tiny_teacher):
    """With the boundary scalings switched off on both sides, diffspeed's ``lcm`` solver and
    diffusers' ``LCMScheduler`` loop compute the same thing from the same noise."""
    from diffusers import LCMScheduler

    sched = LCMScheduler(
        beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_scaling=1e12
    )
    unet, steps, b = tiny_teacher.model, 4, 3
    y = torch.tensor([3, 5, 7])
    x_t = torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    draws = [
        torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(i + 1))
        for i in range(steps)
    ]

    class Replay(NoiseSampler):
        def __init__(self):
            self.i = 0

        def __call__(self, like):
            self.i += 1
            return draws[self.i - 1].to(like.dtype)

    sched.set_timesteps(steps)
    x, k = x_t.clone(), iter(draws)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t, class_labels=y).sample
            out = sched.step(eps, t, x)
            # replace diffusers' own draw by ours: prev = sqrt(a) x0 + sqrt(1 - a) z
            if t != sched.timesteps[-1]:
                a = sched.alphas_cumprod[sched.timesteps[list(sched.timesteps).index(t) + 1]]
                x = a.sqrt() * out.denoised + (1 - a).sqrt() * next(k)
            else:
                x = out.denoised
    ours = diffspeed.sample(
        tiny_teacher, x_t, "lcm", steps, "lcm", cond={"class_labels": y}, generator=Replay()
    )
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
