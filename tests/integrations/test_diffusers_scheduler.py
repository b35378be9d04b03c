"""The diffusers drop-in scheduler inside a real diffusers pipeline (tiny random UNet, CPU)."""

import pytest
import torch

import diffspeed
from diffspeed.errors import ConfigError

diffusers = pytest.importorskip("diffusers")
from diffspeed.integrations.diffusers import Scheduler  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8,
    )  # fmt: skip
    return net.eval().requires_grad_(False)


@pytest.mark.parametrize(
    ("solver", "opts", "steps"),
    [("dpmpp_2m", {}, 6), ("heun", {}, 3), ("euler_ancestral", {}, 4)],
)
def test_pipeline_matches_functional_sampler(unet, solver, opts, steps):
    sched = Scheduler.from_config(
        diffusers.DDPMScheduler().config, solver=solver, schedule="karras", solver_options=opts,
        seed=3,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 1, 8, 8, generator=g)  # as the pipeline draws it; SDE noise follows
    pipe2 = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe2.set_progress_bar_config(disable=True)
    got = pipe2(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np").images  # fmt: skip
    den = diffspeed.from_diffusers(unet, diffusers.DDPMScheduler())
    x, info = diffspeed.sample(den, noise, solver, steps, "karras", generator=g,
                               return_info=True, **opts)  # fmt: skip
    ref = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert len(sched.timesteps) == info["nfe"]
    assert abs(got - ref).max() < 1e-4


def test_config_round_trip(tmp_path):
    sched = Scheduler.from_config(
        diffusers.DDPMScheduler().config, solver="unipc", schedule="exponential", steps=7,
        solver_options={"order": 2},
    )  # fmt: skip
    sched.save_config(tmp_path)
    back = Scheduler.from_config(Scheduler.load_config(tmp_path))
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(sched.config)
    assert torch.equal(back.timesteps, sched.timesteps)
    assert sched.init_noise_sigma == 1.0 and sched.order == 1
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(sched.scale_model_input(x, sched.timesteps[0]), x)


def test_rejects_adaptive():
    with pytest.raises(ConfigError, match="adaptive"):
        Scheduler.from_config(diffusers.DDPMScheduler().config, solver="adaptive")
