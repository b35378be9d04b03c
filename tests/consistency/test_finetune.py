"""The 'second model' for LCM-LoRA: styled digits and a fine-tune in the teacher's format."""

import pytest
import torch

from diffspeed.distill.finetune import FineTune, finetune_style, finetune_teacher
from diffspeed.errors import ConfigError, WeightsError
from diffspeed.models.digits import load_digits
from diffspeed.models.styles import shift_columns, style_data, training_data
from diffspeed.models.teacher import load_teacher


def test_shift_columns_fills_with_background():
    row = torch.tensor([[0.5, 0.25, -1.0]])
    assert shift_columns(row, 1).tolist() == [[-1.0, 0.5, 0.25]]
    assert shift_columns(row, -1).tolist() == [[0.25, -1.0, -1.0]]
    assert shift_columns(row, 0) is row


def test_italic_slants_top_right_and_bottom_left():
    x, y = style_data("italic")
    plain, labels = load_digits("all")
    assert x.shape == plain.shape and torch.equal(y, labels)
    assert torch.equal(x[:, :, 2:6], plain[:, :, 2:6])  # middle rows unchanged
    assert torch.equal(x[:, :, :2, 1:], plain[:, :, :2, :-1])  # top rows one pixel right
    assert torch.equal(x[:, :, 6:, :-1], plain[:, :, 6:, 1:])  # bottom rows one pixel left
    assert x.min() >= -1 and x.max() <= 1


def test_training_data_joins_sets():
    plain, labels = load_digits("all")
    assert torch.equal(training_data("digits")[0], plain)
    x, y = training_data("digits,thick")
    n = len(plain)
    assert x.shape == (2 * n, *plain.shape[1:]) and torch.equal(y, torch.cat([labels, labels]))
    assert torch.equal(x[:n], plain) and torch.equal(x[n:], style_data("thick")[0])
    with pytest.raises(ConfigError, match="digits"):
        training_data("digits,bold")


def test_unknown_style_and_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="italic"):
        style_data("bold")
    with pytest.raises(ConfigError):
        FineTune(steps=0)
    with pytest.raises(ConfigError, match=".safetensors"):
        finetune_teacher("model.pt", FineTune(steps=1))


def test_finetune_writes_a_loadable_teacher_that_moved(tmp_path, monkeypatch):
    import diffspeed.distill.students as students

    monkeypatch.setattr(students, "STUDENTS_DIR", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    cfg = FineTune(steps=3, batch_size=8)
    out = finetune_teacher(tmp_path / "italic.safetensors", cfg, ship="second")
    tuned, base = load_teacher(out), load_teacher()
    shipped = load_teacher(tmp_path / "assets" / "second.safetensors")  # int8 copy
    for a, b in zip(tuned.model.parameters(), shipped.model.parameters(), strict=True):
        assert (a - b).abs().max() <= 0.02 * a.abs().max() + 1e-6
    diff = [
        (a - b).abs().max()
        for a, b in zip(tuned.model.parameters(), base.model.parameters(), strict=True)
    ]
    assert max(diff) > 0
    assert (tmp_path / "italic.run").is_dir()  # the run directory keeps checkpoints
    assert finetune_style(out) == finetune_style(tmp_path / "assets" / "second.safetensors")
    assert finetune_style(out) == "italic"
    with pytest.raises(WeightsError, match="not a style fine-tune"):
        finetune_style(tmp_path / "plain.safetensors")
