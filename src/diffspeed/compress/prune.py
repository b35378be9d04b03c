"""Structural channel pruning of diffusers UNets (Diff-Pruning, Fang et al. 2023).

Channels are scored on Torch-Pruning's dependency graph, so a residual stream, the skip
concatenations of the up path and every GroupNorm lose the *same* channels; scores are either
the first-order Taylor importance ``|w * dL/dw|`` of the denoising loss accumulated over
timesteps (Diff-Pruning's recipe: sweep ``t`` upwards from the cleanest step and stop once the
step's loss falls below ``threshold`` times the largest seen, since the noisiest steps carry
little information about the image content) or the weight magnitude (the baseline).

A diffusers config can express one width per block level (``block_out_channels``), while
a dependency graph allows one per coupled group. :func:`prune` therefore plans the widths per
level (the level's width times ``1 - ratio``, rounded to a multiple of ``norm_num_groups`` so
every GroupNorm stays valid) and prunes every coupled group of a level to that width, each
group keeping its own most important channels, spread evenly over its GroupNorm groups. The
result is rebuilt as a plain ``UNet2DModel`` of the new ``block_out_channels`` holding the kept
weights: it saves and loads as a normal diffusers folder (:func:`save_pruned`,
:func:`load_pruned`). A level with attention keeps its head count and every head loses the
same number of dimensions (one ``attention_head_dim`` for the config; queries are rescaled so
the softmax temperature stays); the first conv's input, the last conv's output and the
time/class embeddings are never pruned. Pruning must not add or remove a residual shortcut
(diffusers adds a 1x1 conv when a block's input and output widths differ), so levels of equal
width are pruned together. ``UNet2DModel`` sizes its sinusoidal timestep features by the first
level's width; when that level shrinks, the time MLP's first layer is refitted by least squares
to the original layer's output over the timestep range (with ``freq_shift=0`` the new
frequencies are a subset of the old ones; only the dropped ones' share is approximated).

After pruning, :func:`finetune` distils the pruned network from the unpruned one (the student
matches the teacher's noise prediction at random noise levels) through the shared training
loop :func:`diffspeed.distill.trainer.train`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from diffspeed.configs import JsonConfig
from diffspeed.errors import ConfigError, UnsupportedModelError, WeightsError, unknown_name

log = logging.getLogger("diffspeed")

IMPORTANCES = ("taylor", "magnitude")
#: File in a pruned-model folder that records how it was made.
PRUNE_JSON = "prune.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class Prune(JsonConfig):
    """Settings of :func:`prune`.

    Attributes:
        ratio: fraction of channels removed from each pruned level, in (0, 1); widths are
            rounded to multiples of the model's ``norm_num_groups`` and of a level's head
            count (so a small ratio may leave a level, or the whole model, as it was).
        importance: ``"taylor"`` (Diff-Pruning: Taylor importance accumulated over
            timesteps; needs calibration data) or ``"magnitude"`` (L2 norm of the weights).
        levels: block levels (indices into ``block_out_channels``) to prune; ``None``: all.
        timesteps: points of the Taylor sweep, evenly spaced over the training timesteps.
        threshold: stop the sweep once a step's loss is below ``threshold`` times the
            largest so far (0 sweeps every point).
        batches, batch_size: calibration batches per timestep and their size.
        seed: seed of the calibration noise and batch draws.
    """

    config_name: ClassVar[str] = "Prune"

    ratio: float = 0.5
    importance: str = "taylor"
    levels: tuple[int, ...] | None = None
    timesteps: int = 50
    threshold: float = 0.05
    batches: int = 1
    batch_size: int = 128
    seed: int = 1234

    def __post_init__(self) -> None:
        if not isinstance(self.ratio, int | float) or not 0 < self.ratio < 1:
            raise ConfigError(
                f"prune ratio must lie strictly between 0 and 1 (the fraction of channels "
                f"removed), got {self.ratio!r}"
            )
        if self.importance not in IMPORTANCES:
            raise unknown_name("pruning importance", self.importance, IMPORTANCES)
        if self.timesteps < 1 or self.batches < 1 or self.batch_size < 1:
            raise ConfigError("Prune needs timesteps, batches and batch_size >= 1")
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")


# --- the model's layout ------------------------------------------------------------------


def _unet_of(model: Any) -> nn.Module:
    from diffusers import UNet2DModel

    net = getattr(model, "model", model)
    if not isinstance(net, UNet2DModel):
        raise UnsupportedModelError(
            f"prune() supports diffusers UNet2DModel (or a denoiser wrapping one), got "
            f"{type(net).__name__}"
        )
    return net


def _config(net: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in dict(net.config).items() if not k.startswith("_")}


def plan_widths(net: nn.Module, config: Prune) -> tuple[list[int], int | None]:
    """The pruned ``(block_out_channels, attention_head_dim)`` of ``net`` under ``config``.

    Each pruned level's width is its width times ``1 - ratio``, rounded to a multiple of
    ``norm_num_groups`` (at least one group); a level with attention keeps its head count and
    is also rounded to a multiple of it, its heads losing the same number of dimensions.
    """
    cfg = _config(net)
    widths = list(cfg["block_out_channels"])
    groups = int(cfg["norm_num_groups"])
    levels = range(len(widths)) if config.levels is None else config.levels
    head_dim = cfg.get("attention_head_dim")
    head_dims = set()
    for k in levels:
        if not 0 <= k < len(widths):
            raise ConfigError(
                f"level {k} does not exist; the model has levels 0..{len(widths) - 1}"
            )
        heads = _heads(cfg, k)
        step = math.lcm(groups, heads)
        widths[k] = max(step, round(widths[k] * (1 - config.ratio) / step) * step)
        if _has_attention(cfg, k) and head_dim is not None:
            head_dims.add(widths[k] // heads)
    if head_dim is not None:
        kept = {head_dim for k in range(len(widths)) if k not in levels and _has_attention(cfg, k)}
        head_dims |= kept
        if len(head_dims) > 1:
            raise ConfigError(
                f"pruning levels {list(levels)} gives attention head widths {sorted(head_dims)}, "
                "but a diffusers config has one attention_head_dim; prune every attention level "
                "(or none) by the same ratio"
            )
        head_dim = head_dims.pop() if head_dims else head_dim
    return widths, head_dim


def _heads(cfg: Mapping[str, Any], level: int) -> int:
    """Attention heads at ``level`` (1 when it has none)."""
    head_dim = cfg.get("attention_head_dim")
    if not _has_attention(cfg, level) or head_dim is None:
        return 1
    return max(1, cfg["block_out_channels"][level] // head_dim)


def _has_attention(cfg: Mapping[str, Any], level: int) -> bool:
    ups = list(reversed(cfg["up_block_types"]))
    mid = level == len(cfg["block_out_channels"]) - 1 and cfg.get("add_attention", True)
    return bool(mid) or "Attn" in cfg["down_block_types"][level] or "Attn" in ups[level]


def _level_of(name: str, n_levels: int) -> int | None:
    """Block level of a module by its name (None for the embeddings and ``conv_out``)."""
    parts = name.split(".")
    if parts[0] == "conv_in":
        return 0
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return n_levels - 1
    if parts[0] == "up_blocks":
        return n_levels - 1 - int(parts[1])
    return None


def _example(net: nn.Module, batch: int = 2) -> tuple[torch.Tensor, ...]:
    cfg = _config(net)
    size = cfg["sample_size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    p = next(net.parameters())
    x = torch.randn(batch, cfg["in_channels"], *hw, device=p.device, dtype=p.dtype)
    t = torch.full((batch,), 10, device=p.device, dtype=torch.long)
    if cfg.get("num_class_embeds"):
        return x, t, torch.zeros(batch, dtype=torch.long, device=p.device)
    return x, t


def _forward(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    labels = {"class_labels": inputs[2]} if len(inputs) > 2 else {}
    return net(inputs[0], inputs[1], **labels).sample


def count_macs(net: nn.Module) -> tuple[int, int]:
    """``(MACs, parameters)`` of one forward of a ``UNet2DModel`` on one sample
    (``torch_pruning.utils.count_ops_and_params``)."""
    import torch_pruning as tp

    x = _example(net, 1)
    labels = {"class_labels": x[2]} if len(x) > 2 else {}
    ex = {"sample": x[0], "timestep": x[1], **labels}
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(net, example_inputs=ex)
    return int(macs), int(params)


# --- importance ------------------------------------------------------------------------


def _ddpm_alphas_cumprod(steps: int) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def accumulate_taylor(
    net: nn.Module,
    config: Prune,
    data: tuple[torch.Tensor, Mapping[str, torch.Tensor]],
    alphas_cumprod: torch.Tensor,
) -> list[int]:
    """Accumulate the gradients of the denoising loss over the timestep sweep into
    ``net``'s ``.grad`` fields; returns the timesteps used (Diff-Pruning's early stop)."""
    x_all, cond_all = data
    if len(x_all) < 2:
        raise ConfigError("Taylor importance needs at least 2 calibration samples")
    ac = alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(config.seed)
    batches = []
    for _ in range(config.batches):
        idx = torch.randint(0, len(x_all), (config.batch_size,), generator=gen)
        batches.append((x_all[idx], {k: torch.as_tensor(v)[idx] for k, v in cond_all.items()}))
    device = next(net.parameters()).device
    ts = torch.linspace(0, ac.numel() - 1, config.timesteps).round().long().unique()
    net.zero_grad(set_to_none=True)
    used, worst = [], 0.0
    for t in ts.tolist():
        loss_t = 0.0
        for x0, cond in batches:
            x0 = x0.to(device)
            eps = torch.randn(x0.shape, generator=gen).to(device)
            a = ac[t]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # forward process q(x_t | x0)
            tt = torch.full((len(x0),), t, device=device, dtype=torch.long)
            cond = {k: v.to(device) for k, v in cond.items()}
            loss = nn.functional.mse_loss(net(xt, tt, **cond).sample, eps)
            loss.backward()
            loss_t += float(loss.detach()) / len(batches)
        used.append(t)
        worst = max(worst, loss_t)
        if loss_t < config.threshold * worst:
            break
    return used


def _importance(config: Prune):
    import torch_pruning as tp

    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def _keep_balanced(scores: torch.Tensor, keep: int, groups: int) -> list[int]:
    """Indices to prune: keep the ``keep / groups`` best channels of each GroupNorm group, so
    each new group is a subset of one old group."""
    c = scores.numel()
    if c % groups or keep % groups:
        order = torch.argsort(scores)
        return sorted(order[: c - keep].tolist())
    per = scores.view(groups, c // groups)
    worst = torch.argsort(per, dim=1)[:, : (c - keep) // groups]
    base = torch.arange(groups).view(-1, 1) * (c // groups)
    return sorted((worst + base).flatten().tolist())


# --- the verb ---------------------------------------------------------------------------


def prune(
    model: Any,
    config: Prune = Prune(),
    *,
    data: tuple[torch.Tensor, Mapping[str, torch.Tensor]] | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> Any:
    """A channel-pruned copy of a diffusers ``UNet2DModel`` (the input is left untouched).

    Args:
        model: a ``UNet2DModel``, or a discrete-VP denoiser wrapping one (then a denoiser of
            the same kind wrapping the pruned network is returned).
        config: ratio, importance and calibration settings.
        data: calibration ``(x0 [N, C, H, W], cond)`` for the Taylor importance (e.g. the
            training images and their ``class_labels``); unused by ``"magnitude"``.
        alphas_cumprod: the model's training schedule (default: a denoiser's own, else the
            1000-step DDPM linear schedule).

    Returns:
        the pruned ``UNet2DModel`` (widths ``plan_widths(model, config)``), in eval mode with
        gradients off, or a denoiser around it.

    Raises:
        ConfigError: Taylor importance without ``data``, or a level that cannot be pruned.
        UnsupportedModelError: a model that is not a ``UNet2DModel``.
    """
    from diffusers import UNet2DModel

    src = _unet_of(model)
    if config.importance == "taylor" and data is None:
        raise ConfigError(
            "Taylor importance needs calibration data: prune(model, config, data=(x0, cond)); "
            "or use Prune(importance='magnitude')"
        )
    cfg = _config(src)
    widths, head_dim = plan_widths(src, config)
    work = copy.deepcopy(src).float().train(False).requires_grad_(True)
    if config.importance == "taylor":
        if alphas_cumprod is None:
            alphas_cumprod = getattr(model, "alphas_cumprod", None)
        if alphas_cumprod is None:
            alphas_cumprod = _ddpm_alphas_cumprod(alphas_cumprod_steps(cfg))
        used = accumulate_taylor(work, config, data, torch.as_tensor(alphas_cumprod))
        log.info("Taylor importance over %d timesteps (t = %d .. %d)", len(used), used[0], used[-1])
    heads = _head_plans(work, config, widths)
    _prune_channels(work, config, cfg, widths)
    for attn, qk, v in heads:
        _shrink_heads(attn, qk, v)
    new_cfg = {**cfg, "block_out_channels": widths, "attention_head_dim": head_dim}
    new_cfg["time_embedding_dim"] = (
        cfg.get("time_embedding_dim") or cfg["block_out_channels"][0] * 4
    )
    out = UNet2DModel(**new_cfg)
    state = {k: v.detach() for k, v in work.state_dict().items()}
    if widths[0] != cfg["block_out_channels"][0]:
        state.update(_refit_time_mlp(work, out, alphas_cumprod_steps(cfg)))
    own = out.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k, v in own.items() if k in state and v.shape != state[k].shape]
    if missing or unexpected or bad:
        raise UnsupportedModelError(
            f"the pruned network does not fit a diffusers config of block_out_channels "
            f"{widths}: missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {bad[:3]}. "
            "Pruning must neither create nor remove a residual shortcut: levels of equal width "
            "must stay equal (prune them together) and unequal ones unequal"
        )
    out.load_state_dict(state)
    p = next(src.parameters())
    out = out.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
    out.register_to_config(_diffspeed_prune=config.to_dict())
    return with_network(model, out) if getattr(model, "model", None) is src else out


def with_network(denoiser: Any, net: nn.Module) -> Any:
    """A shallow copy of ``denoiser`` (an adapter such as the digits teacher) around another
    network ``net`` of the same kind, e.g. a pruned one from :func:`load_pruned`; its schedule
    and conditioning spec are shared, ``denoiser`` is left as it was."""
    if not isinstance(getattr(denoiser, "model", None), nn.Module):
        raise UnsupportedModelError("with_network needs a denoiser that holds its network")
    den = copy.copy(denoiser)
    nn.Module.__setattr__(den, "_modules", dict(denoiser._modules))
    den.net = net
    den.model = net
    return den


def _row_scores(layer: nn.Linear, taylor: bool, dim: int = 1) -> torch.Tensor:
    """Importance of each output row (``dim=1``) or input column (``dim=0``) of a Linear."""
    w = layer.weight.detach()
    if taylor:
        return (w * layer.weight.grad).abs().sum(dim)
    return w.pow(2).sum(dim)


def _head_plans(work: nn.Module, config: Prune, widths: list[int]):
    """For each attention whose heads narrow: ``(attn, q/k dims to keep, v dims to keep)``.

    The head count stays; each head keeps the same number of dimensions (its level's new width
    over the heads), its own most important ones: queries and keys share theirs (they meet in
    a dot product), values and the output projection's inputs share theirs.
    """
    from diffusers.models.attention_processor import Attention

    plans = []
    taylor = config.importance == "taylor"
    for name, attn in work.named_modules():
        if not isinstance(attn, Attention):
            continue
        old = attn.inner_dim // attn.heads
        new = widths[_level_of(name, len(widths))] // attn.heads
        if new == old:
            continue
        qk = _row_scores(attn.to_q, taylor) + _row_scores(attn.to_k, taylor)
        v = _row_scores(attn.to_v, taylor) + _row_scores(attn.to_out[0], taylor, 0)
        base = torch.arange(attn.heads).view(-1, 1) * old

        def best(scores: torch.Tensor, base: torch.Tensor = base, new: int = new) -> list[int]:
            per_head = scores.view(len(base), -1)
            keep = torch.argsort(per_head, dim=1, descending=True)[:, :new]
            return sorted((keep + base).flatten().tolist())

        plans.append((attn, best(qk), best(v)))
    return plans


def _shrink_heads(attn: nn.Module, qk: list[int], v: list[int]) -> None:
    """Keep dimensions ``qk`` of the queries and keys and ``v`` of the values (and the output
    projection's matching inputs); the queries are rescaled so the attention logits keep the
    old ``1 / sqrt(head_dim)`` temperature."""
    import torch_pruning as tp

    old, new = attn.inner_dim // attn.heads, len(qk) // attn.heads
    drop = lambda keep, n: sorted(set(range(n)) - set(keep))  # noqa: E731
    tp.prune_linear_out_channels(attn.to_q, drop(qk, attn.inner_dim))
    tp.prune_linear_out_channels(attn.to_k, drop(qk, attn.inner_dim))
    tp.prune_linear_out_channels(attn.to_v, drop(v, attn.inner_dim))
    tp.prune_linear_in_channels(attn.to_out[0], drop(v, attn.inner_dim))
    with torch.no_grad():
        attn.to_q.weight.mul_(math.sqrt(new / old))
        if attn.to_q.bias is not None:
            attn.to_q.bias.mul_(math.sqrt(new / old))
    attn.inner_dim = attn.inner_kv_dim = attn.heads * new
    attn.scale = new**-0.5


def _prune_channels(
    work: nn.Module, config: Prune, cfg: Mapping[str, Any], widths: list[int]
) -> None:
    """Prune every coupled channel group of Torch-Pruning's dependency graph to its level's
    planned width, keeping its most important channels evenly over its GroupNorm groups."""
    import torch_pruning as tp
    from diffusers.models.attention_processor import Attention

    n_levels, groups = len(widths), int(cfg["norm_num_groups"])
    inner = {
        id(m) for a in work.modules() if isinstance(a, Attention) for m in (a.to_q, a.to_k, a.to_v)
    }
    ignored = []
    for name, m in work.named_modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        level = _level_of(name, n_levels)
        if level is None or id(m) in inner or widths[level] == cfg["block_out_channels"][level]:
            ignored.append(m)
    dg = tp.DependencyGraph().build_dependency(
        work, example_inputs=_example(work), forward_fn=_forward, verbose=False
    )
    scorer = _importance(config)
    names = {m: n for n, m in work.named_modules()}
    plans = []
    for group in dg.get_all_groups(
        ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]
    ):
        root, handler = group[0].dep.target.module, group[0].dep.handler
        level = _level_of(names[root], n_levels)
        width = dg.get_out_channels(root)
        if width != cfg["block_out_channels"][level]:
            raise UnsupportedModelError(
                f"{names[root]} has {width} output channels, not its level's "
                f"{cfg['block_out_channels'][level]}; this UNet layout is not supported"
            )
        scores = scorer(group).detach().cpu().float()
        plans.append((root, handler, _keep_balanced(scores, widths[level], groups)))
    for root, handler, idxs in plans:
        group = dg.get_pruning_group(root, handler, idxs)
        if not dg.check_pruning_group(group):
            raise UnsupportedModelError(f"Torch-Pruning refused to prune {names[root]}")
        group.prune()


def alphas_cumprod_steps(cfg: Mapping[str, Any]) -> int:
    """Number of training timesteps the time embedding is refitted over."""
    return int(cfg.get("num_train_timesteps") or 1000)


def _refit_time_mlp(old: nn.Module, new: nn.Module, steps: int) -> dict[str, torch.Tensor]:
    """Weights of ``new.time_embedding.linear_1`` (fewer sinusoidal inputs) that best match
    the old layer's output over fractional timesteps ``[0, steps)`` (least squares)."""
    t = torch.linspace(0, steps - 1, 8 * steps)
    with torch.no_grad():
        target = old.time_embedding.linear_1(old.time_proj(t).float()).double()
        feats = new.time_proj(t).double()
        design = torch.cat([feats, torch.ones(len(t), 1, dtype=torch.float64)], 1)
        sol = torch.linalg.lstsq(design, target).solution
    return {
        "time_embedding.linear_1.weight": sol[:-1].T.float().contiguous(),
        "time_embedding.linear_1.bias": sol[-1].float().contiguous(),
    }


# --- save / load -------------------------------------------------------------------------


def save_pruned(model: Any, folder: str | Path) -> Path:
    """Write a pruned ``UNet2DModel`` as a diffusers folder: ``config.json``,
    ``diffusion_pytorch_model.safetensors`` and ``prune.json`` (the :class:`Prune` settings,
    the original and pruned widths)."""
    from diffspeed.models.io import atomic_write_json

    net = _unet_of(model)
    folder = Path(folder)
    net.save_pretrained(folder, safe_serialization=True)
    cfg = dict(net.config)
    atomic_write_json(
        folder / PRUNE_JSON,
        {
            "prune": cfg.get("_diffspeed_prune"),
            "block_out_channels": list(cfg["block_out_channels"]),
        },
    )
    return folder


def load_pruned(folder: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a folder written by :func:`save_pruned` (safetensors only) as a ``UNet2DModel``
    in eval mode with gradients off."""
    from diffusers import UNet2DModel

    from diffspeed.models.io import check_safetensors_folder

    folder = Path(folder)
    check_safetensors_folder(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise WeightsError(
            f"{folder} is not a pruned-model folder (needs config.json and {WEIGHTS_NAME}); "
            "write one with save_pruned"
        )
    cls_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if cls_name != "UNet2DModel":
        raise WeightsError(f"{folder} holds a {cls_name}, not a UNet2DModel")
    net = UNet2DModel.from_pretrained(folder, use_safetensors=True)
    return net.to(device).eval().requires_grad_(False)


# --- distillation fine-tune --------------------------------------------------------------


class PrunedDistillLoss:
    """``w(t) ||eps_student(x_t, t, c) - eps_teacher(x_t, t, c)||^2`` per sample, ``x_t`` from
    the data at a uniform random timestep, labels dropped to the unconditional value at
    ``label_dropout`` (guidance keeps working); for :func:`diffspeed.distill.trainer.train`.

    ``w(t) = min(1 + sigma_t^2, max_weight)`` is the noise error seen as a velocity error
    (``1 / alpha_bar_t``), capped: a noise-prediction error at a high noise level moves the
    sampler's trajectory far more than the same error near the data, so plain noise MSE
    (``max_weight=1``) under-trains the high noise levels.
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        uncond: Mapping[str, Any],
        label_dropout: float,
        max_weight: float = 100.0,
    ) -> None:
        self.ac = torch.as_tensor(alphas_cumprod).float()
        self.uncond = dict(uncond)
        self.label_dropout = label_dropout
        self.max_weight = max_weight

    def __call__(
        self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any
    ) -> torch.Tensor:
        ac = self.ac.to(x0.device)
        t = ctx.randint(0, ac.numel())
        eps = ctx.randn(*x0.shape[1:])
        drop = ctx.rand() < self.label_dropout
        cond = {
            k: torch.where(drop, torch.as_tensor(self.uncond[k]).to(v), v)
            if k in self.uncond
            else v
            for k, v in cond.items()
        }
        a = ac[t].view(-1, *([1] * (x0.ndim - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.no_grad():
            target = teacher(xt, t, **cond).sample
        weight = (1 / ac[t]).clamp(max=self.max_weight)
        err = (student(xt, t, **cond).sample - target).pow(2).flatten(1).mean(1)
        return weight * err


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    data: tuple[torch.Tensor, Mapping[str, torch.Tensor]],
    out_dir: str | Path,
    train: Any = None,
    *,
    alphas_cumprod: torch.Tensor | None = None,
    uncond: Mapping[str, Any] | None = None,
    label_dropout: float = 0.15,
    max_weight: float = 100.0,
    progress: bool = False,
) -> nn.Module:
    """Distil ``teacher`` (the unpruned ``UNet2DModel``) into the pruned ``student`` through
    the shared training loop; returns the trained weights (the EMA when ``train`` has one)
    as a new module in eval mode. ``train`` is a :class:`~diffspeed.distill.trainer.TrainConfig`
    (default: 2000 steps, batch 64, lr 2e-4, EMA 0.995); the run directory ``out_dir`` keeps
    the checkpoint and logs, and an interrupted run resumes.

    ``uncond`` (the model's unconditional ``cond`` values, e.g. ``{"class_labels": 10}``)
    replaces a ``label_dropout`` share of the conditions so guidance keeps working;
    ``max_weight`` caps the loss weight :class:`PrunedDistillLoss` puts on high noise levels
    (1: plain noise MSE)."""
    from diffspeed.distill.trainer import TrainConfig, TrainData
    from diffspeed.distill.trainer import train as train_loop

    config = train or TrainConfig(steps=2000, batch_size=64, lr=2e-4, warmup=100, ema_decay=0.995)
    if alphas_cumprod is None:
        alphas_cumprod = _ddpm_alphas_cumprod(alphas_cumprod_steps(_config(teacher)))
    net = copy.deepcopy(student).float().requires_grad_(True)
    loss = PrunedDistillLoss(
        alphas_cumprod, uncond or {}, label_dropout if uncond else 0.0, max_weight
    )
    x0, cond = data
    result = train_loop(
        net,
        loss,
        config,
        out_dir,
        data=TrainData(x0, dict(cond)),
        teacher=copy.deepcopy(teacher).float(),
        run_info={
            "widths": list(_config(student)["block_out_channels"]),
            "max_weight": max_weight,
        },
        progress=progress,
    )
    return copy.deepcopy(result.best).eval().requires_grad_(False)


__all__ = [
    "Prune",
    "count_macs",
    "finetune",
    "load_pruned",
    "plan_widths",
    "prune",
    "save_pruned",
    "with_network",
]
