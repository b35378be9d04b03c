"""Cache configs: JSON round trips and refusal of bad input."""

import pytest
import torch
from cache_models import tiny_dit, tiny_unet_cond

import diffspeed
from diffspeed.cache import (
    CACHES,
    FORA,
    ConditionCache,
    DeepCache,
    FirstBlockCache,
    TaylorSeer,
    TeaCache,
    config_from_dict,
)
from diffspeed.errors import ConfigError, UnsupportedModelError

CONFIGS = [
    DeepCache(interval=4, branch=1, schedule="nonuniform", center=0.3, power=1.6),
    FORA(interval=2),
    FirstBlockCache(threshold=0.25),
    TeaCache(threshold=0.4, coefficients=(1.5, -0.2, 0.01)),
    TaylorSeer(interval=3, order=2),
    ConditionCache(),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.method)
def test_round_trip(cfg):
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(cfg.to_json()) == cfg
    assert cfg.to_dict()["method"] == cfg.method


def test_registry_names_every_method():
    assert set(CACHES.names()) >= {
        "deepcache",
        "fora",
        "first_block",
        "teacache",
        "taylorseer",
        "condition",
    }
    assert config_from_dict({"method": "deepcache", "interval": 3}) == DeepCache(interval=3)


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "deepcache", "interval": 0},
        {"method": "deepcache", "interval": -2},
        {"method": "deepcache", "interval": 2.5},
        {"method": "deepcache", "branch": -1},
        {"method": "deepcache", "branch": 1, "input_branch": True},
        {"method": "deepcache", "input_branch": "yes"},
        {"method": "deepcache", "schedule": "random"},
        {"method": "fora", "interval": 0},
        {"method": "taylorseer", "interval": 0},
        {"method": "taylorseer", "order": 9},
        {"method": "first_block", "threshold": -0.1},
        {"method": "teacache", "threshold": -1},
        {"method": "teacache", "threshold": float("nan")},
        {"method": "teacache", "coefficients": []},
        {"method": "nope"},
        {"method": "fora", "intervall": 3},
        {"interval": 3},
    ],
)
def test_bad_config_refused(bad):
    with pytest.raises(ConfigError):
        config_from_dict(bad)


def test_messages_say_what_to_do():
    with pytest.raises(ConfigError, match=">= 1"):
        DeepCache(interval=0)
    with pytest.raises(ConfigError, match=">= 0"):
        FirstBlockCache(threshold=-0.5)


def test_unsupported_model_lists_supported():
    with pytest.raises(UnsupportedModelError, match="UNet2DConditionModel"):
        diffspeed.apply_cache(tiny_dit(), DeepCache())
    with pytest.raises(UnsupportedModelError, match="DiTTransformer2DModel.*FluxTransformer"):
        diffspeed.apply_cache(tiny_unet_cond(), FORA())
    with pytest.raises(UnsupportedModelError, match="supports"):
        diffspeed.apply_cache(torch.nn.Linear(2, 2), FirstBlockCache())


def test_branch_out_of_range_and_compiled_model():
    unet = tiny_unet_cond()  # 2 down blocks: branch 0 or 1
    with pytest.raises(ConfigError, match="0..1"):
        diffspeed.apply_cache(unet, DeepCache(branch=2))
    assert "forward" not in unet.down_blocks[1].__dict__  # nothing left half-installed
    with pytest.raises(ConfigError, match="compile"):
        diffspeed.apply_cache(torch.compile(unet), DeepCache())
    with pytest.raises(ConfigError, match="cache config"):
        diffspeed.apply_cache(unet, "deepcache")
