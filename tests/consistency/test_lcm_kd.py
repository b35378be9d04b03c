"""LCM-LoRA fitted to a full-weight LCM (``lcm_kd``), and LCM students started from a student."""

import copy

import pytest
import torch

import diffspeed
from diffspeed.distill import LCMLoRA, TrainConfig
from diffspeed.distill.consistency import (
    Boundary,
    ConsistencyDenoiser,
    consistency_recipe,
    consistency_student,
)
from diffspeed.distill.lcm_kd import LCMKD, LCMKDLoss
from diffspeed.distill.lora import LoRA, load_lora, read_lora
from diffspeed.distill.students import make_student, save_student
from diffspeed.errors import ConfigError, WeightsError

SIGMAS = (0.5, 3.0, 20.0, 150.0)


def _source(tmp_path, teacher):
    """A w-conditioned consistency 'LCM' whose network is the teacher plus a rank-1 update of
    every LoRA target layer (a LoRA can represent it exactly), saved like a trained LCM."""
    fused = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, m in fused.model.named_modules():
            if name.endswith(LoRA().targets) and hasattr(m, "weight"):
                w = m.weight
                u = torch.randn(w.shape[0], 1, generator=g)
                v = torch.randn(1, w[0].numel(), generator=g)
                w.add_((0.05 * u @ v / v.norm()).view(w.shape))
    student = make_student(fused, "eps", w_conditioned=True)
    boundary = Boundary()
    den = ConsistencyDenoiser(student, boundary)
    path = tmp_path / "lcm.safetensors"
    recipe = consistency_recipe(den, guidance=1.25, w_range=(1.0, 2.0))
    info = {"boundary": boundary.to_dict(), "strength": 1.0, "config": {"k": 20}}
    save_student(path, student, recipe, **info)
    return path, den.requires_grad_(False).eval()


def _gap(den, source, labels):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(len(labels), 1, 8, 8, generator=g)
    w = torch.full((len(labels),), 1.25)
    errs = []
    with torch.no_grad():
        for s in SIGMAS:
            xs = x * (1 + s**2) ** 0.5
            a = den(xs, s, class_labels=labels)
            b = source(xs, s, class_labels=labels, guidance_scale=w)
            errs.append((a - b).pow(2).mean())
    return float(torch.stack(errs).mean().sqrt())


def test_lora_fitted_to_an_lcm_approaches_it(tmp_path, tiny_teacher):
    path, source = _source(tmp_path, tiny_teacher)
    loss = LCMKDLoss(LCMKD(str(path), guidance=1.25, metric="l2"))
    # the grid, strength and boundary come from the source
    assert (loss.k, loss.source.strength, loss.source.boundary) == (20, 1.0, Boundary())
    labels = torch.arange(16) % 10
    x0 = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    y = torch.arange(64) % 10
    # an untrained adapter leaves the teacher as it is: the gap to close
    before = _gap(ConsistencyDenoiser(tiny_teacher, Boundary()), source, labels)
    out = diffspeed.distill(
        tiny_teacher,
        LCMLoRA(guidance=1.25, metric="l2", rank=4, alpha=4, from_lcm=str(path)),
        train=TrainConfig(steps=60, batch_size=32, lr=1e-2, warmup=5, ema_decay=0.0),
        out=tmp_path / "run",
        data=(x0, {"class_labels": y}),
    )
    assert out == tmp_path / "run" / "lora" and read_lora(out)[2]["strength"] == 1.0
    after = _gap(load_lora(out, tiny_teacher), source, labels)
    assert after < 0.75 * before, (before, after)  # 2.93 -> 1.74 when written


def test_lcm_kd_refuses_a_non_consistency_source_and_another_guidance(tmp_path, tiny_teacher):
    plain = tmp_path / "plain.safetensors"
    student = make_student(tiny_teacher, "eps")
    save_student(plain, student, consistency_recipe(ConsistencyDenoiser(student)))
    with pytest.raises(WeightsError, match="not a consistency student"):
        LCMKDLoss(LCMKD(str(plain)))
    baked = tmp_path / "baked.safetensors"
    info = {"boundary": Boundary().to_dict(), "strength": 1.0}
    save_student(baked, student, consistency_recipe(ConsistencyDenoiser(student)), **info)
    with pytest.raises(ConfigError, match="bakes in guidance 1.0"):
        LCMKDLoss(LCMKD(str(baked), guidance=1.25))
    with pytest.raises(ConfigError):
        LCMKD(str(baked), metric="l3")


def test_consistency_student_starts_from_another_student(tiny_teacher):
    v_student = make_student(tiny_teacher, "v", w_conditioned=True)
    with torch.no_grad():
        for p in v_student.model.parameters():
            p.add_(0.01)
    den = consistency_student(tiny_teacher, w_conditioned=True, init=v_student)
    assert den.inner.prediction == "v_prediction"
    assert den.inner.model is not v_student.model
    for a, b in zip(den.inner.model.parameters(), v_student.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
        assert a.requires_grad
    x = torch.randn(2, 1, 8, 8)
    cond = {"class_labels": torch.tensor([1, 2]), "guidance_scale": torch.tensor([1.0, 2.0])}
    with torch.no_grad():
        torch.testing.assert_close(den.inner(x, 5.0, **cond), v_student(x, 5.0, **cond))
