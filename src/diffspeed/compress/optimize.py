"""``optimize(model, Optimize(...))``: torch.compile, half precision, channels-last, attention.

What production users switch on first, as one config. Applied **in place** to the network
(a denoiser's ``.model``, a pipeline's ``unet`` / ``transformer``, or the module itself):

* ``dtype``: ``float16`` / ``bfloat16`` weights (the denoiser casts its input to the model's
  dtype and keeps the solver state in float32, so every solver works unchanged);
* ``memory_format="channels_last"``: NHWC weights for convolution-heavy UNets;
* ``attention``: diffusers attention processors, ``"sdpa"`` (``AttnProcessor2_0``, fused
  ``scaled_dot_product_attention``) or ``"classic"`` (``AttnProcessor``: matmul, softmax,
  matmul), or one SDPA kernel forced for every call (``"math"``, ``"flash"``,
  ``"efficient"``, ``"cudnn"``) through ``torch.nn.attention.sdpa_kernel``;
* ``compile``: ``nn.Module.compile`` in place (the module object stays the same, so caches,
  quantization hooks and step listeners found through it keep working). Install caches
  *before* compiling: their decisions run in ``torch.compiler.disable`` functions (graph
  breaks), so one compiled graph serves every step (no recompilation per step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from diffspeed.compress.quantize import resolve_network
from diffspeed.configs import JsonConfig
from diffspeed.errors import ConfigError

#: ``compile`` values: off, or a ``torch.compile`` mode.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: ``dtype`` values.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: ``memory_format`` values.
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
#: ``attention`` values: keep, a diffusers processor, or a forced SDPA kernel.
ATTENTION = ("default", "sdpa", "classic", "math", "flash", "efficient", "cudnn")
#: Forced SDPA kernels and the device types they run on.
SDPA_KERNELS: dict[str, tuple[str, ...]] = {
    "math": ("cpu", "cuda"),
    "flash": ("cuda",),
    "efficient": ("cuda",),
    "cudnn": ("cuda",),
}


@dataclasses.dataclass(frozen=True)
class Optimize(JsonConfig):
    """An optimization recipe (a small frozen dataclass that round-trips JSON).

    Attributes:
        compile: one of :data:`COMPILE_MODES` (``"none"``: no compilation).
        backend: the ``torch.compile`` backend (``"inductor"``; ``"eager"`` / ``"aot_eager"``
            to debug).
        fullgraph: refuse graph breaks (caches need them: leave False with a cache).
        dtype: one of :data:`DTYPES`.
        memory_format: one of :data:`MEMORY_FORMATS`.
        attention: one of :data:`ATTENTION`.
    """

    config_name: ClassVar[str] = "optimize config"

    compile: str = "none"
    backend: str = "inductor"
    fullgraph: bool = False
    dtype: str = "float32"
    memory_format: str = "contiguous"
    attention: str = "default"

    def __post_init__(self) -> None:
        checks = (
            ("compile", self.compile, COMPILE_MODES),
            ("dtype", self.dtype, tuple(DTYPES)),
            ("memory_format", self.memory_format, tuple(MEMORY_FORMATS)),
            ("attention", self.attention, ATTENTION),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; supported: {', '.join(allowed)}")

    @property
    def is_off(self) -> bool:
        """Whether this config changes nothing."""
        return self == Optimize(backend=self.backend, fullgraph=self.fullgraph)


def _device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


def _set_processors(net: nn.Module, attention: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    layers = [m for m in net.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]
    if not layers:
        raise ConfigError(
            f"attention={attention!r} sets diffusers attention processors; "
            f"{type(net).__name__} has no diffusers attention layer (use attention='default')"
        )
    for m in layers:
        m.set_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def _force_kernel(net: nn.Module, kernel: str, device: torch.device) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type not in SDPA_KERNELS[kernel]:
        here = [k for k, d in SDPA_KERNELS.items() if device.type in d]
        raise ConfigError(
            f"SDPA kernel {kernel!r} does not run on {device.type}; supported there: "
            f"{', '.join(here)} (or attention='sdpa' to let torch choose)"
        )
    backend = {
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[kernel]
    forward = net.forward

    def forced(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backend):
            return forward(*args, **kwargs)

    net.forward = forced


def optimize(model: Any, config: Optimize | dict[str, Any]) -> Any:
    """Apply ``config`` to ``model``'s network in place; return ``model``.

    Args:
        model: an ``nn.Module``, a diffspeed denoiser (its network is changed; the denoiser is
            returned and samples with every solver) or a diffusers pipeline (its ``unet`` /
            ``transformer``).
        config: an :class:`Optimize` (or its dict).

    Returns:
        ``model`` itself, with its network cast, re-laid-out, given attention processors and
        compiled (``nn.Module.compile``: ``network.forward`` calls go through the compiled
        graph). Calling ``optimize`` with an all-off config changes nothing.

    Raises:
        ConfigError: an unknown value (the message lists the supported ones), an SDPA kernel
            the model's device cannot run.
    """
    if isinstance(config, dict):
        config = Optimize.from_dict(config)
    if not isinstance(config, Optimize):
        raise ConfigError(
            f"optimize needs an Optimize config (e.g. Optimize(compile='default')), got "
            f"{type(config).__name__}"
        )
    net = resolve_network(model)
    device = _device_of(net)
    if config.dtype != "float32":
        net.to(dtype=DTYPES[config.dtype])
    if config.memory_format != "contiguous":
        net.to(memory_format=MEMORY_FORMATS[config.memory_format])
    if config.attention in ("sdpa", "classic"):
        _set_processors(net, config.attention)
    elif config.attention in SDPA_KERNELS:
        _force_kernel(net, config.attention, device)
    if config.compile != "none":
        mode = None if config.compile == "default" else config.compile
        net.compile(mode=mode, backend=config.backend, fullgraph=config.fullgraph)
    return model
