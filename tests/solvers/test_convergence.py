"""Order of convergence on analytic toys (float64): log-log slope of error vs steps.

The Gaussian toy has an exact ODE solution; the Gaussian mixture is compared with a dense
high-order reference. Runs integrate from sigma 20 to 0.05 (no final denoising step), where
the asymptotic regime holds for the step counts used.
"""

import math

import pytest
import torch

import diffspeed
from diffspeed.core.adapters import VEDenoiser
from diffspeed.solvers.registry import SOLVERS
from diffspeed.toy import GaussianMixtureToy, GaussianToy

S0, S1 = 20.0, 0.05
GAUSS = GaussianToy(torch.tensor([0.3, -0.5, 1.0]), torch.tensor([0.7, 0.2, 1.3]))
X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * S0


def denoiser(toy):
    return VEDenoiser(lambda x, c: toy(x, c), 0.01, 100.0, prediction="sample")


def grid(n: int, warm: int = 0) -> torch.Tensor:
    """Log-SNR-uniform steps; ``warm`` extra warm-up steps of size h^2 first (so a multistep
    method's lower-order start does not cap its global order)."""
    l0, l1 = -math.log(S0), -math.log(S1)
    d = ((l1 - l0) / n) ** 2
    body = torch.linspace(l0 + warm * d, l1, n + 1, dtype=torch.float64)
    lams = torch.cat([l0 + d * torch.arange(warm, dtype=torch.float64), body])
    return torch.exp(-lams)


def slope(toy, exact, solver, ns, warm=0, **opts):
    den = denoiser(toy)
    runs = [diffspeed.sample(den, X / S0, solver, schedule=grid(n, warm), **opts) for n in ns]
    errs = [float((x - exact).abs().max()) for x in runs]
    return math.log(errs[-2] / errs[-1]) / math.log(ns[-1] / ns[-2])


NO_LOF = {"lower_order_final": False}
CASES = [  # (solver, options, warm-up steps, expected order)
    ("euler", {}, 0, 1),
    ("heun", {}, 0, 2),
    ("dpm_solver_1", {}, 0, 1),
    ("dpm_solver_2", NO_LOF, 0, 2),
    ("dpm_solver_3", NO_LOF, 0, 3),
    ("dpmpp_2s", NO_LOF, 0, 2),
    ("dpmpp_3s", NO_LOF, 0, 3),
    ("dpmpp_2m", NO_LOF, 0, 2),
    ("dpmpp_3m", NO_LOF, 0, 2),  # diffusers' 3M weights: 2nd order (see its docstring)
    ("dpmpp_3m", {**NO_LOF, "strict_order": True}, 2, 3),
    ("unipc", {**NO_LOF, "order": 1}, 0, 2),  # UniPC-p has order p + 1
    ("unipc", {**NO_LOF, "order": 2}, 0, 3),
    ("unipc_bh1", {**NO_LOF, "order": 2}, 0, 3),
    ("deis", {**NO_LOF, "order": 2}, 0, 2),
    ("ipndm", {}, 0, 2),
    ("plms", {}, 0, 2),
]


@pytest.mark.parametrize(("solver", "opts", "warm", "order"), CASES)
def test_order_gaussian(solver, opts, warm, order):
    exact = GAUSS.ode_solution(X, S0, S1)
    ns = [48, 96] if warm else [24, 48]  # the warm-up-refined run needs finer steps
    assert abs(slope(GAUSS, exact, solver, ns, warm, **opts) - order) <= 0.3


def test_registered_orders_match_defaults():
    for name in ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpm_solver_3", "dpmpp_2s", "ipndm"):
        expected = next(o for s, opts, _, o in CASES if s == name and len(opts) <= 1)
        assert SOLVERS[name].order == expected


MIX = GaussianMixtureToy([[1.0, -0.5, 0.2], [-0.8, 0.6, -0.3], [0.1, 0.9, 0.7]], s=0.4)


@pytest.fixture(scope="module")
def mixture_reference():
    return diffspeed.sample(denoiser(MIX), X / S0, "dpmpp_3s", schedule=grid(1500))


@pytest.mark.parametrize(
    ("solver", "opts", "order"),
    [("euler", {}, 1), ("heun", {}, 2), ("dpmpp_2m", NO_LOF, 2), ("dpm_solver_3", NO_LOF, 3),
     ("unipc", {**NO_LOF, "order": 2}, 3)],
)  # fmt: skip
def test_order_mixture(mixture_reference, solver, opts, order):
    assert abs(slope(MIX, mixture_reference, solver, [48, 96], **opts) - order) <= 0.3
