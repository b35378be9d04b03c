"""Each distillation loss decreases on a toy problem in a few dozen steps."""

import pytest
import torch
from distill_toys import AC, tiny_unet, toy_data, toy_teacher

from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.distill import LossContext, TrainConfig, step_generator, train
from diffspeed.distill.guided import GuidanceLoss, Guided
from diffspeed.distill.kd import KD, KDLoss, teacher_dataset
from diffspeed.distill.progressive import WEIGHTINGS, Progressive, ProgressiveLoss
from diffspeed.distill.wcond import WCondUNet
from diffspeed.errors import ConfigError
from diffspeed.solvers.schedules import get_sigmas

CFG = TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=0, lr_schedule="constant")


def fixed_loss(loss, student, teacher, data, **extras_keys):
    """Mean loss on a fixed batch with a fixed generator (comparable before / after)."""
    idx = torch.arange(64)
    x0, cond, extras = data.take(idx, torch.device("cpu"))
    ctx = LossContext(0, 1, step_generator(123, 0, 0), 64, slice(0, 64), extras, {}, x0.device)
    with torch.no_grad():
        return float(loss(student, teacher, x0, cond, ctx=ctx).mean())


def check_decreases(loss, student, teacher, data, tmp_path, factor=0.5):
    before = fixed_loss(loss, student, teacher, data)
    train(student, loss, CFG, tmp_path, data=data, teacher=teacher)
    after = fixed_loss(loss, student, teacher, data)
    assert after < factor * before, (before, after)


def v_student(seed=0, wcond=False):
    net = tiny_unet(seed)
    return DiscreteVPDenoiser(WCondUNet(net) if wcond else net, AC, "v_prediction")


@pytest.mark.parametrize("weighting", ["next_snr", "truncated_snr"])
def test_progressive_loss_decreases(tmp_path, weighting):
    teacher = toy_teacher()
    cfg = Progressive(teacher_steps=4, final_steps=1, weighting=weighting, guidance=1.0)
    loss = ProgressiveLoss(get_sigmas(teacher, "trailing", 4), cfg)
    check_decreases(loss, v_student(), teacher, toy_data(), tmp_path)


def test_progressive_target_is_exact_for_a_linear_teacher():
    """For the Gaussian toy (exact teacher) two DDIM steps == one step with the x~ target."""
    teacher = toy_teacher()
    sig = get_sigmas(teacher, "trailing", 4)
    loss = ProgressiveLoss(sig, Progressive(4, 2, guidance=1.0))

    class Replay(torch.nn.Module):
        """A 'student' that predicts exactly the x~ target by running the teacher twice."""

        def forward(self, x, sigma, **cond):
            from diffspeed.distill.progressive import ddim_step

            i = [int((sig[::2] - s).abs().argmin()) for s in sigma.tolist()]
            s_mid, s_next = sig[[2 * j + 1 for j in i]], sig[[2 * j + 2 for j in i]]
            x2 = ddim_step(teacher, ddim_step(teacher, x, sigma, s_mid, cond), s_mid, s_next, cond)
            r = (s_next / sigma).view(-1, 1, 1, 1)
            return ((x2.double() - r * x.double()) / (1 - r)).float()

    data = toy_data()
    assert fixed_loss(loss, Replay(), teacher, data) < 1e-8


def exact_ode(x, sigma, sigma_next, labels, s=0.5):
    """The toy's exact PF-ODE transport per sample (class means as in ``ClassToyEps``)."""
    mu = ((labels.double() - 4.5) / 5).view(-1, 1, 1, 1)
    v = (-1, 1, 1, 1)
    ratio = torch.sqrt((s**2 + sigma_next**2) / (s**2 + sigma**2)).view(v)
    return mu + ratio * (x.double() - mu)


def test_ode_substeps_follow_the_exact_ode():
    """ode_steps integrates the teacher's ODE (to sigma > 0 and to 0); DDIM does not."""
    from diffspeed.distill.progressive import ddim_step, ode_steps

    teacher = toy_teacher()
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(8) % 10
    sigma = torch.tensor([40.0, 20.0, 5.0, 2.0, 1.0, 0.5, 3.0, 0.3], dtype=torch.float64)
    sigma_next = torch.tensor([8.0, 2.0, 1.0, 0.0, 0.2, 0.0, 0.5, 0.1], dtype=torch.float64)
    x = sigma.view(-1, 1, 1, 1) * torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64)
    cond = {"class_labels": labels}
    exact = exact_ode(x, sigma, sigma_next, labels)
    err = (ode_steps(teacher, x.float(), sigma, sigma_next, cond, 16).double() - exact).abs()
    ddim = (ddim_step(teacher, x.float(), sigma, sigma_next, cond).double() - exact).abs()
    assert err.max() < 0.015, err.max()
    assert ddim.max() > 20 * err.max()


def test_progressive_substep_target_lands_on_the_ode():
    """With ODE substeps the x~ target is the x0 whose one DDIM step hits the exact ODE."""
    teacher = toy_teacher()
    sig = get_sigmas(teacher, "trailing", 4)
    cfg = Progressive(4, 2, guidance=1.0, teacher_substeps=8)

    class ExactStudent(torch.nn.Module):
        def forward(self, x, sigma, class_labels):
            i = [int((sig[::2] - s).abs().argmin()) for s in sigma.tolist()]
            s_next = sig[[2 * j + 2 for j in i]]
            end = exact_ode(x, sigma, s_next, class_labels)
            r = (s_next / sigma).view(-1, 1, 1, 1)
            return ((end - r * x.double()) / (1 - r)).float()

    data = toy_data()
    assert fixed_loss(ProgressiveLoss(sig, cfg, substeps=8), ExactStudent(), teacher, data) < 1e-3
    assert fixed_loss(ProgressiveLoss(sig, cfg), ExactStudent(), teacher, data) > 1e-2
    with pytest.raises(ConfigError, match="teacher_substeps"):
        Progressive(4, 2, teacher_substeps=0)


def test_guidance_loss_decreases(tmp_path):
    teacher = toy_teacher()
    loss = GuidanceLoss(Guided(w_range=(1.0, 4.0), teacher_steps=4))
    check_decreases(loss, v_student(wcond=True), teacher, toy_data(), tmp_path)


def test_guided_progressive_stage_draws_w_per_sample(tmp_path):
    teacher = DiscreteVPDenoiser(WCondUNet(tiny_unet(1)), AC, "v_prediction").requires_grad_(False)
    cfg = Guided(teacher_steps=4).progressive()
    loss = ProgressiveLoss(get_sigmas(teacher, "trailing", 4), cfg)
    check_decreases(loss, v_student(2, wcond=True), teacher, toy_data(), tmp_path)


def test_kd_loss_decreases(tmp_path):
    teacher = toy_teacher()
    cfg = KD(student_steps=2, guidance=1.0, teacher_steps=8, num_pairs=128)
    data = teacher_dataset(teacher, cfg, tmp_path / "pairs.safetensors")
    assert set(data.extras) == {"noise"} and data.x0.shape == (128, 1, 8, 8)
    again = teacher_dataset(teacher, cfg, tmp_path / "pairs.safetensors")  # from the cache
    assert torch.equal(again.x0, data.x0)
    student = v_student()
    loss = KDLoss(get_sigmas(student, "trailing", 2), cfg)
    check_decreases(loss, student, None, data, tmp_path / "run")


def test_configs_round_trip_and_validate():
    import json
    from dataclasses import fields

    from diffspeed.distill import DISTILLERS, MethodConfig

    assert DISTILLERS.names() == ["cd", "ct", "guided", "kd", "lcm", "lcm-lora", "progressive"]
    for cfg in (Progressive(teacher_steps=32, final_steps=2), Guided(), KD(student_steps=2)):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for name in DISTILLERS:
        cls = DISTILLERS[name]
        cfg = cls()
        assert isinstance(cfg, MethodConfig) and cfg.method == name
        assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert len(fields(cls)) <= 12, name
    with pytest.raises(ConfigError, match="no field"):
        KD.from_dict({"student_steps": 2, "steps": 3})
    assert Progressive(teacher_steps=16).rounds() == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="power of two"):
        Progressive(teacher_steps=12)
    with pytest.raises(ConfigError, match="weighting"):
        Progressive(weighting="snr3")
    with pytest.raises(ConfigError):
        Guided(w_range=(1.0, 1.5), guidance=2.0)
    with pytest.raises(ConfigError, match="stage1_weighting"):
        Guided(stage1_weighting="next_snr")


def test_truncated_snr_weight_is_max_snr_one():
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    w = WEIGHTINGS["truncated_snr"](s, s / 2)
    assert torch.allclose(w, torch.tensor([100.0, 1.0, 1.0], dtype=torch.float64))
