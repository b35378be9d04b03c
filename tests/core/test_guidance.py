"""Guidance equals two separate calls combined by hand; NFE counting is exact."""

import torch

import diffspeed
from diffspeed.toy import ddpm_alphas_cumprod


def _conditional_net(x, t, class_labels):
    return x * 0.1 + class_labels.view(-1, 1, 1, 1).to(x.dtype) * 0.05 + t.view(-1, 1, 1, 1) * 1e-4


def test_guidance_equals_manual_combination():
    den = diffspeed.wrap(_conditional_net, "epsilon", ddpm_alphas_cumprod())
    g = diffspeed.guidance(den, 3.0, uncond={"class_labels": 10})
    x = torch.randn(4, 1, 8, 8)
    sig = torch.tensor([0.5, 1.0, 4.0, 30.0])
    y = torch.tensor([1, 2, 3, 4])
    out = g(x, sig, class_labels=y)
    assert den.nfe == 1  # one batched forward
    c = den(x, sig, class_labels=y)
    u = den(x, sig, class_labels=torch.full_like(y, 10))
    torch.testing.assert_close(out, u + 3.0 * (c - u))
    assert den.nfe == 3 and g.nfe == 3
    g.reset_nfe()
    assert den.nfe == 0


def test_per_sample_scale_and_batch1_uncond_tensor():
    den = diffspeed.wrap(
        lambda x, t, emb: x * emb.mean(1).view(-1, 1, 1, 1), "epsilon", ddpm_alphas_cumprod()
    )
    emb = torch.randn(3, 5)
    null = torch.zeros(1, 5)
    w = torch.tensor([0.0, 1.0, 2.0])
    g = diffspeed.guidance(den, w, uncond={"emb": null})
    x = torch.randn(3, 1, 2, 2)
    sig = torch.full((3,), 2.0)
    out = g(x, sig, emb=emb)
    # scale 0 -> pure uncond, scale 1 -> pure cond
    u = den(x, sig, emb=null.expand(3, 5))
    c = den(x, sig, emb=emb)
    torch.testing.assert_close(out[0], u[0])
    torch.testing.assert_close(out[1], c[1])
    torch.testing.assert_close(out[2], u[2] + 2 * (c[2] - u[2]))


def test_sample_counts_nfe():
    den = diffspeed.wrap(lambda x, t: torch.zeros_like(x), "epsilon", ddpm_alphas_cumprod())
    x, info = diffspeed.sample(den, torch.randn(2, 1, 4, 4), "ddim", 7, return_info=True)
    assert info["nfe"] == 7 == den.nfe
    _, info = diffspeed.sample(den, torch.randn(2, 1, 4, 4), "heun", 7, return_info=True)
    assert info["nfe"] == 13
