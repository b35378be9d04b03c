"""Bad input gets a clear DiffspeedError subclass that says what is wrong."""

import pytest
import torch

import diffspeed
from diffspeed.errors import (
    ConfigError,
    DiffspeedError,
    NonFiniteError,
    ShapeError,
    SigmaRangeError,
    WeightsError,
)
from diffspeed.models.io import load_state_into, load_weights, save_weights
from diffspeed.toy import ddpm_alphas_cumprod

AC = ddpm_alphas_cumprod()


def _den(fn=lambda x, t: torch.zeros_like(x)):
    return diffspeed.wrap(fn, "epsilon", AC)


def test_wrong_shapes_and_dtypes():
    den = _den()
    with pytest.raises(ShapeError, match="floating-point"):
        den(torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.ones(2))
    with pytest.raises(ShapeError, match=r"\[B\]"):
        den(torch.zeros(2, 1, 4, 4), torch.ones(3))
    with pytest.raises(ShapeError, match="match the input"):
        _den(lambda x, t: x[:, :, :2])(torch.zeros(2, 1, 4, 4), torch.ones(2))
    with pytest.raises(ShapeError, match="noise must be"):
        diffspeed.sample(den, torch.zeros(4), "ddim", 5)


def test_unknown_names():
    with pytest.raises(ConfigError, match="epsilon"):
        diffspeed.wrap(lambda x, t: x, "eps", AC)
    with pytest.raises(ConfigError, match="unknown solver 'nope'.*ddim"):
        diffspeed.sample(_den(), torch.randn(1, 1, 2, 2), "nope", 5)
    with pytest.raises(ConfigError, match="unknown schedule"):
        diffspeed.sample(_den(), torch.randn(1, 1, 2, 2), "ddim", 5, "nope")
    with pytest.raises(ConfigError, match="has no option"):
        diffspeed.sample(_den(), torch.randn(1, 1, 2, 2), "ddim", 5, bogus=1)


@pytest.mark.parametrize("steps", [0, -3, 2.5, None])
def test_bad_steps(steps):
    with pytest.raises(ConfigError, match="steps"):
        diffspeed.sample(_den(), torch.randn(1, 1, 2, 2), "ddim", steps)


def test_sigma_out_of_range_and_bad_schedule():
    den = _den()
    with pytest.raises(SigmaRangeError, match="outside the model's range"):
        den(torch.zeros(1, 1, 2, 2), torch.tensor([1e4]))
    with pytest.raises(SigmaRangeError, match="strictly decreasing"):
        diffspeed.sample(den, torch.randn(1, 1, 2, 2), schedule=torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(SigmaRangeError, match="outside"):
        diffspeed.sample(den, torch.randn(1, 1, 2, 2), schedule=torch.tensor([1e4, 1.0, 0.0]))


def test_non_finite_model_output():
    den = _den(lambda x, t: torch.full_like(x, float("nan")))
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        diffspeed.sample(den, torch.randn(1, 1, 2, 2), "ddim", 3)


def test_weight_files(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x80\x04this is a pickle, not safetensors")
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_weights(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")
    lin = torch.nn.Linear(3, 2)
    good = tmp_path / "lin.safetensors"
    save_weights(good, lin.state_dict(), {"in": 3})
    with pytest.raises(WeightsError, match="different config"):
        load_weights(good, {"in": 4})
    with pytest.raises(WeightsError, match="does not match the model"):
        load_state_into(torch.nn.Linear(4, 2), load_weights(good), str(good))


def test_all_errors_share_one_base():
    for cls in (ShapeError, ConfigError, SigmaRangeError, NonFiniteError, WeightsError):
        assert issubclass(cls, DiffspeedError)
