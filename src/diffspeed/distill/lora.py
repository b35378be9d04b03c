"""LoRA adapters for consistency students (LCM-LoRA, Luo et al. 2023b) with peft.

The teacher's network stays frozen; only low-rank updates ``W + (alpha / r) B A`` of chosen
layers are learned (Hu et al. 2021). The adapter is saved in the diffusers LoRA format
(``unet.<module>.lora_A.weight`` / ``lora_B.weight`` in ``pytorch_lora_weights.safetensors``,
the peft ``LoraConfig`` in the header) so a diffusers pipeline loads it with
``load_lora_weights``; :func:`load_lora` applies it in diffspeed (fused into a copy of the base
network, no peft needed at inference). Because the update is a plug-in, the same adapter can
be applied to another fine-tune of the same base model.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from diffspeed.core.contract import innermost, network_of
from diffspeed.distill.cd import CONSISTENCY_TRAIN
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.errors import ConfigError, UnsupportedModelError, WeightsError
from diffspeed.models.io import weights_digest

log = logging.getLogger("diffspeed")

#: File names of an adapter directory (the first is what diffusers looks for by default).
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
META_NAME = "diffspeed_lora.json"
#: Module-name suffixes LoRA is applied to in a diffusers UNet (attention and ResNet layers).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")
#: Every conv / linear layer of a diffusers UNet (adds the stem, head, time MLP, resampler
#: convs and resnet shortcuts to :data:`DEFAULT_TARGETS`).
ALL_TARGETS = (
    *DEFAULT_TARGETS,
    *("conv_in", "conv_out", "linear_1", "linear_2", "conv", "conv_shortcut"),
)


@dataclass(frozen=True)
class LoRA:
    """LoRA settings.

    Attributes:
        rank: the rank ``r`` of each update.
        alpha: the scale numerator (update scale ``alpha / r``).
        targets: module-name suffixes to adapt (peft ``target_modules``).
    """

    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not self.targets:
            raise ConfigError("LoRA needs rank >= 1, alpha > 0 and at least one target module")

    def peft_config(self) -> Any:
        """The equivalent ``peft.LoraConfig``."""
        peft = _peft()
        return peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=list(self.targets),
            init_lora_weights=True,
        )


def _peft() -> Any:
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a declared dependency of the extra
        raise UnsupportedModelError(
            "LoRA needs peft: pip install 'diffspeed[distill]' (or pip install peft)"
        ) from None
    return peft


def add_lora(net: nn.Module, config: LoRA = LoRA()) -> nn.Module:
    """Inject trainable LoRA layers into ``net`` in place; everything else is frozen.

    ``B`` starts at zero, so the adapted network first computes exactly what ``net`` did.
    """
    peft = _peft()
    net.requires_grad_(False)
    peft.inject_adapter_in_model(config.peft_config(), net, adapter_name="default")
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" in name)
    return net


def lora_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of a peft-injected network, keyed like peft (``<module>.lora_A.weight``)."""
    peft = _peft()
    sd = peft.get_peft_model_state_dict(net, adapter_name="default")
    return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def save_lora(
    out_dir: str | os.PathLike,
    net: nn.Module,
    config: LoRA,
    info: dict[str, Any] | None = None,
) -> Path:
    """Save the adapter of ``net`` as a diffusers LoRA directory, atomically as a whole.

    Writes ``pytorch_lora_weights.safetensors`` through diffusers'
    ``StableDiffusionLoraLoaderMixin.save_lora_weights`` (keys prefixed ``unet.``, the
    ``LoraConfig`` in the header) and ``diffspeed_lora.json`` (``config`` and ``info``, e.g.
    the consistency boundary and the recommended sampler). The folder is built aside and
    renamed into place (:func:`~diffspeed.atomic.atomic_dir`), so a kill leaves the old
    adapter or the new one, never half of each. Returns the weights path.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    from diffspeed.atomic import atomic_dir
    from diffspeed.models.io import canonical_safetensors, umask_mode

    out_dir = Path(out_dir)
    layers = lora_state_dict(net)
    meta = config.peft_config().to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])
    cfg = asdict(config)
    cfg["targets"] = list(config.targets)
    with atomic_dir(out_dir) as tmp:
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            tmp,
            unet_lora_layers=layers,
            weight_name=WEIGHT_NAME,
            safe_serialization=True,
            unet_lora_adapter_metadata=meta,
        )
        weights = tmp / WEIGHT_NAME  # diffusers writes its header in hash-map order
        weights.write_bytes(canonical_safetensors(weights.read_bytes()))
        weights.chmod(umask_mode())  # diffusers' temporary file was private (0600)
        (tmp / META_NAME).write_text(
            json.dumps({"lora": cfg, **(info or {})}, indent=2, sort_keys=True) + "\n"
        )
    return out_dir / WEIGHT_NAME


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LoRA, dict[str, Any]]:
    """Read an adapter directory (or its weights file): ``(tensors, LoRA config, info)``.

    Tensor keys are the module paths with ``.lora_A.weight`` / ``.lora_B.weight`` (the
    ``unet.`` prefix removed).
    """
    from diffspeed.models.io import load_weights, read_json_config

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = folder / WEIGHT_NAME if path.is_dir() else path
    info = read_json_config(folder / META_NAME, "diffspeed LoRA adapter", ("lora",))
    lora_cfg = info.pop("lora")
    try:
        cfg = LoRA(lora_cfg["rank"], lora_cfg["alpha"], tuple(lora_cfg["targets"]))
    except (TypeError, KeyError) as e:
        raise WeightsError(
            f"{folder / META_NAME} has malformed 'lora' settings ({e}); re-save the adapter"
        ) from None
    tensors = load_weights(weights)
    bad = [k for k in tensors if not k.startswith("unet.") or ".lora_" not in k]
    if bad:
        raise WeightsError(f"{weights} is not a diffusers UNet LoRA file (keys like {bad[:2]})")
    return {k[len("unet.") :]: v for k, v in tensors.items()}, cfg, info


def fuse_lora(net: nn.Module, path: str | os.PathLike, scale: float = 1.0) -> nn.Module:
    """A copy of ``net`` with the adapter at ``path`` merged: ``W += scale * alpha/r * B A``.

    Every adapted layer of the file must exist in ``net`` with matching shapes (a LoRA trained
    on another architecture is refused).
    """
    tensors, cfg, _ = read_lora(path)
    fused = copy.deepcopy(net)
    modules = dict(fused.named_modules())
    factor = scale * cfg.alpha / cfg.rank
    names = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    with torch.no_grad():
        for name in names:
            layer = modules.get(name)
            a = tensors.get(f"{name}.lora_A.weight")
            b = tensors.get(f"{name}.lora_B.weight")
            if layer is None or a is None or b is None or not hasattr(layer, "weight"):
                raise WeightsError(f"{path}: layer {name!r} is not in the model (or incomplete)")
            w = layer.weight
            if (b.shape[0], *a.shape[1:]) != tuple(w.shape):
                raise WeightsError(
                    f"{path}: LoRA for {name!r} has shape {(b.shape[0], *a.shape[1:])}, "
                    "the model's "
                    f"layer is {tuple(w.shape)}; the adapter was trained for another model"
                )
            delta = (b.flatten(1) @ a.flatten(1)).view(w.shape)
            w.add_(delta.to(w.dtype) * factor)
    return fused


def load_lora(path: str | os.PathLike, base: Any = None, *, scale: float = 1.0) -> Any:
    """Apply an LCM-LoRA adapter to a base model: a few-step consistency denoiser.

    Args:
        path: the adapter directory written by :func:`save_lora` (or ``diffspeed distill
            lcm-lora``).
        base: the discrete-time VP denoiser to accelerate (default: the embedded teacher); any
            fine-tune of the model the adapter was trained on works.
        scale: LoRA strength (1 = as trained).

    Returns:
        A :class:`~diffspeed.distill.consistency.ConsistencyDenoiser` over a fused copy of the
        base network; sample it with ``solver="lcm", schedule="lcm"`` (one forward per step).
    """
    from diffspeed.core.adapters import DiscreteVPDenoiser
    from diffspeed.distill.consistency import Boundary, ConsistencyDenoiser

    if base is None:
        from diffspeed.models.teacher import load_teacher

        base = load_teacher()
    inner = innermost(base)
    if not isinstance(inner, DiscreteVPDenoiser) or inner.model is None:
        raise UnsupportedModelError(
            "load_lora needs a discrete-time VP denoiser around a torch module "
            "(diffspeed.models.load_teacher() or diffspeed.from_diffusers(unet, scheduler))"
        )
    _, _, info = read_lora(path)
    net = fuse_lora(inner.model, path, scale).requires_grad_(False).eval()
    den = DiscreteVPDenoiser(net, inner.alphas_cumprod, inner.prediction)
    den.cond_spec = inner.cond_spec
    boundary = Boundary(**info.get("boundary", {}))
    return ConsistencyDenoiser(den, boundary, float(info.get("strength", 1.0)))


def peft_unet(unet: nn.Module) -> nn.Module:
    """A copy of a diffusers ``UNet2DModel`` whose class has diffusers' ``PeftAdapterMixin``
    (``load_lora_adapter``), which ``UNet2DModel`` itself lacks in diffusers <= 0.42."""
    from diffusers import UNet2DModel
    from diffusers.loaders import PeftAdapterMixin

    if not isinstance(unet, UNet2DModel):
        raise UnsupportedModelError(f"expected a diffusers UNet2DModel, got {type(unet).__name__}")
    if isinstance(unet, PeftAdapterMixin):
        return unet
    cls = type("PeftUNet2DModel", (UNet2DModel, PeftAdapterMixin), {})
    out = cls.from_config(unet.config)
    out.load_state_dict(unet.state_dict())
    if out.dtype != unet.dtype:
        out = out.to(unet.dtype)
    return out.to(unet.device).eval()


def lora_student(
    teacher: Any, config: LoRA = LoRA(), boundary: Any = None, strength: float = 1.0
) -> Any:
    """A consistency student = a frozen copy of the teacher's network + trainable LoRA."""
    from diffspeed.core.adapters import DiscreteVPDenoiser
    from diffspeed.distill.consistency import Boundary, ConsistencyDenoiser

    inner = innermost(teacher)
    if not isinstance(inner, DiscreteVPDenoiser) or inner.model is None:
        raise UnsupportedModelError("LCM-LoRA needs a discrete-time VP teacher around a module")
    net = add_lora(copy.deepcopy(inner.model), config).train()
    den = DiscreteVPDenoiser(net, inner.alphas_cumprod, inner.prediction)
    den.cond_spec = inner.cond_spec
    return ConsistencyDenoiser(den, boundary or Boundary(), strength)


@register("lcm-lora")
@dataclass(frozen=True)
class LCMLoRA(MethodConfig):
    """LCM-LoRA (Luo et al. 2023b): the LCM loss on a frozen teacher plus a LoRA adapter,
    saved in the diffusers format (``out/lora/``) for ``pipe.load_lora_weights``.

    Attributes:
        k: the skipping step in training timesteps (LCM's grid).
        strength: top of the grid as a fraction of it (the ``lcm`` schedule's ``strength``).
        solver: the teacher's one-step ODE solver between grid points.
        guidance: the one guidance scale the adapter bakes in (the teacher ODE's).
        metric: the distance (pseudo-Huber, c = 0.00054 sqrt(d); or ``"l2"``).
        target_decay: EMA decay of the target network.
        groups: distinct grid indices per batch (one teacher solver call each).
        anchor: weight of the teacher-trajectory term (see :class:`~diffspeed.distill.lcm.LCM`).
        rank, alpha: the LoRA rank and scale numerator (alpha None: the rank).
        targets: module-name suffixes to adapt, comma-separated (peft ``target_modules``),
            ``"default"`` (attention projections, resnet convs, time projections) or ``"all"``
            (every conv / linear layer).
        from_lcm: fit the adapter to this trained full-weight LCM (a student path) at
            ``guidance`` instead of the LCM loss; grid and boundary come from it. Use an eps
            LCM: an eps adapter cannot follow a v LCM's one-step output.
    """

    k: int = 20
    strength: float = 0.6
    solver: str = "ddim"
    guidance: float = 1.25
    metric: str = "pseudo_huber"
    target_decay: float = 0.95
    groups: int = 2
    anchor: float = 0.0
    rank: int = 8
    alpha: float | None = None
    targets: str = "default"
    from_lcm: str | None = None

    bench_row: ClassVar[str] = "lcm-lora"
    anchor_top: ClassVar[float] = 0.5
    train_defaults: ClassVar[dict[str, Any]] = CONSISTENCY_TRAIN

    def __post_init__(self) -> None:
        from diffspeed.distill.lcm import LCM

        self.lora  # noqa: B018 - validates rank, alpha and targets
        LCM(  # validates the shared settings
            k=self.k,
            strength=self.strength,
            solver=self.solver,
            w_range=self.w_range,
            metric=self.metric,
            target_decay=self.target_decay,
            groups=self.groups,
            anchor=self.anchor,
        )

    @property
    def w_range(self) -> tuple[float, float]:
        """The teacher ODE's guidance scale as a one-point range (read by the LCM loss)."""
        return (self.guidance, self.guidance)

    @property
    def w_embedding(self) -> bool:
        """An adapter takes no guidance scale."""
        return False

    @property
    def boundary(self) -> Any:
        """The consistency parameterisation the student is built with."""
        from diffspeed.distill.consistency import Boundary

        return Boundary()

    @property
    def lora(self) -> LoRA:
        """The adapter's settings."""
        named = {"default": DEFAULT_TARGETS, "all": ALL_TARGETS}
        targets = named.get(self.targets) or tuple(t for t in self.targets.split(",") if t)
        return LoRA(self.rank, float(self.alpha or self.rank), targets)

    def run(self, teacher: Any, train: list[Any], out: Path, data: Any, opts: RunOptions) -> Path:
        """Train the adapter (EMA weights) and save it to ``out/lora/`` in the diffusers format;
        return that folder. The objective is the LCM loss
        (:class:`~diffspeed.distill.lcm.LCMLoss` without a guidance embedding) or, with
        ``from_lcm``, the regression onto that LCM (:class:`~diffspeed.distill.lcm_kd.LCMKDLoss`,
        whose grid, strength and boundary are the source's); ``info`` records which."""
        from diffspeed.distill.consistency import consistency_recipe
        from diffspeed.distill.lcm import lcm_loss
        from diffspeed.distill.trainer import train as train_loop

        if self.from_lcm:
            from diffspeed.distill.lcm_kd import LCMKD, LCMKDLoss

            loss: Any = LCMKDLoss(LCMKD(self.from_lcm, self.guidance, self.metric))
            boundary, strength = loss.source.boundary, loss.source.strength
        else:
            loss, boundary, strength = lcm_loss(self, teacher, out, opts.progress), None, None
        student = lora_student(
            teacher, self.lora, boundary or self.boundary, strength or self.strength
        )
        digest = weights_digest(network_of(teacher))
        recipe = consistency_recipe(student, guidance=self.guidance)
        result = train_loop(
            student,
            loss,
            train[0],
            out,
            data=data,
            teacher=teacher,
            resume=opts.resume,
            force=opts.force,
            evaluate=opts.evaluate(recipe) if opts.evaluate is not None else None,
            run_info={"teacher": digest, "lora": asdict(self.lora)},
            progress=opts.progress,
        )
        sampler = {"solver": "lcm", "schedule": "lcm", "strength": student.strength}
        info = {
            "boundary": student.boundary.to_dict(),
            "strength": student.strength,
            "method": "lcm-lora",
            "objective": "lcmkd" if self.from_lcm else "lcm",
            "config": loss.config.to_dict(),
            "train": train[0].to_dict(),
            "teacher": digest,
            "sampler": {**sampler, "guidance": self.guidance},
        }
        save_lora(out / "lora", result.best.model, self.lora, info)
        return out / "lora"
