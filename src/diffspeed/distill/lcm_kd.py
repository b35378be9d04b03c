"""LCM-LoRA distilled from a full-weight LCM: a two-stage route to the adapter.

LCM-LoRA's own objective (:class:`~diffspeed.distill.lcm.LCMLoss` on a frozen teacher plus
LoRA) bootstraps the low-rank student from an EMA copy of itself through the teacher's ODE.
Here the consistency function is learned first with full weights (``diffspeed distill
lcm``), and the adapter then regresses it directly at the guidance scale it is for:

``loss = d(f_lora(x_t, t), f_lcm(x_t, t, w))``,  ``x_t = x0 + sigma_t z``,

with ``t`` drawn per sample from the LCM grid (``k - 1, 2k - 1, ..., T - 1``: the timesteps
the ``lcm`` schedule samples at). There is no teacher ODE step and no target network, so the
regression target is fixed from the first step. The adapter is still a plain LoRA of the
frozen base (diffusers format, plug-in for fine-tunes of the base).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from diffspeed.core.contract import network_of
from diffspeed.distill.consistency import METRICS, consistency_info, distance, timestep_grid
from diffspeed.distill.students import SCALE_KEY
from diffspeed.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class LCMKD:
    """Settings of the regression onto a trained consistency model; the grid (``k``),
    ``strength`` and boundary scalings are the source's.

    Attributes:
        source: the full-weight consistency student (``.safetensors`` from ``distill
            lcm``, or a shipped name such as ``"lcm"``).
        guidance: the scale the adapter bakes in (passed to a w-conditioned source).
        metric: the distance (pseudo-Huber, c = 0.00054 sqrt(d); or ``"l2"``).
    """

    source: str
    guidance: float = 1.25
    metric: str = "pseudo_huber"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise unknown_name("consistency metric", self.metric, METRICS)
        if self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class LCMKDLoss:
    """``loss(student, teacher, x0, cond, ctx) -> [B]``: the student's consistency output
    against the source's at the same noisy input (``teacher`` is unused)."""

    def __init__(self, config: LCMKD) -> None:
        from diffspeed.distill.consistency import load_consistency
        from diffspeed.distill.wcond import WCondUNet

        self.config = config
        self.emas: dict[str, float] = {}  # the target is fixed: no target network
        self.k = int(consistency_info(config.source).get("config", {}).get("k", 20))
        self.source, recipe = load_consistency(config.source)
        self.source.requires_grad_(False).eval()
        self.w_conditioned = isinstance(network_of(self.source), WCondUNet)
        if not self.w_conditioned and recipe.guidance != config.guidance:
            raise ConfigError(
                f"{config.source} bakes in guidance {recipe.guidance} (it takes no scale); "
                f"fit the adapter at that guidance, not {config.guidance}"
            )

    def __call__(self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        c = self.config
        grid = timestep_grid(student, self.k, self.source.strength).to(x0.device)
        idx = ctx.randint(1, len(grid)).to(x0.device)
        sigma = grid[idx]
        view = (-1,) + (1,) * (x0.ndim - 1)
        x = x0 + sigma.view(view).to(x0.dtype) * ctx.randn(*x0.shape[1:])
        scond = cond
        if self.w_conditioned:
            w = torch.full((x0.shape[0],), c.guidance, device=x0.device)
            scond = {**cond, SCALE_KEY: w}
        if self.source.device != x0.device:  # once, on the first batch
            self.source.to(x0.device)
        with torch.no_grad():
            target = self.source(x, sigma, **scond)
        return distance(student(x, sigma, **cond), target, c.metric)
