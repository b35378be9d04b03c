"""from_diffusers reads the conditioning spec from the model's config and splits learned-sigma
outputs; check_inputs refuses a sampling call that does not fit the spec. Tiny random-weight
diffusers models built offline."""

import pytest
import torch
from tiny_sd import tiny_text_unet, tiny_unet

import diffspeed
from diffspeed.core.adapters import SplitLearnedSigma
from diffspeed.core.contract import CondSpec, check_inputs
from diffspeed.errors import ConfigError, ShapeError


def _sched():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000)


def _unet(**kw):
    return tiny_unet(**kw)


def _text_unet():
    return tiny_text_unet()


def _dit(out_channels):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=out_channels,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
    ).eval()


def test_unconditional_unet_spec():
    spec = diffspeed.from_diffusers(_unet(), _sched()).cond_spec
    assert spec.keys == () and not spec.conditional and spec.sample_shape == (1, 8, 8)
    assert spec.example_cond(4) == {}


def test_class_unet_spec_uncond_unknown_unless_given():
    den = diffspeed.from_diffusers(_unet(num_class_embeds=4), _sched())
    assert den.cond_spec.keys == ("class_labels",) and not den.cond_spec.guidable
    with pytest.raises(ConfigError, match="uncond"):
        diffspeed.guidance(den, 2.0)
    assert den.cond_spec.example_cond(6)["class_labels"].tolist() == [0, 1, 2, 3, 0, 1]
    given = diffspeed.from_diffusers(
        _unet(num_class_embeds=4), _sched(), uncond={"class_labels": 3}
    )
    assert given.cond_spec.example_cond(5)["class_labels"].tolist() == [0, 1, 2, 0, 1]
    x = torch.randn(5, 1, 8, 8)
    y = diffspeed.guidance(given, 2.0)(x, torch.full((5,), 1.0), class_labels=torch.arange(5) % 3)
    assert y.shape == x.shape


def test_text_unet_spec_and_explicit_spec():
    unet = _text_unet()
    spec = diffspeed.from_diffusers(unet, _sched()).cond_spec
    assert spec.keys == ("encoder_hidden_states",) and spec.batch_dim("encoder_hidden_states") == 0
    empty = torch.zeros(1, 3, 16)
    den = diffspeed.from_diffusers(unet, _sched(), uncond={"encoder_hidden_states": empty})
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    out = diffspeed.guidance(den, 3.0)(x, torch.full((2,), 2.0), encoder_hidden_states=emb)
    assert out.shape == x.shape
    mine = CondSpec(keys=("encoder_hidden_states",), uncond={"encoder_hidden_states": empty})
    assert diffspeed.from_diffusers(unet, _sched(), cond_spec=mine).cond_spec is mine
    with pytest.raises(ConfigError, match="does not take"):
        diffspeed.from_diffusers(unet, _sched(), uncond={"class_labels": 0})
    with pytest.raises(ConfigError, match="not both"):
        diffspeed.from_diffusers(unet, _sched(), cond_spec=mine, uncond={})


def test_learned_sigma_dit_is_split_and_guided_by_its_null_class():
    """A DiT whose output carries learned variances (out_channels = 2 x in_channels, as the
    official checkpoints) is detected from its config; the denoiser sees the first half."""
    dit = _dit(out_channels=8)
    den = diffspeed.from_diffusers(dit, _sched())
    assert isinstance(den.net, SplitLearnedSigma) and den.model is dit
    spec = den.cond_spec
    assert spec.keys == ("class_labels",) and int(spec.uncond["class_labels"]) == 5
    assert spec.example_cond(7)["class_labels"].tolist() == [0, 1, 2, 3, 4, 0, 1]
    x, t = torch.randn(3, 4, 8, 8), torch.full((3,), 1.5)
    y = torch.tensor([0, 1, 4])
    out = den(x, t, class_labels=y)
    c_skip, c_out, c_in, c_noise = (c.float().view(-1, 1, 1, 1) for c in den.scalings(t.double()))
    with torch.no_grad():
        full = dit(x * c_in, c_noise.flatten(), class_labels=y).sample
    assert full.shape == (3, 8, 8, 8)
    torch.testing.assert_close(out, c_skip * x + c_out * full[:, :4])
    noise = diffspeed.seeded_noise(range(3), spec.sample_shape)
    guided = diffspeed.guidance(den, 4.0)
    samples = diffspeed.sample(guided, noise, "ddim", 3, cond={"class_labels": y})
    assert torch.isfinite(samples).all()
    forced = diffspeed.from_diffusers(_dit(out_channels=4), _sched(), learned_sigma="split")
    with pytest.raises(ShapeError, match="output to match"):
        forced(x, t, class_labels=y)


def test_learned_sigma_name_is_checked():
    with pytest.raises(ConfigError, match="learned_sigma"):
        diffspeed.from_diffusers(_dit(out_channels=8), _sched(), learned_sigma="keep")


def test_check_inputs():
    den = diffspeed.from_diffusers(_unet(num_class_embeds=4), _sched())
    check_inputs(den, torch.zeros(2, 1, 8, 8), {"class_labels": torch.tensor([0, 1])})
    with pytest.raises(ShapeError, match=r"sample shape \(3, 8, 8\).*\(1, 8, 8\)"):
        check_inputs(den, torch.zeros(2, 3, 8, 8), {"class_labels": torch.tensor([0, 1])})
    with pytest.raises(ConfigError, match="missing"):
        check_inputs(den, torch.zeros(2, 1, 8, 8), {})
    with pytest.raises(ShapeError, match="3 samples"):
        check_inputs(den, torch.zeros(2, 1, 8, 8), {"class_labels": torch.tensor([0, 1, 2])})
    with pytest.raises(ShapeError, match="noise"):
        check_inputs(den, torch.zeros(8), {"class_labels": torch.tensor([0])})
    check_inputs(lambda x, s: x, torch.zeros(2, 3), None)


def test_guidance_batches_cond_along_the_spec_batch_dim():
    """A cond whose samples run along dim 1 ([L, B, D]) is paired with its uncond along dim 1."""

    def net(x, s, emb):
        assert emb.shape[1] == x.shape[0]
        return x * 0 + emb.mean((0, 2)).view(-1, 1, 1, 1)

    den = diffspeed.VEDenoiser(net, 0.01, 10.0, prediction="sample")
    empty = torch.zeros(3, 1, 4)
    den.cond_spec = CondSpec(keys=("emb",), uncond={"emb": empty}, batch_dims={"emb": 1})
    emb = torch.ones(3, 2, 4)
    out = diffspeed.guidance(den, 2.5)(torch.zeros(2, 1, 2, 2), torch.ones(2), emb=emb)
    torch.testing.assert_close(out, torch.full((2, 1, 2, 2), 2.5))
