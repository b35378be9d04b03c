"""Structural pruning: config checks, fewer MACs, diffusers layout, save/load, sampling."""

import json

import pytest
import torch

pytest.importorskip("torch_pruning")
pytest.importorskip("diffusers")

from diffspeed import DiffspeedError, from_diffusers, sample  # noqa: E402
from diffspeed.compress.prune import (  # noqa: E402
    Prune,
    count_macs,
    finetune,
    load_pruned,
    plan_widths,
    prune,
    save_pruned,
)
from diffspeed.errors import ConfigError, UnsupportedModelError  # noqa: E402


def tiny_unet(widths=(16, 32, 32)):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=widths,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        num_class_embeds=11,
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()


def calibration(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g), {"class_labels": torch.arange(n) % 10}


def run(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=g)
    with torch.no_grad():
        return net(x, torch.tensor([1, 200, 500, 999]), class_labels=torch.tensor([0, 3, 7, 10]))


@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan")])
def test_ratio_outside_open_unit_interval_is_refused(ratio):
    with pytest.raises(DiffspeedError, match="strictly between 0 and 1"):
        Prune(ratio=ratio)


def test_config_round_trips_json_and_refuses_unknown_names():
    cfg = Prune(ratio=0.4, importance="magnitude", levels=(0, 1), seed=7)
    assert Prune.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="magnitude"):
        Prune(importance="random")
    with pytest.raises(ConfigError, match="no field"):
        Prune.from_dict({"ratio": 0.5, "sparsity": 0.5})


def test_pruned_model_has_fewer_params_and_macs_and_fits_a_diffusers_config():
    net = tiny_unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = prune(net, Prune(ratio=0.5, importance="magnitude"))
    assert list(out.config.block_out_channels) == [8, 16, 16]
    assert out.config.attention_head_dim == 4  # two heads per 16 channels, as before
    macs0, params0 = count_macs(net)
    macs, params = count_macs(out)
    assert macs < 0.5 * macs0 and params < 0.5 * params0
    assert run(out).sample.shape == (4, 1, 8, 8)
    # the input is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_taylor_importance_needs_data_and_differs_from_magnitude():
    net = tiny_unet()
    with pytest.raises(ConfigError, match="calibration data"):
        prune(net, Prune(ratio=0.5))
    taylor = prune(net, Prune(ratio=0.5, timesteps=4, batch_size=8), data=calibration())
    magnitude = prune(net, Prune(ratio=0.5, importance="magnitude"))
    assert taylor.config.block_out_channels == magnitude.config.block_out_channels
    w_t, w_m = taylor.conv_in.weight, magnitude.conv_in.weight
    assert w_t.shape == w_m.shape and not torch.equal(w_t, w_m)


def test_a_ratio_that_rounds_to_no_pruning_is_exact():
    net = tiny_unet()
    out = prune(net, Prune(ratio=0.05, importance="magnitude"))
    assert list(out.config.block_out_channels) == [16, 32, 32]
    assert torch.equal(run(out).sample, run(net).sample)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    out = prune(tiny_unet(), Prune(ratio=0.5, importance="magnitude"))
    folder = save_pruned(out, tmp_path / "pruned")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "prune.json",
    ]
    assert json.loads((folder / "prune.json").read_text())["prune"]["ratio"] == 0.5
    back = load_pruned(folder)
    sd, sd_back = out.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)
    assert torch.equal(run(out).sample, run(back).sample)


def test_load_refuses_pickles_and_other_folders(tmp_path):
    from diffspeed.errors import WeightsError

    folder = save_pruned(prune(tiny_unet(), Prune(importance="magnitude")), tmp_path / "p")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match="safetensors only"):
        load_pruned(folder)
    with pytest.raises(WeightsError):
        load_pruned(tmp_path)


def test_pruned_denoiser_samples_through_diffspeed_sample():
    from diffusers import DDPMScheduler

    den = from_diffusers(tiny_unet(), DDPMScheduler(), uncond={"class_labels": 10})
    pruned = prune(den, Prune(ratio=0.5, importance="magnitude"))
    assert pruned.model is not den.model
    assert list(pruned.model.config.block_out_channels) == [8, 16, 16]
    cond = {"class_labels": torch.tensor([1, 2])}
    x = sample(pruned, torch.randn(2, 1, 8, 8), "ddim", 4, cond=cond)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_levels_must_keep_the_residual_shortcuts():
    net = tiny_unet()
    with pytest.raises(UnsupportedModelError, match="shortcut"):
        prune(net, Prune(ratio=0.5, importance="magnitude", levels=(1,)))
    with pytest.raises(ConfigError, match="does not exist"):
        plan_widths(net, Prune(levels=(5,)))
    with pytest.raises(UnsupportedModelError, match="UNet2DModel"):
        prune(torch.nn.Linear(2, 2), Prune(importance="magnitude"))


def test_finetune_runs_the_shared_loop(tmp_path):
    teacher = tiny_unet()
    student = prune(teacher, Prune(ratio=0.5, importance="magnitude"))
    from diffspeed.distill.trainer import TrainConfig

    tc = TrainConfig(steps=3, batch_size=4, lr=1e-3, checkpoint_every=0)
    out = finetune(
        student, teacher, calibration(), tmp_path / "ft", tc, uncond={"class_labels": 10}
    )
    assert (tmp_path / "ft" / "checkpoint.safetensors").is_file()
    assert not torch.equal(out.conv_in.weight, student.conv_in.weight)
    assert not any(p.requires_grad for p in out.parameters())


def test_narrowed_heads_keep_the_attention_temperature():
    from diffusers.models.attention_processor import Attention

    from diffspeed.compress.prune import _shrink_heads

    attn = Attention(16, heads=2, dim_head=8, bias=True).eval()
    keep = [0, 1, 2, 3, 8, 9, 10, 11]  # the first half of each head
    drop = [i for i in range(16) if i not in keep]
    with torch.no_grad():  # dropped dims carry nothing, so removing them must change nothing
        for lin in (attn.to_q, attn.to_k, attn.to_v):
            lin.weight[drop] = 0
            lin.bias[drop] = 0
        attn.to_out[0].weight[:, drop] = 0
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = attn(x)
        _shrink_heads(attn, keep, keep)
        after = attn(x)
    assert attn.to_q.out_features == 8 and attn.heads == 2
    torch.testing.assert_close(after, before)
