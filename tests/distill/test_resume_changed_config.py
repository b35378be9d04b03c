"""Resuming a run whose settings changed is refused, naming the fields, unless forced."""

from __future__ import annotations

import pytest
from distill_toys import AC, tiny_unet, toy_data

import diffspeed
from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.distill import CheckpointError, Progressive, TrainConfig
from diffspeed.models.teacher import digits_cond_spec


def _teacher():
    den = DiscreteVPDenoiser(tiny_unet(), AC, "epsilon")
    den.cond_spec = digits_cond_spec(10)
    return den


def _distill(out, lr=1e-3, steps=2, **kw):
    cfg = TrainConfig(steps=steps, batch_size=8, lr=lr, checkpoint_every=0, log_every=0)
    method = Progressive(teacher_steps=4, final_steps=2, guidance=1.0)
    return diffspeed.distill(_teacher(), method, train=cfg, out=out, data=toy_data(32), **kw)


def test_finished_round_with_other_settings_is_refused_unless_forced(tmp_path):
    path = _distill(tmp_path)
    assert _distill(tmp_path) == path  # same settings: the finished round is reused
    with pytest.raises(CheckpointError, match=r"train\.lr: 0\.001 -> 0\.002.*--force"):
        _distill(tmp_path, lr=2e-3)
    with pytest.raises(CheckpointError, match=r"train\.steps: 2 -> 3"):
        _distill(tmp_path, steps=3)
    assert _distill(tmp_path, lr=2e-3, force=True) == path  # kept as it is


def test_logistics_changes_are_not_a_different_run(tmp_path):
    _distill(tmp_path)
    cfg = TrainConfig(steps=2, batch_size=8, lr=1e-3, checkpoint_every=1, log_every=1)
    method = Progressive(teacher_steps=4, final_steps=2, guidance=1.0)
    diffspeed.distill(_teacher(), method, train=cfg, out=tmp_path, data=toy_data(32))
