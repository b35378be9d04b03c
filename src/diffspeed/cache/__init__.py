"""Feature caching as removable hooks: DeepCache, FORA, first-block cache, TeaCache,
TaylorSeer and condition caching, one entry point :func:`apply_cache`.

    handle = diffspeed.apply_cache(unet, diffspeed.cache.DeepCache(interval=3))
    x = diffspeed.sample(denoiser, noise, "ddim", 50, cond=cond)   # hands over the steps
    handle.remove()                                                  # model is bit-identical

See :mod:`diffspeed.cache.hooks` for the hook contract and :func:`calibrate` to pick the
interval / threshold for a fidelity target.
"""

from diffspeed.cache.adapters import ADAPTERS, ModelAdapter, supported_models
from diffspeed.cache.calibrate import Calibration, calibrate
from diffspeed.cache.condition import ConditionCache
from diffspeed.cache.deepcache import DeepCache
from diffspeed.cache.first_block import FirstBlockCache
from diffspeed.cache.fora import FORA
from diffspeed.cache.hooks import (
    CACHES,
    CacheConfig,
    CacheHandle,
    apply_cache,
    config_from_dict,
    register_cache,
)
from diffspeed.cache.taylorseer import TaylorSeer
from diffspeed.cache.teacache import TeaCache, fit_coefficients

__all__ = [
    "ADAPTERS",
    "CACHES",
    "FORA",
    "CacheConfig",
    "CacheHandle",
    "Calibration",
    "ConditionCache",
    "DeepCache",
    "FirstBlockCache",
    "ModelAdapter",
    "TaylorSeer",
    "TeaCache",
    "apply_cache",
    "calibrate",
    "config_from_dict",
    "fit_coefficients",
    "register_cache",
    "supported_models",
]
