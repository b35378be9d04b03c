"""The consistency losses train: CD, CT and LCM decrease on a Gaussian toy / a tiny UNet."""

import csv

import pytest
import torch
from torch import nn

from diffspeed.core.adapters import DiscreteVPDenoiser, wrap
from diffspeed.distill import TrainConfig, TrainData, train
from diffspeed.distill.cd import CD, CDLoss
from diffspeed.distill.consistency import (
    ConsistencyDenoiser,
    distance,
    teacher_step,
)
from diffspeed.distill.ct import CT, CTLoss
from diffspeed.distill.lcm import LCM, LCMLoss
from diffspeed.errors import ConfigError
from diffspeed.toy import GaussianToy, ddpm_alphas_cumprod, vp_eps_network


class TinyEps(nn.Module):
    """eps(x_t, t) = a(t) x_t + b(t): the family holding the toy's exact eps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(1, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, t):
        h = self.mlp((torch.as_tensor(t).float() / 1000).view(-1, 1))
        return h[:, :1, None, None] * x + h[:, 1:, None, None]


def _losses(out_dir):
    with open(out_dir / "train_log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _exact_error(student, toy, n=256):
    """RMS distance of the student to the exact consistency function of the toy."""
    g = torch.Generator().manual_seed(1)
    errs = []
    for sigma in (0.5, 2.0, 10.0):
        x = toy.mu + torch.sqrt(toy.s**2 + sigma**2) * torch.randn(n, 1, 2, 2, generator=g).double()
        x = x.float()
        exact = toy.ode_solution(x, sigma, student.sigma_min)
        with torch.no_grad():
            errs.append((student(x, sigma) - exact).pow(2).mean())
    return float(torch.stack(errs).mean().sqrt())


def test_cd_loss_decreases_on_gaussian_toy(tmp_path):
    ac = ddpm_alphas_cumprod()
    toy = GaussianToy(0.3, 0.7)
    teacher = wrap(vp_eps_network(toy, ac), "epsilon", ac)
    student = ConsistencyDenoiser(DiscreteVPDenoiser(TinyEps(), ac))
    before = _exact_error(student, toy)
    x0 = 0.3 + 0.7 * torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    cfg = CD(solver="heun", guidance=1.0, n_start=10, n_end=10, strength=1.0, groups=8, metric="l2")
    train(
        student,
        CDLoss(cfg),
        TrainConfig(steps=60, batch_size=64, lr=2e-2, log_every=1, checkpoint_every=0),
        tmp_path,
        data=TrainData(x0),
        teacher=teacher,
    )
    losses = _losses(tmp_path)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert _exact_error(student, toy) < 0.5 * before


@pytest.mark.parametrize("method", ["ct", "lcm"])
def test_ct_and_lcm_losses_decrease_on_gaussian_toy(tmp_path, method):
    ac = ddpm_alphas_cumprod()
    toy = GaussianToy(0.3, 0.7)
    teacher = wrap(vp_eps_network(toy, ac), "epsilon", ac)
    student = ConsistencyDenoiser(DiscreteVPDenoiser(TinyEps(), ac))
    x0 = 0.3 + 0.7 * torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    if method == "ct":
        loss = CTLoss(CT(n_start=10, n_end=10, strength=1.0, weighting="uniform", metric="l2"))
    else:
        loss = LCMLoss(LCM(k=50, strength=1.0, w_range=(1.0, 1.0), groups=8, metric="l2"))
    train(
        student,
        loss,
        TrainConfig(steps=60, batch_size=64, lr=2e-2, log_every=1, checkpoint_every=0),
        tmp_path,
        data=TrainData(x0),
        teacher=teacher if method == "lcm" else None,
    )
    losses = _losses(tmp_path)
    assert sum(losses[-10:]) < sum(losses[:10]), method


def test_teacher_step_runs_one_solver_step_per_group(tiny_teacher):
    import diffspeed

    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([1, 2, 3, 4])
    s_hi = torch.tensor([5.0, 5.0, 1.0, 1.0], dtype=torch.float64)
    s_lo = torch.tensor([2.0, 2.0, 0.5, 0.5], dtype=torch.float64)
    tiny_teacher.reset_nfe()
    with torch.no_grad():
        out = teacher_step(tiny_teacher, x, s_hi, s_lo, solver="heun", cond={"class_labels": y})
    assert tiny_teacher.nfe == 4  # two groups x two Heun evaluations
    for rows, a, b in (([0, 1], 5.0, 2.0), ([2, 3], 1.0, 0.5)):
        sig = torch.tensor([a, b], dtype=torch.float64)
        ref = diffspeed.sample(
            tiny_teacher,
            x[rows] / tiny_teacher.noise_scale(a),
            "heun",
            schedule=sig,
            cond={"class_labels": y[rows]},
        )
        torch.testing.assert_close(out[rows], ref, rtol=1e-5, atol=1e-5)


def test_distance_and_config_errors():
    a, b = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    assert torch.allclose(distance(a, b, "l2"), torch.ones(2))
    c = 0.00054 * 8
    assert torch.allclose(distance(a, b, "pseudo_huber"), torch.full((2,), (64 + c**2) ** 0.5 - c))
    with pytest.raises(ConfigError):
        CD(metric="l1")
    with pytest.raises(ConfigError):
        CD(solver="no-such-solver")
    with pytest.raises(ConfigError, match="w_range"):
        LCM(w_range=(3.0, 1.0))
    with pytest.raises(ConfigError):
        CT(n_start=5, n_end=3)
