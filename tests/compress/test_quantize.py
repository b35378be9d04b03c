"""quantize: off is exact, layers really are quantized, configs round-trip, bad input refused."""

import copy

import pytest
import torch
from torch import nn

import diffspeed
from diffspeed.compress import Quantize, calibrate, quantize
from diffspeed.compress.qat import QAT, STEQuant
from diffspeed.compress.quantize import Dequantize, module_bytes
from diffspeed.errors import ConfigError, DiffspeedError
from diffspeed.eval.metrics import psnr
from diffspeed.models.teacher import load_teacher
from diffspeed.solvers import seeded_noise

pytest.importorskip("torchao")


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


def _run(den, n=4, steps=4):
    noise = seeded_noise(list(range(n)), (1, 8, 8))
    cond = den.cond_spec.example_cond(n)
    return diffspeed.sample(den, noise, "ddim", steps, cond=cond)


def test_off_is_bit_identical(teacher):
    den = copy.deepcopy(teacher)
    before = {k: v.clone() for k, v in den.model.state_dict().items()}
    handle = quantize(den, Quantize())
    assert handle.layers == {}
    assert torch.equal(_run(den), _run(teacher))
    after = den.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_torchao_and_fake_layers_are_integer(teacher):
    from torchao.utils import TorchAOBaseTensor

    den = copy.deepcopy(teacher)
    handle = quantize(den, Quantize(format="int8_weight"))
    net = den.model
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert linears and convs
    for m in linears:  # torchao's tensor subclass holding int8 data
        assert isinstance(m.weight, TorchAOBaseTensor)
        assert "Int8" in type(m.weight).__name__
    for m in convs:  # torchao has no conv kernel: int8 codes, no float parameter left
        assert m.weight_codes.dtype == torch.int8
        assert "weight" not in m._parameters
    assert set(handle.layers.values()) == {"fake:int8", "torchao:Int8Tensor"}
    assert module_bytes(net) < module_bytes(teacher.model) / 3
    x = _run(den)
    assert torch.isfinite(x).all()
    assert psnr(x, _run(teacher)) > 25


def test_int4_codes_are_in_range(teacher):
    den = copy.deepcopy(teacher)
    quantize(den, Quantize(format="int4_weight", backend="fake", group_size=16))
    codes = [m.weight_codes for m in den.model.modules() if hasattr(m, "weight_codes")]
    assert codes and all(c.dtype == torch.int8 for c in codes)
    assert min(int(c.min()) for c in codes) >= -8 and max(int(c.max()) for c in codes) <= 7
    assert max(len(c.unique()) for c in codes) <= 16


def test_int4_torchao_on_cpu_uses_its_intx_tensor(teacher):
    den = copy.deepcopy(teacher)
    handle = quantize(den, Quantize(format="int4_weight", backend="torchao"))
    kinds = set(handle.layers.values())
    assert "torchao:IntxUnpackedToInt8Tensor" in kinds  # linear layers
    assert "fake:int4" in kinds  # convolutions


def test_dequantize_matches_the_qat_quantizer():
    w = torch.randn(8, 32, 3, 3)
    for bits, gs in ((8, None), (4, 16)):
        deq = Dequantize(w, bits, gs)
        assert torch.equal(deq(deq.encode(w)), STEQuant(bits, gs)(w))


def test_keep_leaves_layers_in_float(teacher):
    den = copy.deepcopy(teacher)
    handle = quantize(den, Quantize(format="int8_weight", backend="fake", keep=("conv_in",)))
    assert handle.layers["conv_in"] == "kept"
    assert torch.equal(den.model.conv_in.weight, teacher.model.conv_in.weight)


def test_configs_round_trip_json():
    q = Quantize(format="w8a8", act_groups=4, keep=("conv_in", "conv_out"), keep_sensitive=2)
    assert Quantize.from_dict(q.to_json()) == q
    assert Quantize.from_dict(q.to_dict()) == q
    assert QAT.from_dict(QAT(steps=3).to_dict()) == QAT(steps=3)


def test_unsupported_format_and_backend_name_the_supported_ones(teacher):
    with pytest.raises(ConfigError, match="int8_weight.*int4_weight"):
        Quantize(format="int3")
    with pytest.raises(ConfigError, match="auto, torchao, fake"):
        Quantize(format="int8_weight", backend="tensorrt")
    with pytest.raises(ConfigError, match="fake"):
        quantize(copy.deepcopy(teacher), Quantize(format="w8a8", backend="torchao"))
    with pytest.raises(ConfigError, match="calibration"):
        quantize(copy.deepcopy(teacher), Quantize(format="w8a8"))
    with pytest.raises(ConfigError, match="int8_weight, int4_weight"):
        QAT(format="w8a8")
    with pytest.raises(DiffspeedError, match="no field.*bits"):
        quantize(teacher, {"format": "int8_weight", "bits": 3})


def test_too_few_calibration_samples_say_how_many(teacher):
    with pytest.raises(ConfigError, match="at least 16"):
        Quantize(format="w8a8", calib_samples=4)
    cfg = Quantize(format="w8a8", calib_samples=16)
    with pytest.raises(ConfigError, match="at least 16 samples.*got 3"):
        calibrate(teacher, cfg, steps=2, seeds=[10**12, 10**12 + 1, 10**12 + 2])
