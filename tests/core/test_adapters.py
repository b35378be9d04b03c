"""Adapters: eps / v / x0 views of one analytic model agree; from_diffusers agrees with wrap."""

import math

import pytest
import torch

import diffspeed
from diffspeed.core import ContinuousVPDenoiser, EDMDenoiser, VEDenoiser, cosine_alpha_sigma
from diffspeed.toy import GaussianToy, ddpm_alphas_cumprod, vp_eps_network


@pytest.fixture
def toy():
    return GaussianToy(mu=0.2, s=0.6)


@pytest.fixture
def ac():
    return ddpm_alphas_cumprod()


def _batch(n=6, sigmas=(0.05, 0.3, 1.0, 3.7, 20.0, 120.0)):
    x0 = torch.randn(n, 1, 4, 4, dtype=torch.float64)
    sig = torch.tensor(sigmas, dtype=torch.float64)
    return x0 + sig.view(-1, 1, 1, 1) * torch.randn_like(x0), sig


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_discrete_vp_views_match_exact_denoiser(toy, ac, prediction):
    den = diffspeed.wrap(vp_eps_network(toy, ac, prediction), prediction, ac)
    x, sig = _batch()
    torch.testing.assert_close(den(x, sig), toy(x, sig), atol=1e-6, rtol=0)
    assert den.nfe == 1


def test_fractional_timesteps_round_trip(ac):
    den = diffspeed.wrap(lambda x, t: x, "sample", ac)
    t = torch.tensor([0.0, 0.5, 17.25, 500.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(den.sigma_to_t(den.t_to_sigma(t)), t, atol=1e-9, rtol=0)
    # integer timesteps hit the discrete sigmas exactly
    ints = torch.arange(0, 1000, 37, dtype=torch.float64)
    torch.testing.assert_close(den.t_to_sigma(ints), den.sigmas[ints.long()], atol=0, rtol=1e-12)


def test_continuous_vp_and_ve_and_edm_match_exact(toy):
    x, sig = _batch(sigmas=(0.05, 0.3, 1.0, 3.7, 20.0, 60.0))
    alpha, sigma = cosine_alpha_sigma()

    def vp_net(x_t, t):
        s_ve = sigma(t) / alpha(t)
        a = alpha(t).view(-1, 1, 1, 1)
        return toy.eps(x_t / a, s_ve)

    den = ContinuousVPDenoiser(vp_net, alpha, sigma, t_min=1e-4, t_max=0.999)
    torch.testing.assert_close(den(x, sig), toy(x, sig), atol=1e-6, rtol=0)

    ve = VEDenoiser(lambda xi, s: toy.eps(xi, s), 0.01, 100.0)
    torch.testing.assert_close(ve(x, sig), toy(x, sig), atol=1e-9, rtol=0)

    sd = 0.5

    def edm_net(x_in, c_noise):
        s = (4 * c_noise).exp()
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        xx = x_in * (s**2 + sd**2).sqrt().view(-1, 1, 1, 1)
        v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
        return (toy(xx, s) - v(c_skip) * xx) / v(c_out)

    edm = EDMDenoiser(edm_net, 0.002, 80.0, sigma_data=sd)
    torch.testing.assert_close(edm(x, sig), toy(x, sig), atol=1e-9, rtol=0)


def test_from_diffusers_agrees_with_wrap():
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        num_class_embeds=3,
    ).eval()
    sched = DDPMScheduler(prediction_type="v_prediction")
    a = diffspeed.from_diffusers(unet, sched)
    b = diffspeed.wrap(unet, "v_prediction", sched.alphas_cumprod)
    x = torch.randn(3, 1, 8, 8)
    sig = torch.tensor([0.1, 2.0, 50.0])
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(a(x, sig, class_labels=y), b(x, sig, class_labels=y))
    assert a.prediction == "v_prediction"
    assert math.isclose(
        a.sigma_max,
        float(((1 - sched.alphas_cumprod[-1]) / sched.alphas_cumprod[-1]).sqrt()),
        rel_tol=1e-6,
    )


def test_noise_scale_convention(ac):
    vp = diffspeed.wrap(lambda x, t: x, "sample", ac)
    ve = VEDenoiser(lambda x, s: x, 0.01, 80.0, prediction="sample")
    assert math.isclose(vp.noise_scale(vp.sigma_max), math.sqrt(1 + vp.sigma_max**2))
    assert ve.noise_scale(80.0) == 80.0
