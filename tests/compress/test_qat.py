"""QAT runs through the shared training loop and leaves the teacher alone."""

import copy

import torch

from diffspeed.compress import quantize
from diffspeed.compress.qat import QAT, STEQuant, load_qat_weights, qat, qat_config_of
from diffspeed.models.digits import load_digits
from diffspeed.models.teacher import label_cond, load_teacher


def test_qat_trains_through_the_quantizer_and_saves(tmp_path):
    teacher = load_teacher()
    before = copy.deepcopy(teacher.model.state_dict())
    x0, y = load_digits("train")
    cfg = QAT(steps=2, batch_size=8, lr=1e-3, keep=("conv_in",))
    student = qat(teacher, cfg, x0[:32], label_cond(y[:32]), tmp_path)
    assert (tmp_path / "student.safetensors").is_file() and (tmp_path / "train_log.csv").is_file()
    assert qat_config_of(tmp_path) == cfg
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # teacher untouched
    s = student.model
    assert not any(isinstance(m, STEQuant) for m in s.modules())  # fake-quant removed
    assert not torch.equal(s.conv_out.weight, teacher.model.conv_out.weight)  # trained
    again = load_qat_weights(copy.deepcopy(teacher), tmp_path)
    assert torch.equal(again.model.conv_out.weight, s.conv_out.weight)
    handle = quantize(student, cfg.quantize_config)
    assert handle.layers["conv_in"] == "kept"
