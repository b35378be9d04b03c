"""The embedded teacher: a class-conditional diffusers ``UNet2DModel`` on 8x8 digits.

eps-prediction, 1000-step discrete VP schedule (DDPM linear betas), labels 0-9 plus a null
class (10) learned by label dropout for classifier-free guidance. ``diffspeed train-teacher``
re-creates the shipped weights on a CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.core.contract import CondSpec
from diffspeed.core.guidance import GuidedDenoiser, guidance
from diffspeed.errors import ConfigError, WeightsError
from diffspeed.models.digits import IMAGE_SHAPE, NUM_CLASSES
from diffspeed.models.io import (
    check_weight_file,
    load_state_into,
    load_weights,
    read_model_config,
    save_model,
    save_weights,
)

log = logging.getLogger("diffspeed")

ASSETS = Path(__file__).parent / "assets"
#: The class index the teacher learned as "no label" (classifier-free guidance's uncond).
NULL_LABEL = NUM_CLASSES

#: Architecture of the shipped teacher (diffusers ``UNet2DModel`` kwargs).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "num_class_embeds": NUM_CLASSES + 1,
    "norm_num_groups": 16,
    "attention_head_dim": 32,
}

#: The 1000-step DDPM schedule it is trained with (diffusers ``DDPMScheduler`` kwargs).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class TeacherTraining:
    """Settings of ``diffspeed train-teacher`` (the shipped weights used these defaults)."""

    steps: int = 8000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 500
    ema_decay: float = 0.999
    label_dropout: float = 0.15
    seed: int = 0
    checkpoint_every: int = 500


def build_unet(config: dict[str, Any] | None = None) -> torch.nn.Module:
    """A freshly initialised teacher UNet (diffusers ``UNet2DModel``)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**(config or UNET_CONFIG))


def build_scheduler(config: dict[str, Any] | None = None):
    """The diffusers ``DDPMScheduler`` the teacher was trained with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**(config or SCHEDULER_CONFIG))


def teacher_config() -> dict[str, Any]:
    """The JSON config shipped beside the teacher weights."""
    return {"unet": UNET_CONFIG, "scheduler": SCHEDULER_CONFIG, "null_label": NULL_LABEL}


def load_teacher(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiscreteVPDenoiser:
    """The embedded teacher as a denoiser (``cond={"class_labels": y}``, null label 10).

    Args:
        path: a ``.safetensors`` file written by ``train-teacher`` (default: the shipped one);
            its ``.json`` config must sit beside it.
    """
    path = check_weight_file(path if path is not None else ASSETS / "teacher.safetensors")
    cfg = read_model_config(path, "teacher", ("unet", "scheduler"))
    try:
        unet = build_unet(cfg["unet"])
        sched = build_scheduler(cfg["scheduler"])
        prediction = cfg["scheduler"]["prediction_type"]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise WeightsError(
            f"{path.with_suffix('.json')} does not describe a teacher ({type(e).__name__}: "
            f"{e}); restore the config written with the weights"
        ) from None
    arch = {k: cfg[k] for k in ("unet", "scheduler", "null_label") if k in cfg}
    load_state_into(unet, load_weights(path, arch), str(path))
    unet.eval().requires_grad_(False).to(device=device)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    den = DiscreteVPDenoiser(unet, sched.alphas_cumprod, prediction)
    den.cond_spec = digits_cond_spec(cfg.get("null_label", NULL_LABEL))
    return den


def digits_cond_spec(null_label: int = NULL_LABEL) -> CondSpec:
    """The digits teacher's conditioning: one class label per sample, ``null_label`` uncond.

    Example conditions cycle through the ten classes (``i % 10`` for sample ``i``), so any
    ``n`` samples are balanced over classes.
    """

    def examples(n: int) -> dict[str, torch.Tensor]:
        return {"class_labels": torch.arange(n) % NUM_CLASSES}

    return CondSpec(
        keys=("class_labels",),
        uncond={"class_labels": torch.tensor(null_label)},
        sample_shape=IMAGE_SHAPE,
        classes={"class_labels": max(NUM_CLASSES, null_label) + 1},
        examples=examples,
    )


def label_cond(labels: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
    """The teacher's ``cond`` for digit ``labels [B]`` (one class per sample)."""
    return {"class_labels": torch.as_tensor(labels)}


def cond_labels(cond: Mapping[str, Any]) -> torch.Tensor:
    """The digit labels ``[B]`` of a teacher ``cond`` (the inverse of :func:`label_cond`)."""
    return torch.as_tensor(cond["class_labels"])


def guided_teacher(
    scale: float = 2.0, denoiser: DiscreteVPDenoiser | None = None
) -> GuidedDenoiser:
    """The teacher with classifier-free guidance at ``scale`` (null class as uncond)."""
    den = denoiser if denoiser is not None else load_teacher()
    return guidance(den, scale)


def _lr_at(step: int, cfg: TeacherTraining) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def train_teacher(
    out: str | Path,
    cfg: TeacherTraining = TeacherTraining(),
    *,
    resume: bool = True,
    progress: bool = False,
) -> Path:
    """Train the teacher on all 1797 digits; returns the written ``.safetensors`` path.

    Checkpoints (model, EMA, optimizer, RNG state, step) go to ``<out>.ckpt/`` atomically every
    ``cfg.checkpoint_every`` steps; with ``resume`` an interrupted run continues from the last.
    The exported weights are the EMA weights.
    """
    from diffspeed.models.digits import load_digits

    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ConfigError("steps and batch_size must be >= 1")
    out = Path(out)
    ckpt_dir = out.with_suffix(".ckpt")
    torch.manual_seed(cfg.seed)
    x_all, y_all = load_digits("all")
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    ac = build_scheduler().alphas_cumprod.float()
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    state_file = ckpt_dir / "state.safetensors"
    if resume and state_file.is_file():
        step = load_train_state(state_file, unet, ema, opt, gen)
        log.info("resumed teacher training at step %d", step)
    t0, last = time.time(), step
    while step < cfg.steps:
        idx = torch.randint(0, len(y_all), (cfg.batch_size,), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout
        y[drop] = NULL_LABEL
        t = torch.randint(0, ac.numel(), (cfg.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=y).sample, eps)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}; last checkpoint is kept")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(pm, 1 - cfg.ema_decay)
        step += 1
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_train_state(state_file, unet, ema, opt, gen, step)
            rate = (step - last) / max(1e-9, time.time() - t0)
            log.info("step %d/%d loss %.4f (%.1f it/s)", step, cfg.steps, loss.item(), rate)
            if progress:
                print(f"step {step}/{cfg.steps} loss {loss.item():.4f} ({rate:.1f} it/s)")
    config = {**teacher_config(), "training": asdict(cfg)}
    save_model(out, ema.state_dict(), config, teacher_config())  # hash: the architecture
    return out


def save_train_state(path, unet, ema, opt, gen, step) -> None:
    """Write a resumable training state (model, EMA, optimizer, RNG, step) to ``path``."""
    tensors = {f"model.{k}": v for k, v in unet.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    tensors["rng"] = gen.get_state()
    tensors["step"] = torch.tensor(step)
    save_weights(path, tensors)


def load_train_state(path, unet, ema, opt, gen) -> int:
    """Restore a state written by :func:`save_train_state` in place; returns its step."""
    t = load_weights(path)
    unet.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    sd = opt.state_dict()
    for key, v in t.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(sd)
    gen.set_state(t["rng"])
    return int(t["step"])
