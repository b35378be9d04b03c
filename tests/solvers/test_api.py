"""Solver API: registries, errors, gradients, conditioning, noise, adaptive / parallel /
optimised schedules, final-step and time-shift options."""

import json

import pytest
import torch

import diffspeed
from diffspeed.errors import ConfigError, DiffspeedError, SigmaRangeError
from diffspeed.solvers import SOLVERS
from diffspeed.solvers.optimize import tune_schedule
from diffspeed.toy import GaussianToy, ddpm_alphas_cumprod, vp_eps_network

AC = ddpm_alphas_cumprod()
TOY = GaussianToy(torch.tensor([0.3, -0.5, 0.8]), torch.tensor([0.6, 0.3, 0.9]))
MINE = [
    "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpmpp_3s", "dpm_solver",
    "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "unipc", "unipc_bh1", "deis", "plms",
    "ipndm", "adaptive", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver",
    "paradigms",
]  # fmt: skip
STOCHASTIC = ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver"]


def toy_denoiser(dtype=torch.float64):
    return diffspeed.wrap(vp_eps_network(TOY, AC), "epsilon", AC)


def noise(b=4, seed=0):
    return torch.randn(b, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_available_lists_everything():
    assert set(MINE) <= set(diffspeed.solvers.available())
    for name in ("karras", "exponential", "logsnr", "polyexponential", "trailing", "leading"):
        assert name in diffspeed.schedules.available()


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"solver": "dpmpp_2m", "steps": 0}, ConfigError, "steps"),
        ({"solver": "dpm_solver", "order": 4}, ConfigError, "order"),
        ({"solver": "unipc", "order": 0}, ConfigError, "order"),
        ({"solver": "deis", "order": 7}, ConfigError, "order"),
        ({"solver": "adaptive", "rtol": 0.0}, ConfigError, "rtol"),
        ({"solver": "adaptive", "atol": -1.0}, ConfigError, "atol"),
        ({"solver": "paradigms", "tol": 0.0}, ConfigError, "tol"),
        ({"solver": "euler_ancestral", "eta": -1.0}, ConfigError, "eta"),
        ({"solver": "dpmpp_2m", "schedule": [10.0, 20.0, 0.0]}, SigmaRangeError, "decreasing"),
        ({"solver": "dpmpp_2m", "schedule": [1e4, 1.0, 0.0]}, SigmaRangeError, "outside"),
        ({"solver": "dpmpp_2m", "schedule_options": {"final": "x"}}, ConfigError, "final"),
        ({"solver": "dpmpp_2m", "time_shift": 0.9}, ConfigError, "time_shift"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, err, match):
    kwargs = {"steps": 4, **kwargs}
    with pytest.raises(err, match=match) as info:
        diffspeed.sample(toy_denoiser(), noise(), **kwargs)
    assert isinstance(info.value, DiffspeedError)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "heun", "sa_solver"])
def test_backprop_through_two_steps(solver):
    x = noise().float().requires_grad_(True)
    den = diffspeed.wrap(vp_eps_network(TOY, AC), "epsilon", AC)
    out = diffspeed.sample(den, x, solver, 2, "karras", grad=True, generator=[0, 1, 2, 3])
    out.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


class CondNet(torch.nn.Module):
    """A class-conditional toy network that records the labels it sees."""

    def __init__(self):
        super().__init__()
        self.net, self.seen = vp_eps_network(TOY, AC), []

    def forward(self, x, t, class_labels):
        self.seen.append(class_labels.clone())
        return self.net(x, t) * (1 + 0.01 * class_labels.view(-1, 1).to(x.dtype))


@pytest.mark.parametrize("solver", MINE)
def test_guidance_and_labels_reach_every_evaluation(solver):
    net = CondNet()
    den = diffspeed.guidance(diffspeed.wrap(net, "epsilon", AC), 2.0, {"class_labels": 10})
    y = torch.tensor([1, 2, 3, 4])
    x, info = diffspeed.sample(den, noise(), solver, 4, "karras", cond={"class_labels": y},
                               generator=[0, 1, 2, 3], return_info=True)  # fmt: skip
    assert torch.isfinite(x).all() and net.seen
    for labels in net.seen:  # cond half then uncond half, tiled per window for paradigms
        k = len(labels) // 8
        assert torch.equal(labels, torch.cat([y.repeat(k), torch.full((4 * k,), 10)]))
    if solver != "paradigms":
        assert info["nfe"] == len(net.seen)


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_sde_samples_do_not_depend_on_batch(solver):
    den = toy_denoiser()
    big = diffspeed.sample(den, noise(4), solver, 5, "karras", generator=[7, 8, 9, 10])
    one = diffspeed.sample(den, noise(4)[2:3], solver, 5, "karras", generator=[9])
    assert torch.allclose(big[2:3], one, atol=1e-12)
    other = diffspeed.sample(den, noise(4), solver, 5, "karras", generator=[1, 2, 3, 4])
    assert not torch.allclose(big, other)


def test_adaptive_tolerance_controls_nfe_and_error():
    den, x = toy_denoiser(), noise()
    ref = diffspeed.sample(den, x, "dpmpp_3s", 300, "exponential")
    errs, nfes = [], []
    for rtol in (1e-3, 1e-4):
        out, info = diffspeed.sample(den, x, "adaptive", 1, "karras", rtol=rtol, atol=rtol / 100,
                                     order=3, return_info=True)  # fmt: skip
        errs.append(float((out - ref).abs().max()))
        nfes.append(info["nfe"])
        assert info["nfe"] == info["nfe_solver"] and info["accepted"] > 0
    assert nfes[1] > nfes[0] and errs[1] < errs[0]


def test_paradigms_converges_to_ddim_in_fewer_rounds():
    den, x = toy_denoiser(), noise()
    ddim = diffspeed.sample(den, x, "ddim", 24, "karras")
    out, info = diffspeed.sample(den, x, "paradigms", 24, "karras", window=8, tol=1e-6,
                                 return_info=True)  # fmt: skip
    assert torch.allclose(out, ddim, atol=1e-4)
    assert info["rounds"] < 24 <= info["nfe"]


@pytest.mark.parametrize("method", ["ays", "dp"])
def test_tuned_schedule_json_round_trip(tmp_path, method):
    den, x = toy_denoiser(), noise(8, seed=5)
    res = tune_schedule(den, x, "dpmpp_2m", 3, method=method, rounds=1, grid=30,
                        reference_steps=40)  # fmt: skip
    assert res.nfe > 0 and res.loss_after <= res.loss_before
    path = tmp_path / "s.json"
    path.write_text(json.dumps(res.to_json()))
    out, info = diffspeed.sample(den, noise(), "dpmpp_2m", schedule=str(path), return_info=True)
    assert info["steps"] == 3 and info["sigmas"] == res.sigmas and torch.isfinite(out).all()


def test_final_sigma_min_and_time_shift_options():
    den, x = toy_denoiser(), noise()
    sig = diffspeed.schedules.get_sigmas(den, "trailing", 5, final="sigma_min")
    assert len(sig) == 6 and float(sig[-1]) == pytest.approx(den.sigma_min)
    base = diffspeed.sample(den, x, "dpmpp_2m", 5)
    assert torch.equal(diffspeed.sample(den, x, "dpmpp_2m", 5, time_shift=0.0), base)
    assert not torch.allclose(diffspeed.sample(den, x, "dpmpp_2m", 5, time_shift=0.02), base)


def test_nfe_matches_spec():
    den = toy_denoiser()
    for name in ("heun", "plms", "dpmpp_2m", "dpm_solver_3", "unipc"):
        _, info = diffspeed.sample(den, noise(), name, 6, "karras", return_info=True)
        assert info["nfe"] == SOLVERS[name].nfe(6)


def test_ays_free_start_stays_below_sigma_max_and_fixed_start_pins_it():
    den, x = toy_denoiser(), noise(8, seed=5)
    kw = {"rounds": 2, "reference_steps": 40}
    fixed = tune_schedule(den, x, "dpmpp_2m", 3, free_start=False, **kw)
    free = tune_schedule(den, x, "dpmpp_2m", 3, **kw)
    assert fixed.sigmas[0] == pytest.approx(den.sigma_max)
    assert free.sigmas[0] <= den.sigma_max * (1 + 1e-9)
    assert all(a > b for a, b in zip(free.sigmas, free.sigmas[1:], strict=False))
    assert free.loss_after <= free.loss_before
