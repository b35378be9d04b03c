"""``quantize(model, Quantize(...))``: int8 / int4 weights and int8 activations, in place.

Formats (:data:`FORMATS`):

* ``"none"``: nothing changes (the model stays bit-identical);
* ``"int8_weight"``: int8 weights (per output channel, symmetric), activations in float;
* ``"int8_dynamic"``: int8 weights and int8 activations whose scale is computed from each input
  at run time (per row for linear layers, per tensor for convolutions);
* ``"int4_weight"``: int4 weights in groups of ``group_size`` input channels, symmetric;
* ``"w8a8"``: int8 weights and *static* int8 activations whose ranges come from a
  :class:`~diffspeed.compress.calibrate.Calibration` (the sampler's own trajectories, optionally
  one range per group of noise levels, as in TFMQ-DM / PTQD), so nothing is measured at run time.

Backends (:data:`BACKENDS`): ``"torchao"`` runs a format with torchao's ``quantize_`` and its
tensor subclasses (``Int8Tensor``, ``Int4Tensor`` on CUDA, ``IntxUnpackedToInt8Tensor`` for int4
on CPU); torchao only quantizes linear layers, so convolutions get fake-quant. ``"fake"``
stores the integer codes (``int8`` tensors) and their scales and computes with the dequantized
values (the quality is the format's; the speed is not). ``"auto"`` is torchao where it runs the
format on the model's device and fake-quant elsewhere. ``w8a8`` is fake-quant only: torchao's
static-activation config takes one activation scale per layer, not one per noise level.

The step context (the noise level of each evaluation) reaches the per-group activation ranges
the way it reaches caches: the returned handle is a step listener that ``diffspeed.sample``
calls before every network evaluation (see :mod:`diffspeed.core.steps`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from diffspeed.configs import JsonConfig
from diffspeed.core.contract import network_of
from diffspeed.core.steps import StepContext, attach_listener, detach_listener
from diffspeed.errors import ConfigError, UnsupportedModelError

if TYPE_CHECKING:
    from diffspeed.compress.calibrate import Calibration

log = logging.getLogger("diffspeed")

#: Quantization formats (see the module docstring).
FORMATS = ("none", "int8_weight", "int8_dynamic", "int4_weight", "w8a8")
#: Backends: torchao kernels, fake-quant (integer codes, float compute), or torchao where it runs.
BACKENDS = ("auto", "torchao", "fake")
#: Where activation ranges of ``w8a8`` come from: the sampler's trajectories or the forward
#: process (``x0 + sigma * noise`` on data, the naive baseline).
CALIBRATIONS = ("trajectory", "forward")
#: Fewest calibration samples (sampling runs) a ``w8a8`` calibration accepts.
MIN_CALIBRATION_SAMPLES = 16

QUANTIZABLE = (nn.Linear, nn.Conv2d)


@dataclasses.dataclass(frozen=True)
class Quantize(JsonConfig):
    """A quantization recipe (a small frozen dataclass that round-trips JSON).

    Attributes:
        format: one of :data:`FORMATS` (``"none"`` leaves the model untouched).
        backend: one of :data:`BACKENDS`.
        group_size: input channels per int4 weight scale (``int4_weight``).
        calibration: ``w8a8`` activation ranges from ``"trajectory"`` (the sampler's own runs
            on calibration seeds) or ``"forward"`` (naive: ``x0 + sigma * noise`` on data).
        act_groups: ``w8a8``: activation ranges per group of noise levels (1 = one range).
        calib_samples: calibration samples (seeds); at least :data:`MIN_CALIBRATION_SAMPLES`.
        keep: names (or name prefixes) of layers kept in full precision.
        keep_sensitive: also keep this many layers in full precision, the most sensitive ones
            by a measured scan (:func:`diffspeed.compress.calibrate.sensitivity`).
    """

    config_name: ClassVar[str] = "quantize config"

    format: str = "none"
    backend: str = "auto"
    group_size: int = 32
    calibration: str = "trajectory"
    act_groups: int = 1
    calib_samples: int = 64
    keep: tuple[str, ...] = ()
    keep_sensitive: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.format not in FORMATS:
            raise ConfigError(
                f"unknown quantization format {self.format!r}; supported: {', '.join(FORMATS)}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown quantization backend {self.backend!r}; supported: {', '.join(BACKENDS)}"
            )
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(
                f"unknown calibration {self.calibration!r}; supported: {', '.join(CALIBRATIONS)}"
            )
        for name in ("group_size", "act_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.format == "w8a8" and self.calib_samples < MIN_CALIBRATION_SAMPLES:
            raise ConfigError(
                f"w8a8 calibration needs at least {MIN_CALIBRATION_SAMPLES} samples, "
                f"got calib_samples={self.calib_samples}"
            )
        if self.keep_sensitive < 0:
            raise ConfigError(f"keep_sensitive must be >= 0, got {self.keep_sensitive}")

    @property
    def weight_bits(self) -> int:
        """Bits per weight (32 for ``none``)."""
        return {"none": 32, "int4_weight": 4}.get(self.format, 8)


# --- integer codes ---------------------------------------------------------------------------
def weight_scale(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Symmetric scale of ``w [out, in, ...]``: per output channel, or per group of
    ``group_size`` input channels (the trailing kernel dims stay in the group) when given.

    Shape ``[out, 1]`` or ``[out, n_groups, 1]`` over the weight flattened to ``[out, -1]``."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().float().reshape(w.shape[0], -1)
    if group_size is None:
        return flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / qmax
    g = _grouped(flat, w, group_size)
    return g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax


def _grouped(flat: torch.Tensor, w: torch.Tensor, group_size: int) -> torch.Tensor:
    per_in = flat.shape[1] // w.shape[1]  # kernel elements per input channel
    cin = w.shape[1]
    gs = group_size if cin % group_size == 0 else cin
    return flat.reshape(w.shape[0], cin // gs, gs * per_in)


class Dequantize(nn.Module):
    """The integer weight of a fake-quant layer: ``weight = codes * scale``.

    Holds the scale (a buffer, so it follows ``.to(device / dtype)``); :meth:`encode` turns a
    float weight into ``int8`` codes (round to nearest, clamp to the signed ``bits`` range).
    """

    def __init__(self, w: torch.Tensor, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.bits, self.group_size, self.shape = bits, group_size, tuple(w.shape)
        self.register_buffer("scale", weight_scale(w, bits, group_size).to(w.dtype))

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(self.shape[0], -1)
        if self.group_size is None:
            return flat
        return flat.reshape(self.shape[0], self.scale.shape[1], -1)

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Float weight -> ``int8`` codes of the same shape."""
        q = 2 ** (self.bits - 1)
        codes = torch.round(self._view(w.detach().float()) / self.scale.float()).clamp(-q, q - 1)
        return codes.to(torch.int8).reshape(self.shape)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``int8`` codes -> the dequantized weight (in the scale's dtype)."""
        return (self._view(codes).to(self.scale.dtype) * self.scale).reshape(self.shape)


def fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Affine (asymmetric) fake quantization of ``x`` to ``bits`` over ``[lo, hi]``."""
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return ((q - zero) * scale).to(x.dtype)


def dynamic_fake_quant(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Symmetric int8 fake quantization with the scale taken from ``x`` itself (per row of
    the last dimension for linear layers, per tensor otherwise)."""
    amax = x.detach().abs().amax(-1, keepdim=True) if per_row else x.detach().abs().amax()
    scale = amax.float().clamp_min(1e-12) / 127
    return (torch.clamp(torch.round(x / scale), -128, 127) * scale).to(x.dtype)


# --- the handle ------------------------------------------------------------------------------
class QuantHandle:
    """A quantized model and what was done to it; a step listener for per-group ranges.

    Attributes:
        model: the quantized module (the same object that was passed, changed in place).
        config: the :class:`Quantize` recipe.
        layers: ``{layer name: how}`` with ``how`` one of ``"torchao:<tensor class>"``,
            ``"fake:int8"``, ``"fake:int4"``, ``"fake:w8a8"``, ``"fake:int8_dynamic"`` or
            ``"kept"`` (full precision).
        calibration: the calibration the static activation ranges came from (``w8a8``).
    """

    def __init__(self, model: nn.Module, config: Quantize, calibration: Calibration | None):
        self.model, self.config, self.calibration = model, config, calibration
        self.layers: dict[str, str] = {}
        self._hooks: list[Any] = []
        self.group: int | None = None
        self._edges = (
            torch.tensor(calibration.edges, dtype=torch.float64)
            if calibration is not None
            else torch.zeros(0, dtype=torch.float64)
        )
        self.attached = False

    # step listener (diffspeed.sample)
    def start_run(self, total_steps: int, expected_evals: int = 0) -> None:
        """A sampling run starts: no group until the first step context."""
        self.group = None

    def set_step(self, ctx: StepContext) -> None:
        """Select the activation ranges of the group ``ctx.sigma`` falls in."""
        self.group = int(torch.searchsorted(self._edges, torch.tensor(ctx.sigma).double()))

    def end_run(self) -> None:
        """Back to the ranges over all noise levels (calls outside a sampler use those)."""
        self.group = None

    def close(self) -> None:
        """Stop listening to samplers (the weights stay quantized)."""
        if self.attached:
            detach_listener(self.model, self)
            self.attached = False

    @property
    def size_bytes(self) -> int:
        """Bytes of the model's weights as stored (codes, scales, tensor subclasses' data)."""
        return module_bytes(self.model)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for how in self.layers.values():
            kinds[how] = kinds.get(how, 0) + 1
        return f"QuantHandle({self.config.format}, {kinds})"


def _tensor_bytes(t: torch.Tensor) -> int:
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer, counting a quantized tensor subclass by
    its inner tensors (int8/int4 data and scales) and fake-quant layers by their codes."""
    seen: set[int] = set()
    total = 0
    persistent = set(module.state_dict())
    tensors = list(module.named_parameters()) + [
        (k, b) for k, b in module.named_buffers() if k in persistent
    ]
    for _, t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total


def quantizable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of the linear and 2-d convolution layers of ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, QUANTIZABLE):
            yield name, mod


def kept(name: str, keep: tuple[str, ...]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep)


def resolve_network(model: Any) -> nn.Module:
    """The ``nn.Module`` to quantize: a denoiser's network, a pipeline's ``unet`` /
    ``transformer``, or ``model`` itself."""
    if hasattr(model, "_orig_mod"):
        raise ConfigError("quantize got a torch.compile'd module; quantize first, then compile")
    for attr in ("unet", "transformer"):
        net = getattr(model, attr, None)
        if hasattr(model, "scheduler") and isinstance(net, nn.Module):
            return net
    inner = network_of(model)
    if isinstance(inner, nn.Module) and inner is not model:
        return inner
    if isinstance(model, nn.Module):
        return model
    raise UnsupportedModelError(
        f"quantize needs a torch module, a diffspeed denoiser or a diffusers pipeline, got "
        f"{type(model).__name__}"
    )


def _dtype_of(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


#: format -> device types where torchao runs it (linear layers).
TORCHAO_DEVICES: dict[str, tuple[str, ...]] = {
    "int8_weight": ("cpu", "cuda"),
    "int8_dynamic": ("cpu", "cuda"),
    "int4_weight": ("cpu", "cuda"),
}


def _torchao_config(fmt: str, device: torch.device, group_size: int) -> Any:
    import torchao.quantization as tq

    if fmt == "int8_weight":
        return tq.Int8WeightOnlyConfig()
    if fmt == "int8_dynamic":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if device.type == "cuda":
        # the tinygemm kernel (bfloat16 only); the default "plain" packing needs mslk
        return tq.Int4WeightOnlyConfig(
            group_size=group_size, int4_packing_format="tile_packed_to_4d"
        )
    # torchao 0.18 has no CPU kernel for Int4WeightOnlyConfig (it needs mslk or CUDA); int4
    # codes stored unpacked in int8 run through its intx path (dequantize, then matmul)
    from torchao.quantization.granularity import PerGroup

    return tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def _check_backend(config: Quantize, device: torch.device) -> str:
    """The backend linear layers get: ``"torchao"`` or ``"fake"``."""
    if config.backend == "fake":
        return "fake"
    runs = device.type in TORCHAO_DEVICES.get(config.format, ())
    if config.backend == "torchao" and not runs:
        where = [f for f, d in TORCHAO_DEVICES.items() if device.type in d]
        raise ConfigError(
            f"torchao cannot run format {config.format!r} on {device.type}; torchao formats "
            f"on {device.type}: {', '.join(where) or 'none'}; use backend='fake' (fake-quant "
            "measures the quality) or backend='auto'"
        )
    if not runs:
        return "fake"
    try:
        import torchao  # noqa: F401
    except ImportError:
        if config.backend == "torchao":
            raise ConfigError(
                "backend='torchao' needs torchao: pip install 'diffspeed[compress]'"
            ) from None
        return "fake"
    return "torchao"


def _fake_weight(mod: nn.Module, bits: int, group_size: int | None) -> Any:
    """Replace ``mod.weight`` by ``int8`` codes (buffer ``weight_codes``) and a
    :class:`Dequantize` (``weight_quant``); a pre-hook rebuilds ``mod.weight`` from them at
    every call (so it follows ``.to()``). Returns the hook handle."""
    deq = Dequantize(mod.weight, bits, group_size)
    codes = deq.encode(mod.weight)
    del mod.weight
    mod.register_buffer("weight_codes", codes)
    mod.weight_quant = deq
    mod.weight = deq(codes)
    return mod.register_forward_pre_hook(_dequantize_hook)


def _dequantize_hook(module: nn.Module, args: tuple) -> None:
    module.weight = module.weight_quant(module.weight_codes)


def _act_hook(
    handle: QuantHandle, ranges: torch.Tensor, union: torch.Tensor
) -> Callable[[nn.Module, tuple], tuple]:
    """A forward pre-hook fake-quantizing the input to the current group's range."""

    @torch.compiler.disable
    def pick() -> torch.Tensor:
        g = handle.group
        return union if g is None else ranges[min(g, ranges.shape[0] - 1)]

    def hook(module: nn.Module, args: tuple) -> tuple:
        lo_hi = pick().to(args[0].device)
        return (fake_quant(args[0], lo_hi[0], lo_hi[1]), *args[1:])

    return hook


def _dynamic_hook(module: nn.Module, args: tuple) -> tuple:
    return (dynamic_fake_quant(args[0], isinstance(module, nn.Linear)), *args[1:])


def quantize(
    model: Any,
    config: Quantize | dict[str, Any],
    *,
    calibration: Calibration | None = None,
) -> QuantHandle:
    """Quantize ``model``'s linear and convolution layers **in place**; return a handle.

    Args:
        model: an ``nn.Module`` (e.g. ``pipe.unet``), a diffspeed denoiser (its network is
            quantized, the denoiser keeps working with every solver, cache and guidance) or a
            diffusers pipeline (its ``unet`` / ``transformer``).
        config: a :class:`Quantize` (or its dict).
        calibration: activation ranges for ``w8a8`` (from
            :func:`diffspeed.compress.calibrate.calibrate`, or
            :func:`~diffspeed.compress.calibrate.calibrate_forward` for the naive baseline).

    Returns:
        A :class:`QuantHandle`: ``handle.model`` is the same module, quantized (the weights are
        replaced: deep-copy the model first to keep the original); ``handle.layers`` says what
        each layer became. For ``w8a8`` with several groups the handle listens to samplers.

    Raises:
        ConfigError: an unknown format or backend, a format the backend cannot run on the
            model's device (the message names the supported ones), or ``w8a8`` without a
            calibration / with one of too few samples.
    """
    if isinstance(config, dict):
        config = Quantize.from_dict(config)
    if not isinstance(config, Quantize):
        raise ConfigError(
            f"quantize needs a Quantize config (e.g. Quantize(format='int8_weight')), got "
            f"{type(config).__name__}"
        )
    net = resolve_network(model)
    handle = QuantHandle(net, config, calibration)
    if config.format == "none":
        return handle
    device = _device_of(net)
    if config.format == "w8a8":
        if config.backend == "torchao":
            raise ConfigError(
                "format 'w8a8' (static per-noise-level activation ranges) runs as fake-quant "
                "only; use backend='fake' or 'auto', or format 'int8_dynamic' for torchao's "
                "int8 activation kernels"
            )
        if calibration is None:
            raise ConfigError(
                "format 'w8a8' needs calibration=diffspeed.compress.calibrate(denoiser, config)"
            )
        calibration.check(MIN_CALIBRATION_SAMPLES)
    backend = _check_backend(config, device)
    keep = tuple(config.keep) + tuple(calibration.keep if calibration is not None else ())
    targets = []
    for name, mod in quantizable_layers(net):
        if kept(name, keep):
            handle.layers[name] = "kept"
        else:
            targets.append((name, mod))
    if backend == "torchao":
        if (
            config.format == "int4_weight"
            and device.type == "cuda"
            and _dtype_of(net) != torch.bfloat16
        ):
            raise ConfigError(
                "torchao's int4 CUDA kernel needs bfloat16 weights; cast first with "
                "optimize(model, Optimize(dtype='bfloat16')), or use backend='fake'"
            )
        _apply_torchao(net, config, device, targets, handle)
    for name, mod in targets:
        if name not in handle.layers:
            fake_layer(handle, name, mod, calibration)
    if calibration is not None and len(calibration.edges) > 0:
        attach_listener(net, handle)
        handle.attached = True
    log.info("quantize: %r", handle)
    return handle


def fake_layer(
    handle: QuantHandle, name: str, mod: nn.Module, calibration: Calibration | None
) -> None:
    """Fake-quantize one layer in place with ``handle.config`` (its hooks go to ``handle``)."""
    config = handle.config
    if config.format == "int4_weight":
        handle._hooks.append(_fake_weight(mod, 4, config.group_size))
        handle.layers[name] = "fake:int4"
        return
    handle._hooks.append(_fake_weight(mod, 8, None))
    if config.format == "int8_dynamic":
        handle._hooks.append(mod.register_forward_pre_hook(_dynamic_hook))
        handle.layers[name] = "fake:int8_dynamic"
    elif config.format == "w8a8":
        if calibration is None:
            raise ConfigError("format 'w8a8' needs a calibration")
        ranges, union = calibration.ranges_of(name)
        handle._hooks.append(mod.register_forward_pre_hook(_act_hook(handle, ranges, union)))
        handle.layers[name] = "fake:w8a8"
    else:
        handle.layers[name] = "fake:int8"


def _apply_torchao(
    net: nn.Module,
    config: Quantize,
    device: torch.device,
    targets: list[tuple[str, nn.Module]],
    handle: QuantHandle,
) -> None:
    from torchao.quantization import quantize_

    linear = {id(m) for _, m in targets if isinstance(m, nn.Linear)}
    cfg = _torchao_config(config.format, device, config.group_size)

    def only_targets(mod: nn.Module, fqn: str) -> bool:
        return id(mod) in linear

    quantize_(net, cfg, filter_fn=only_targets)
    for name, mod in targets:
        if id(mod) in linear:
            handle.layers[name] = f"torchao:{type(mod.weight).__name__}"
