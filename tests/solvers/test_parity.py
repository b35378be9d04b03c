"""Float64 parity with diffusers' schedulers on the same exact toy model and timesteps."""

import pytest
import torch

import diffspeed
from diffspeed.toy import GaussianMixtureToy, vp_eps_network

diffusers = pytest.importorskip("diffusers")

BETAS = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def setup(sched):
    """The toy model as a diffusers eps network and as a diffspeed denoiser (float64)."""
    ac = sched.alphas_cumprod.double()
    sched.alphas_cumprod = ac
    toy = GaussianMixtureToy([[1.0, -0.5, 0.2], [-0.8, 0.6, -0.3]], s=0.3)
    net = vp_eps_network(toy, ac)
    return net, diffspeed.wrap(net, "epsilon", ac)


def run_diffusers(sched, net, den, noise, steps):
    """Sample with ``scheduler.step``; returns (VP sample, float64 sigmas used)."""
    sched.set_timesteps(steps)
    ts = sched.timesteps
    body = den.t_to_sigma(ts.double())
    if hasattr(sched, "sigmas"):  # make diffusers' float32 sigmas exact float64 ones
        last = sched.sigmas[-1].double()
        last = den.sigma_min if last > 0 else last
        sched.sigmas = torch.cat([body, torch.as_tensor([float(last)], dtype=torch.float64)])
    x = noise * sched.init_noise_sigma
    for t in ts:
        x = sched.step(net(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x, body


def ours(den, noise, solver, sigmas, **opts):
    x = diffspeed.sample(den, noise, solver, schedule=sigmas, **opts)
    return x / torch.sqrt(1 + sigmas[-1] ** 2)  # back to the VP scale diffusers keeps


NOISE = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ZERO = torch.zeros(1, dtype=torch.float64)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 10])
def test_ddim(spacing, steps):
    sched = diffusers.DDIMScheduler(
        **BETAS, timestep_spacing=spacing, set_alpha_to_one=True, clip_sample=False
    )
    net, den = setup(sched)
    ref, body = run_diffusers(sched, net, den, NOISE, steps)
    sig = torch.cat([body, ZERO])
    assert torch.allclose(sig, diffspeed.schedules.get_sigmas(den, spacing, steps), rtol=1e-9)
    assert torch.allclose(ours(den, NOISE, "ddim", sig), ref, atol=1e-6)


@pytest.mark.parametrize("steps", [4, 8, 12])
def test_pndm_plms(steps):
    sched = diffusers.PNDMScheduler(**BETAS, skip_prk_steps=True)
    net, den = setup(sched)
    sched.set_timesteps(steps)
    body = den.t_to_sigma(sched._timesteps[::-1].copy().astype("float64"))
    sig = torch.cat([torch.as_tensor(body), torch.tensor([den.sigma_min], dtype=torch.float64)])
    x = NOISE.clone()
    for t in sched.timesteps:
        x = sched.step(net(x, t), t, x).prev_sample
    assert torch.allclose(ours(den, NOISE, "plms", sig), x, atol=1e-6)


MULTISTEP = [
    ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler, {"solver_order": 2}, {}),
    ("dpmpp_3m", diffusers.DPMSolverMultistepScheduler, {"solver_order": 3}, {}),
    (
        "dpmpp_2m",
        diffusers.DPMSolverMultistepScheduler,
        {"solver_order": 2, "final_sigmas_type": "sigma_min"},
        {},
    ),  # fmt: skip
    (
        "dpmpp_3m",
        diffusers.DPMSolverMultistepScheduler,
        {"solver_order": 3, "use_karras_sigmas": True},
        {},
    ),  # fmt: skip
    ("dpmpp_2s", diffusers.DPMSolverSinglestepScheduler, {"solver_order": 2}, {}),
    ("dpmpp_3s", diffusers.DPMSolverSinglestepScheduler, {"solver_order": 3}, {}),
    (
        "dpm_solver_3",
        diffusers.DPMSolverSinglestepScheduler,
        {"solver_order": 3, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        {},
    ),  # fmt: skip
    (
        "dpm_solver_2",
        diffusers.DPMSolverSinglestepScheduler,
        {"solver_order": 2, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        {},
    ),  # fmt: skip
    ("unipc", diffusers.UniPCMultistepScheduler, {"solver_order": 2}, {"order": 2}),
    ("unipc", diffusers.UniPCMultistepScheduler, {"solver_order": 3}, {"order": 3}),
    (
        "unipc_bh1",
        diffusers.UniPCMultistepScheduler,
        {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        {"order": 3},
    ),  # fmt: skip
    ("deis", diffusers.DEISMultistepScheduler, {"solver_order": 3}, {}),
    ("deis", diffusers.DEISMultistepScheduler, {"solver_order": 2}, {"order": 2}),
]


@pytest.mark.parametrize("steps", [6, 9])
@pytest.mark.parametrize(("solver", "cls", "kw", "opts"), MULTISTEP)
def test_multistep_and_singlestep(solver, cls, kw, opts, steps):
    spacing = {"timestep_spacing": "trailing"} if "timestep_spacing" in cls().config else {}
    sched = cls(**BETAS, **spacing, **kw)
    net, den = setup(sched)
    ref, _ = run_diffusers(sched, net, den, NOISE, steps)
    sig = sched.sigmas.double()
    opts = {"lower_order_final": sched.config.lower_order_final, **opts}  # diffusers may flip it
    assert torch.allclose(ours(den, NOISE, solver, sig, **opts), ref, atol=1e-6)


def test_dpmpp_thresholding_matches_diffusers():
    kw = {"solver_order": 2, "thresholding": True, "sample_max_value": 1.0}
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, **kw)
    net, den = setup(sched)
    noise = 3 * NOISE.view(4, 1, 3)  # large values, so the threshold is active
    ref, _ = run_diffusers(sched, net, den, noise, 6)
    got = ours(den, noise, "dpmpp_2m", sched.sigmas.double(), dynamic_threshold=0.995)
    assert not torch.allclose(ours(den, noise, "dpmpp_2m", sched.sigmas.double()), ref)
    assert torch.allclose(got, ref, atol=1e-6)
