"""The one training loop every distillation method shares (HF Accelerate).

A method is only a loss: ``loss(student, teacher, x0, cond, ctx) -> per-sample loss [B]``.
The loop knows nothing of methods; it owns batching, randomness, optimisation, EMA,
mixed precision, multi-process gradient averaging, logging, evaluation and checkpoints.

Reproducibility (and kill-and-resume exactness) rests on three rules:

* every random number is drawn from a generator seeded by ``(seed, step, micro-batch)``
  (:meth:`LossContext.randn` and friends), never from global RNG state;
* each micro-batch is drawn as one *global* micro-batch on every process, and each process
  keeps its slice, so ``N`` processes see exactly the samples one process sees;
* a checkpoint holds everything that changes (student, EMAs, optimizer moments, counters) in
  one safetensors file written atomically (temporary file, then ``os.replace``).

Multi-process: run the same script under ``accelerate launch --num_processes N``; gradients
are averaged across processes in one flat all-reduce per step.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffspeed.atomic import clean_stale
from diffspeed.configs import config_diff, dataclass_from_dict
from diffspeed.errors import ConfigError, NonFiniteError, ShapeError, WeightsError, unknown_name
from diffspeed.models.io import atomic_write_bytes, load_weights, read_metadata, save_weights
from diffspeed.progress import Progress

log = logging.getLogger("diffspeed")

#: File name of the checkpoint inside a run directory.
CHECKPOINT = "checkpoint.safetensors"
#: Checkpoint metadata key holding the run's configuration (JSON), compared on resume.
RUN_CONFIG = "run_config"
#: Per-step training log (CSV: step, loss, lr, grad_norm, skipped).
TRAIN_LOG = "train_log.csv"
#: Periodic evaluation log (CSV: step, then one column per metric).
EVAL_LOG = "eval_log.csv"

#: TrainConfig fields that change when and how often things are written, not the result;
#: they are left out of the config hash so a run can be resumed with other values.
LOGISTICS = ("checkpoint_every", "eval_every", "log_every")


class CheckpointError(WeightsError):
    """A checkpoint is corrupt, or was written by a different run configuration."""


class TrainingDivergedError(NonFiniteError):
    """The loss (or gradient) stayed NaN/Inf for ``max_bad_steps`` steps in a row."""


#: Integer fields of :class:`TrainConfig` and their minimum.
_INT_FIELDS = {
    "steps": 1,
    "batch_size": 1,
    "warmup": 0,
    "grad_accum": 1,
    "seed": 0,
    "max_bad_steps": 1,
    "checkpoint_every": 0,
    "eval_every": 0,
    "log_every": 0,
}
#: Float fields of :class:`TrainConfig`: (minimum, upper bound exclusive, minimum excluded).
_FLOAT_FIELDS = {
    "lr": (0.0, math.inf, True),
    "ema_decay": (0.0, 1.0, False),
    "max_grad_norm": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False),
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the shared training loop.

    Attributes:
        steps: optimizer steps.
        batch_size: global batch per optimizer step (all processes and micro-batches).
        lr: peak learning rate (AdamW).
        warmup: linear warm-up steps.
        lr_schedule: ``"cosine"`` (to 0 at ``steps``) or ``"constant"`` after warm-up.
        grad_accum: micro-batches per step (``batch_size`` must divide by
            ``grad_accum * num_processes``).
        ema_decay: decay of the EMA of the student weights (0 disables it).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (Accelerate autocast).
        max_grad_norm: gradient clipping (0 disables it).
        weight_decay: AdamW weight decay.
        seed: base seed of every step's generator.
        max_bad_steps: consecutive NaN/Inf steps (skipped) before the run stops.
        checkpoint_every, eval_every, log_every: in steps (0 disables; a checkpoint is
            always written at the end).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    warmup: int = 0
    lr_schedule: str = "cosine"
    grad_accum: int = 1
    ema_decay: float = 0.0
    mixed_precision: str = "no"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    max_bad_steps: int = 10
    checkpoint_every: int = 100
    eval_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        for name, lo in _INT_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                example = value if isinstance(value, str) and value.isdigit() else max(lo, 1)
                raise ConfigError(
                    f"TrainConfig.{name} must be an integer, got {type(value).__name__} "
                    f"{value!r}; pass e.g. {name}={int(example)}"
                )
            if value < lo:
                raise ConfigError(f"TrainConfig.{name} must be >= {lo}, got {value}")
        for name, (lo, hi, open_lo) in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, int | float | np.number) or isinstance(value, bool):
                raise ConfigError(
                    f"TrainConfig.{name} must be a number, got {type(value).__name__} {value!r}"
                )
            if not math.isfinite(value) or value < lo or (open_lo and value == lo) or value >= hi:
                bound = f"> {lo}" if open_lo else f">= {lo}"
                upper = f" and < {hi}" if math.isfinite(hi) else ""
                raise ConfigError(
                    f"TrainConfig.{name} must be a finite number {bound}{upper}, got {value}"
                )
        if not isinstance(self.lr_schedule, str) or self.lr_schedule not in LR_SCHEDULES:
            raise unknown_name("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise unknown_name("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused."""
        return dataclass_from_dict(cls, d)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * LR_SCHEDULES[self.lr_schedule](min(1.0, frac))


#: Learning-rate multipliers after warm-up, as a function of training progress in [0, 1].
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda f: 0.5 * (1 + math.cos(math.pi * f)),
    "constant": lambda f: 1.0,
}


@dataclass
class TrainData:
    """What the loop samples batches from: ``x0 [N, ...]``, ``cond`` and ``extras``.

    ``cond`` values (``[N, ...]`` tensors, e.g. ``class_labels``) go to the networks;
    ``extras`` (``[N, ...]``) are per-sample tensors only the loss sees (e.g. the noise a
    knowledge-distillation target was generated from), through ``ctx.extras``.
    """

    x0: torch.Tensor
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.x0.shape[0]
        for k, v in {**self.cond, **self.extras}.items():
            if v.shape[0] != n:
                raise ConfigError(f"TrainData: {k!r} has {v.shape[0]} rows, x0 has {n}")

    def __len__(self) -> int:
        return self.x0.shape[0]

    def take(self, idx: torch.Tensor, device: torch.device) -> tuple[Any, dict, dict]:
        """Rows ``idx`` of everything, on ``device``."""

        def pick(v: torch.Tensor) -> torch.Tensor:
            return v[idx].to(device)

        return (
            pick(self.x0),
            {k: pick(v) for k, v in self.cond.items()},
            {k: pick(v) for k, v in self.extras.items()},
        )


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The CPU generator of one micro-batch: a function of ``(seed, step, micro)`` only."""
    state = np.random.SeedSequence([seed, step, micro]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


@dataclass
class LossContext:
    """What a loss may need beyond ``(student, teacher, x0, cond)``.

    Attributes:
        step, total_steps: the optimizer step being computed (0-based) and the run length.
        generator: this micro-batch's CPU generator, identical on every process.
        global_batch: size of the global micro-batch this process holds a slice of.
        local: this process's slice of the global micro-batch.
        extras: this process's rows of ``TrainData.extras``.
        emas: EMA copies of the student by name (``"ema"``: :attr:`TrainConfig.ema_decay`;
            others as the loss's ``emas`` attribute declares, e.g. a consistency target net).
        device: where the batch lives.
    """

    step: int
    total_steps: int
    generator: torch.Generator
    global_batch: int
    local: slice
    extras: dict[str, torch.Tensor]
    emas: dict[str, nn.Module]
    device: torch.device

    @property
    def ema(self) -> nn.Module | None:
        """The main EMA model (None when ``ema_decay`` is 0)."""
        return self.emas.get("ema")

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.local].to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal ``[local B, *shape]``: this process's rows of a global draw."""
        return self._mine(torch.randn((self.global_batch, *shape), generator=self.generator))

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) ``[local B, *shape]``: this process's rows of a global draw."""
        return self._mine(torch.rand((self.global_batch, *shape), generator=self.generator))

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in ``[low, high)`` ``[local B, *shape]``: rows of a global draw."""
        draw = torch.randint(low, high, (self.global_batch, *shape), generator=self.generator)
        return self._mine(draw)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        student: the trained student (the live weights).
        emas: the EMA copies by name (``"ema"`` when ``ema_decay > 0``).
        step: the last completed step (== ``config.steps``).
        skipped: steps skipped because of a NaN/Inf loss or gradient.
        last_loss: global mean loss of the last step.
        checkpoint: path of the final checkpoint.
    """

    student: nn.Module
    emas: dict[str, nn.Module]
    step: int
    skipped: int
    last_loss: float
    checkpoint: Path

    @property
    def best(self) -> nn.Module:
        """The weights to export: the main EMA if there is one, else the student."""
        return self.emas.get("ema", self.student)


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``module`` once (shared modules deduplicated)."""
    out = dict(module.named_parameters())
    persistent = set(module.state_dict())
    out.update({k: b for k, b in module.named_buffers() if k in persistent})
    return out


def _copy_into(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    own = module_tensors(module)
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or bad:
        raise CheckpointError(
            f"{source} does not match the model: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, shape mismatch {bad[:3]}; it was written for another model"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(tensors[k].to(dtype=t.dtype, device=t.device))


def loss_config(loss_fn: Any) -> dict[str, Any]:
    """JSON-able description of a loss for the run hash: its class and its config dataclass."""
    cfg = getattr(loss_fn, "config", None)
    desc: dict[str, Any] = {"loss": type(loss_fn).__qualname__}
    if is_dataclass(cfg):
        desc["config"] = asdict(cfg)
    return desc


def run_config(config: TrainConfig, loss_fn: Any, extra: Mapping[str, Any] | None) -> dict:
    """The dict whose hash identifies a run (logistics fields excluded)."""
    train = {k: v for k, v in asdict(config).items() if k not in LOGISTICS}
    return {"train": train, **loss_config(loss_fn), "extra": dict(extra or {})}


def _ema_decays(config: TrainConfig, loss_fn: Any) -> dict[str, float | Callable[[int], float]]:
    decays: dict[str, float | Callable[[int], float]] = {}
    if config.ema_decay > 0:
        decays["ema"] = config.ema_decay
    decays.update(getattr(loss_fn, "emas", None) or {})
    return decays


def _ema_copy(student: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(student).requires_grad_(False)


class _CsvLog:
    """An append-only CSV whose rows past the resumed step are dropped (atomically) on resume."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled, self.header = path, enabled, None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.header = rows[0]
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        if new:
            self.header = list(row)
        elif self.header is None:
            with self.path.open(newline="") as f:
                self.header = next(csv.reader(f), list(row))
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.header)
            w.writerow([row.get(k, "") for k in self.header])


def _accepts_ctx(loss_fn: Callable) -> bool:
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return False
    return "ctx" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _save_checkpoint(path, student, emas, opt, counters, hash_config) -> None:
    tensors = {f"student.{k}": v for k, v in module_tensors(student).items()}
    for name, m in emas.items():
        tensors.update({f"emas.{name}.{k}": v for k, v in module_tensors(m).items()})
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    tensors.update({f"counter.{k}": torch.tensor(v) for k, v in counters.items()})
    meta = {
        "step": str(counters["step"]),
        "run": "diffspeed.distill",
        RUN_CONFIG: json.dumps(hash_config, sort_keys=True, default=str),
    }
    save_weights(path, tensors, hash_config, metadata=meta)


def check_same_run(path: Path, stored: Any, current: Any, force: bool) -> None:
    """Refuse to resume ``path`` when its recorded configuration differs from the current one
    (naming the differing fields), unless ``force``."""
    diffs = config_diff(stored, current)
    if not diffs:
        return
    if force:
        log.warning("resuming %s with a changed configuration (--force): %s", path, diffs)
        return
    raise CheckpointError(
        f"cannot resume {path}: it was written with another configuration ("
        + "; ".join(diffs[:6])
        + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        + "). Resume with the settings it was written with, choose another --out, or pass "
        "--force (force=True) to continue it with the new settings"
    )


def _load_checkpoint(path, student, emas, opt, hash_config, force=False) -> dict[str, Any]:
    try:
        stored = read_metadata(path).get(RUN_CONFIG)
        if stored is not None:
            current = json.loads(json.dumps(hash_config, default=str))
            check_same_run(path, json.loads(stored), current, force)
        t = load_weights(path, None if force or stored is not None else hash_config)
    except WeightsError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"cannot resume from {path}: {e}. Start a fresh run (another out_dir, or "
            "resume=False / without --resume) or resume with the config that wrote it"
        ) from None

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}

    _copy_into(student, group("student."), str(path))
    for name, m in emas.items():
        _copy_into(m, group(f"emas.{name}."), f"{path} (EMA {name!r})")
    sd = opt.state_dict()
    for key, v in group("opt.").items():
        i, name = key.split(".", 1)
        sd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(sd)
    counters = {k: int(v) for k, v in group("counter.").items()}
    if "step" not in counters:
        raise CheckpointError(f"{path} has no step counter; it is not a distill checkpoint")
    return counters


@dataclass
class _Loop:
    """What the named parts of one run share: the process layout, the models, the optimiser,
    the counters and the logs."""

    acc: Any
    config: TrainConfig
    student: nn.Module
    teacher: nn.Module | None
    loss_fn: Callable[..., torch.Tensor]
    with_ctx: bool
    data: TrainData
    params: list[nn.Parameter]
    opt: Any
    emas: dict[str, nn.Module]
    decays: dict[str, float | Callable[[int], float]]
    counters: dict[str, int]
    local: slice
    ckpt: Path
    hash_config: dict[str, Any]
    train_log: _CsvLog
    eval_log: _CsvLog

    @property
    def per_micro(self) -> int:
        """Rows of one global micro-batch."""
        return self.config.batch_size // self.config.grad_accum


def train(
    student: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    data: TrainData,
    teacher: nn.Module | None = None,
    resume: bool = True,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
    run_info: Mapping[str, Any] | None = None,
    progress: bool = False,
    force: bool = False,
) -> TrainResult:
    """Train ``student`` to minimise ``loss_fn`` with AdamW; checkpoint into ``out_dir``.

    Each step draws ``grad_accum`` global micro-batches of ``batch_size / grad_accum`` rows of
    ``data`` (uniformly, with replacement, from the step's generator); each process evaluates
    ``loss_fn(student, teacher, x0, cond, ctx=LossContext)`` (``ctx`` only if the callable
    accepts it) on its slice, averages it, backpropagates; gradients are averaged across
    processes, clipped, and AdamW steps at ``config.lr_at(step)``. EMAs follow.

    Args:
        student: the trainable module (its parameters with ``requires_grad`` are optimised).
        loss_fn: per-sample loss ``[B]``; may declare ``emas = {name: decay or fn(step)}`` for
            extra EMA copies it reads through ``ctx.emas``, and a dataclass ``config``.
        config: loop settings.
        out_dir: run directory (checkpoint, CSV logs).
        data: the samples batches are drawn from.
        teacher: frozen module handed to the loss (moved to the device, no gradients).
        resume: continue from ``out_dir/checkpoint.safetensors`` if it exists; a checkpoint
            of another config (hash in its header) or a corrupt file raises
            :class:`CheckpointError`. Without ``resume`` an existing checkpoint is overwritten.
        evaluate: ``evaluate(model, step) -> {metric: value}``, called on the main process
            every ``eval_every`` steps and at the end with the EMA (or the student); rows go
            to ``eval_log.csv``.
        run_info: extra JSON-able facts that identify the run (e.g. the teacher's digest);
            part of the checkpoint hash.
        progress: show a rich progress bar with loss and ETA on the main process.
        force: resume a checkpoint whose configuration differs from ``config`` / ``run_info``
            (by default that is refused, naming the differing fields).

    Raises:
        TrainingDivergedError: ``max_bad_steps`` consecutive steps with a NaN/Inf loss or
            gradient (each such step is skipped and counted).
        CheckpointError: an unusable checkpoint in ``out_dir`` while resuming.
    """
    loop = start(student, loss_fn, config, Path(out_dir), data, teacher, resume, run_info, force)
    bar = Progress(progress and loop.acc.is_main_process, fields=("loss",))
    last_loss, t0, first = float("nan"), time.time(), loop.counters["step"]
    with bar:
        task = bar.add("distill", config.steps, first, loss="-")
        while loop.counters["step"] < config.steps:
            step = loop.counters["step"]
            lr = config.lr_at(step)
            for g in loop.opt.param_groups:
                g["lr"] = lr
            loop.opt.zero_grad(set_to_none=False)
            total, bad = accumulate(loop, step)
            flat, step_loss, bad = sync_gradients(loop, total, bad)
            grad_norm = float("nan")
            if bad:
                skip(loop, step)
            else:
                grad_norm = update(loop, flat, step)
                last_loss = step_loss
            loop.counters["step"] = step = step + 1
            bar.update(task, step, loss=f"{step_loss:.4g}")
            if config.log_every and (step % config.log_every == 0 or step == config.steps):
                row = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm}
                loop.train_log.write({**row, "skipped": loop.counters["skipped"]})
            if config.eval_every and evaluate is not None and step % config.eval_every == 0:
                _evaluate(loop.acc, evaluate, loop.emas.get("ema", student), step, loop.eval_log)
            if step == config.steps or (
                config.checkpoint_every and step % config.checkpoint_every == 0
            ):
                checkpoint(loop)
    finish(loop, evaluate, first, t0)
    counters = loop.counters
    return TrainResult(
        student, loop.emas, counters["step"], counters["skipped"], last_loss, loop.ckpt
    )


def start(
    student: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    config: TrainConfig,
    out_dir: Path,
    data: TrainData,
    teacher: nn.Module | None,
    resume: bool,
    run_info: Mapping[str, Any] | None,
    force: bool = False,
) -> _Loop:
    """Set a run up: the process layout, the run directory, models on the device, the
    optimiser and EMAs, and the state of the checkpoint in ``out_dir`` when resuming."""
    from accelerate import Accelerator

    # without a GPU, processes started by `accelerate launch --multi_gpu` join over gloo on
    # the CPU (accelerate alone would treat each as a separate single-process run)
    acc = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    per_micro = config.batch_size // config.grad_accum
    if config.batch_size % (config.grad_accum * world):
        raise ConfigError(
            f"batch_size {config.batch_size} must divide by grad_accum * processes = "
            f"{config.grad_accum} * {world}"
        )
    ckpt = out_dir / CHECKPOINT
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(out_dir)  # temporary files left by a kill mid-write
    acc.wait_for_everyone()

    device = acc.device
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).requires_grad_(False).eval()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the student has no trainable parameters (requires_grad=False)")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    decays = _ema_decays(config, loss_fn)
    emas = {name: _ema_copy(student).to(device) for name in decays}
    hash_config = run_config(config, loss_fn, run_info)
    counters = {"step": 0, "skipped": 0, "bad_streak": 0}
    resumed = resume and ckpt.is_file()
    if resumed:
        counters = _load_checkpoint(ckpt, student, emas, opt, hash_config, force)
        log.info("resumed %s at step %d", out_dir, counters["step"])
    train_log = _CsvLog(out_dir / TRAIN_LOG, acc.is_main_process)
    eval_log = _CsvLog(out_dir / EVAL_LOG, acc.is_main_process)
    if resumed:
        train_log.truncate_after(counters["step"])
        eval_log.truncate_after(counters["step"])
    elif acc.is_main_process:
        for p in (out_dir / TRAIN_LOG, out_dir / EVAL_LOG):
            p.unlink(missing_ok=True)
    local = slice(rank * per_micro // world, (rank + 1) * per_micro // world)
    return _Loop(
        acc,
        config,
        student,
        teacher,
        loss_fn,
        _accepts_ctx(loss_fn),
        data,
        params,
        acc.prepare(opt),
        emas,
        decays,
        counters,
        local,
        ckpt,
        hash_config,
        train_log,
        eval_log,
    )


def micro_step(loop: _Loop, step: int, micro: int) -> torch.Tensor | None:
    """One micro-batch: draw it, evaluate the loss on this process's rows and backpropagate.

    Returns the (detached) loss share of the micro-batch, or ``None`` when it is not finite.
    """
    # One global micro-batch from the step's generator; keep this process's rows.
    cfg, device = loop.config, loop.acc.device
    gen = step_generator(cfg.seed, step, micro)
    idx = torch.randint(0, len(loop.data), (loop.per_micro,), generator=gen)[loop.local]
    x0, cond, extras = loop.data.take(idx, device)
    ctx = LossContext(step, cfg.steps, gen, loop.per_micro, loop.local, extras, loop.emas, device)
    try:
        with loop.acc.autocast():
            if loop.with_ctx:
                per_sample = loop.loss_fn(loop.student, loop.teacher, x0, cond, ctx=ctx)
            else:
                per_sample = loop.loss_fn(loop.student, loop.teacher, x0, cond)
        if per_sample.shape != (x0.shape[0],):
            raise ShapeError(
                f"the loss returned shape {tuple(per_sample.shape)}; a loss must "
                f"return one value per sample, [{x0.shape[0]}]"
            )
        loss = per_sample.float().mean() / cfg.grad_accum
    except NonFiniteError:
        return None
    if not torch.isfinite(loss):
        return None
    loop.acc.backward(loss)
    return loss.detach()


def accumulate(loop: _Loop, step: int) -> tuple[torch.Tensor, bool]:
    """Every micro-batch of a step: ``(summed loss, whether one was not finite)``."""
    total = torch.zeros((), device=loop.acc.device, dtype=torch.float64)
    for micro in range(loop.config.grad_accum):
        loss = micro_step(loop, step, micro)
        if loss is None:
            return total, True
        total += loss.double()
    return total, False


def sync_gradients(loop: _Loop, total: torch.Tensor, bad: bool) -> tuple[torch.Tensor, float, bool]:
    """Average gradients, the loss and the bad-step flag over processes in one flat
    all-reduce: ``(flat gradients + loss + flag, global loss, whether to skip the step)``."""
    device = loop.acc.device
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in loop.params]
        + [total.float().view(1), torch.tensor([float(bad)], device=device)]
    )
    world = loop.acc.num_processes
    if world > 1:
        flat = loop.acc.reduce(flat, "sum")
        flat[:-1] /= world
    # fp16 loss scaling handles overflowing gradients itself (the scaler skips them).
    grads_ok = loop.acc.scaler is not None or bool(torch.isfinite(flat[:-1]).all())
    return flat, float(flat[-2]), bool(flat[-1] > 0) or not grads_ok


def update(loop: _Loop, flat: torch.Tensor, step: int) -> float:
    """Write the averaged gradients back, clip, step AdamW and follow with the EMAs; returns
    the gradient norm before clipping (NaN when clipping is off)."""
    offset = 0
    for p in loop.params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    grad_norm = float("nan")
    if loop.config.max_grad_norm > 0:
        grad_norm = float(loop.acc.clip_grad_norm_(loop.params, loop.config.max_grad_norm))
    loop.opt.step()
    with torch.no_grad():
        for name, m in loop.emas.items():
            d = loop.decays[name]
            decay = float(d(step) if callable(d) else d)
            for pe, ps in zip(m.parameters(), loop.student.parameters(), strict=True):
                pe.lerp_(ps.detach(), 1 - decay)
    loop.counters["bad_streak"] = 0
    return grad_norm


def skip(loop: _Loop, step: int) -> None:
    """Skip a step with a NaN/Inf loss or gradient: no update; count it; stop if it persists."""
    counters = loop.counters
    counters["skipped"] += 1
    counters["bad_streak"] += 1
    log.warning("step %d: non-finite loss or gradient, step skipped", step)
    if counters["bad_streak"] >= loop.config.max_bad_steps:
        raise TrainingDivergedError(
            f"{counters['bad_streak']} consecutive steps with a NaN/Inf loss or "
            f"gradient (up to step {step}; {counters['skipped']} skipped in all); "
            "lower the learning rate, use fp32 (mixed_precision='no') or check the "
            f"teacher. The last good checkpoint is {loop.ckpt}"
        )


def checkpoint(loop: _Loop) -> None:
    """Write the run's state (atomically, on the main process) and wait for every process."""
    if loop.acc.is_main_process:
        _save_checkpoint(
            loop.ckpt, loop.student, loop.emas, loop.opt, loop.counters, loop.hash_config
        )
    loop.acc.wait_for_everyone()


def finish(
    loop: _Loop,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None,
    first: int,
    t0: float,
) -> None:
    """The final evaluation (unless the last periodic one was at the end) and the run's log."""
    config, counters = loop.config, loop.counters
    trained = counters["step"] > first
    if (
        trained
        and evaluate is not None
        and (not config.eval_every or config.steps % config.eval_every)
    ):
        model = loop.emas.get("ema", loop.student)
        _evaluate(loop.acc, evaluate, model, config.steps, loop.eval_log)
    if trained:
        rate = (counters["step"] - first) / max(1e-9, time.time() - t0)
        log.info(
            "trained %s to step %d (%.2f it/s, %d skipped)",
            loop.ckpt.parent,
            counters["step"],
            rate,
            counters["skipped"],
        )
    if counters["skipped"]:
        log.warning("%d of %d steps were skipped (NaN/Inf)", counters["skipped"], config.steps)


def _evaluate(acc, evaluate, model: nn.Module, step: int, eval_log: _CsvLog) -> None:
    if acc.is_main_process:
        was = model.training
        model.eval()
        metrics = evaluate(model, step)
        model.train(was)
        log.info("step %d eval %s", step, metrics)
        eval_log.write({"step": step, **metrics})
    acc.wait_for_everyone()
