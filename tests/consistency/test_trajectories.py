"""Teacher ODE trajectories on the LCM grid and the LCM loss's trajectory (anchor) term."""

from dataclasses import replace

import pytest
import torch

from diffspeed.core.adapters import wrap
from diffspeed.distill.consistency import timestep_grid
from diffspeed.distill.lcm import LCM, LCMLoss
from diffspeed.distill.trainer import LossContext
from diffspeed.distill.trajectories import teacher_trajectories
from diffspeed.errors import ConfigError
from diffspeed.models.teacher import digits_cond_spec
from diffspeed.solvers import seeded_noise
from diffspeed.toy import GaussianToy, ddpm_alphas_cumprod, vp_eps_network

SHAPE = (1, 2, 2)


class ToyNet(torch.nn.Module):
    """The Gaussian toy as a discrete VP eps network that takes (and ignores) class labels."""

    def __init__(self, toy, ac):
        super().__init__()
        self.toy = toy
        self.net = vp_eps_network(toy, ac)

    def forward(self, x, t, class_labels=None):
        return self.net(x, t)


def _toy_teacher():
    ac = ddpm_alphas_cumprod()
    toy = GaussianToy(0.3, 0.7)
    teacher = wrap(ToyNet(toy, ac), "epsilon", ac)
    teacher.cond_spec = replace(digits_cond_spec(10), sample_shape=SHAPE)
    return teacher, toy


def _trajectories(teacher, tmp_path, **kw):
    grid = timestep_grid(teacher, 50, 1.0)
    args = {"num": 12, "w_range": (1.0, 2.0), "substeps": 4, **kw}
    return teacher_trajectories(teacher, grid, cache=tmp_path / "traj.safetensors", **args)


def test_trajectories_follow_the_exact_ode_and_are_cached(tmp_path):
    teacher, toy = _toy_teacher()
    tr = _trajectories(teacher, tmp_path)
    assert tr.states.shape == (12, 21, *SHAPE) and tr.endpoints.shape == (12, *SHAPE)
    top = float(tr.sigmas[-1])
    x_top = tr.states[:, -1]
    # the start is the scaled noise the one-step sampler starts from (seeds 1_000_003 + i)
    noise = seeded_noise([1_000_003 + i for i in range(12)], SHAPE)
    assert torch.equal(x_top, noise * teacher.noise_scale(top))
    for j in (1, 5, 12, 19):
        exact = toy.ode_solution(x_top.double(), top, float(tr.sigmas[j])).float()
        assert torch.allclose(tr.states[:, j], exact, rtol=2e-3, atol=2e-3), j
    # the last interval (sigma 0.17 -> 0.01 on this grid) is the widest in log sigma
    end = toy.ode_solution(x_top.double(), top, 0).float()
    assert torch.allclose(tr.endpoints, end, atol=3e-2)
    assert (tr.endpoints - end).abs().max() < (x_top / teacher.noise_scale(top) - end).abs().max()
    assert tr.guidance.min() >= 1.0 and tr.guidance.max() <= 2.0
    assert tr.guidance.std() > 0.1  # one scale per trajectory
    again = _trajectories(teacher, tmp_path)  # from the cache
    assert torch.equal(again.states, tr.states) and torch.equal(again.guidance, tr.guidance)
    other = _trajectories(teacher, tmp_path, num=5)  # other settings: recomputed
    assert len(other) == 5
    assert torch.allclose(other.states, tr.states[:5])


def _ctx(batch=16, seed=0):
    return LossContext(
        step=0,
        total_steps=1,
        generator=torch.Generator().manual_seed(seed),
        global_batch=batch,
        local=slice(0, batch),
        extras={},
        emas={},
        device=torch.device("cpu"),
    )


class ExactConsistency(torch.nn.Module):
    """The toy's exact consistency function: the PF-ODE map to sigma 0."""

    def __init__(self, toy, sigma_min=0.0):
        super().__init__()
        self.toy = toy
        self.sigma_min = sigma_min

    def forward(self, x, sigma, **cond):
        s = torch.as_tensor(sigma, dtype=torch.float64).view(-1, *[1] * (x.ndim - 1))
        ratio = self.toy.s / torch.sqrt(self.toy.s**2 + s**2)
        return (self.toy.mu + ratio * (x.double() - self.toy.mu)).float()


def test_anchor_term_is_zero_for_the_exact_consistency_function(tmp_path):
    teacher, toy = _toy_teacher()
    tr = _trajectories(teacher, tmp_path, substeps=16)
    cfg = LCM(k=50, strength=1.0, w_range=(1.0, 2.0), metric="l2", anchor=1.0, anchor_top=0.5)
    loss = LCMLoss(cfg, tr)
    grid = timestep_grid(teacher, 50, 1.0)
    exact = loss._anchor(ExactConsistency(toy), grid, _ctx())
    assert exact.shape == (16,) and float(exact.max()) < 1e-5
    # the teacher's denoiser (a posterior mean, not the ODE map) is far from the endpoints
    denoiser = loss._anchor(lambda x, s, **c: teacher(x, s), grid, _ctx())
    assert float(denoiser.mean()) > 100 * float(exact.mean()) + 1e-3


def test_anchor_needs_trajectories_on_the_lcm_grid(tmp_path):
    teacher, _ = _toy_teacher()
    with pytest.raises(ConfigError, match="needs teacher trajectories"):
        LCMLoss(LCM(k=50, anchor=1.0))
    with pytest.raises(ConfigError, match="anchor"):
        LCM(anchor=-1.0)
    tr = _trajectories(teacher, tmp_path)
    loss = LCMLoss(LCM(k=20, metric="l2", anchor=1.0), tr)  # grid of k=20, trajectories k=50
    with pytest.raises(ConfigError, match="another grid"):
        loss._anchor(lambda x, s, **c: x, timestep_grid(teacher, 20, 1.0), _ctx())
    # anchor 0 keeps the plain loss and holds no trajectories
    assert LCMLoss(LCM(k=50), tr).trajectories is None
