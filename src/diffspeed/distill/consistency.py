"""The consistency parameterisation as a denoiser wrapper (Song et al. 2023, eq. 5; LCM eq. 9).

A consistency function maps any point ``x`` at noise level ``sigma`` of a probability-flow
trajectory to the trajectory's end at ``sigma_min``. It is parameterised around a denoiser ``D``
(whose output is already an ``x0`` estimate) as

    f(x, sigma) = c_skip(sigma) * x + c_out(sigma) * D(x, sigma)
    c_skip = sigma_data^2 / (s^2 + sigma_data^2),   c_out = s / sqrt(s^2 + sigma_data^2),
    s = scale * (sigma - sigma_min),

so ``c_skip = 1`` and ``c_out = 0`` at ``sigma = sigma_min``: the boundary condition
``f(x, sigma_min) = x`` holds exactly, for any network. ``scale`` stretches the noise axis like
the LCM scheduler's ``timestep_scaling``: with the default 100, ``f`` is ``D`` to within 0.3 %
for ``sigma > 0.1``, so a student initialised from the teacher starts as a good ``x0`` estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.contract import innermost, network_of
from diffspeed.core.denoiser import DenoiserWrapper
from diffspeed.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class Boundary:
    """The boundary-condition scalings of a consistency model.

    Attributes:
        sigma_data: the data standard deviation in the scalings (0.5 as in Song et al. and LCM).
        scale: stretch of ``sigma - sigma_min`` (LCM's ``timestep_scaling`` in sigma units).
    """

    sigma_data: float = 0.5
    scale: float = 100.0

    def __post_init__(self) -> None:
        if not (self.sigma_data > 0 and self.scale > 0):
            raise ConfigError(
                f"Boundary needs sigma_data > 0 and scale > 0, got {self.sigma_data}, {self.scale}"
            )

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return asdict(self)

    def scalings(self, sigma: torch.Tensor, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out)`` in float64 for a ``[B]`` sigma (exactly ``(1, 0)`` at sigma_min).

        The difference ``sigma - sigma_min`` is taken in sigma's own dtype, so a float32 sigma
        equal to the float32 ``sigma_min`` gives exactly zero.
        """
        gap = (sigma - torch.as_tensor(sigma_min, dtype=sigma.dtype)).double().clamp_min(0)
        s = self.scale * gap
        sd2 = self.sigma_data**2
        return sd2 / (s**2 + sd2), s / torch.sqrt(s**2 + sd2)


class ConsistencyDenoiser(DenoiserWrapper):
    """``f(x, sigma) = c_skip x + c_out D(x, sigma)`` around a denoiser (same contract).

    Args:
        inner: the denoiser ``D`` (e.g. a student UNet wrapped with ``from_diffusers``); its
            ``sigma_min`` is the boundary.
        boundary: the scalings (:class:`Boundary`).
        strength: the top of the noise range it was trained on, as the ``lcm`` schedule's
            ``strength`` (1: up to the model's ``sigma_max``); :func:`sample_consistency`
            samples with it.

    The result is itself a denoiser (``f`` estimates the trajectory's end, i.e. ``x0``), so any
    solver runs on it; the consistency samplers (``solver="consistency"`` / ``"lcm"``) are the
    ones it is trained for.
    """

    def __init__(self, inner: Any, boundary: Boundary = Boundary(), strength: float = 1.0) -> None:
        super().__init__(inner)
        if not 0 < strength <= 1:
            raise ConfigError(f"strength must be in (0, 1], got {strength}")
        self.boundary = boundary
        self.strength = float(strength)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The consistency function ``f(x, sigma)`` (``x`` is ``[B, ...]``, sigma scalar or [B])."""
        d = self.inner(x, sigma, **cond)
        s = self.inner.check_sigma(sigma, x.shape[0]).to(x.device)
        c_skip, c_out = self.boundary.scalings(s, self.inner.sigma_min)
        view = (-1,) + (1,) * (x.ndim - 1)
        return c_skip.view(view).to(d.dtype) * x.to(d.dtype) + c_out.view(view).to(d.dtype) * d


# --- pieces the consistency losses share (CD, CT, LCM) ---------------------------------------


def karras_grid(den: Any, n: int, rho: float = 7.0, sigma_max: float | None = None) -> torch.Tensor:
    """``n`` increasing float64 sigmas from ``sigma_min`` to ``sigma_max`` (the model's unless
    given), uniform in ``sigma**(1/rho)`` (Song et al. 2023, Sec. 3 / EDM eq. 5)."""
    if n < 2:
        raise ConfigError(f"a consistency discretisation needs >= 2 points, got {n}")
    top = den.sigma_max if sigma_max is None else min(float(sigma_max), den.sigma_max)
    lo, hi = den.sigma_min ** (1 / rho), top ** (1 / rho)
    return (lo + torch.linspace(0, 1, n, dtype=torch.float64) * (hi - lo)) ** rho


def timestep_grid(den: Any, k: int, strength: float = 1.0) -> torch.Tensor:
    """LCM's skipping-step grid (Luo et al. 2023, Sec. 4.3): the sigmas of the timesteps
    ``0, k-1, 2k-1, ..., int((T // k) * strength) k - 1`` of a discrete-time model, increasing
    (float64); ``strength`` as in the ``lcm`` schedule (the top the sampler starts from)."""
    from diffspeed.solvers.schedules import _discrete

    T, d = _discrete(den, "lcm")
    if not 1 <= k <= T // 2 or not 0 < strength <= 1:
        raise ConfigError(f"need 1 <= k <= {T // 2} and 0 < strength <= 1, got {k}, {strength}")
    top = max(1, int((T // k) * strength))
    ts = torch.cat([torch.zeros(1), torch.arange(1, top + 1) * k - 1]).double()
    return d.t_to_sigma(ts.unique())


def curriculum(step: int, total: int, n_start: int, n_end: int) -> int:
    """Discretisation points at ``step`` (improved CT, Song & Dhariwal 2023, eq. 5):
    ``N(k) = min(s0 * 2^floor(k / K'), s1) + 1`` with ``K' = floor(K / (log2(s1/s0) + 1))``,
    where ``s0 = n_start - 1`` and ``s1 = n_end - 1`` (constant when they are equal)."""
    s0, s1 = n_start - 1, n_end - 1
    if s0 < 1 or s1 < s0:
        raise ConfigError(f"need 2 <= n_start <= n_end, got {n_start}, {n_end}")
    k_prime = max(1, int(total / (math.log2(s1 / s0) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def group_index(
    ctx: Any, high: int, groups: int, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """One random grid index in ``[0, high)`` per group of consecutive samples ``[local B]``.

    The global micro-batch is cut into ``groups`` equal runs sharing an index, so a teacher
    solver (which takes one sigma schedule per call) runs once per group. ``probs`` (``[high]``)
    weights the draw (iCT's lognormal index distribution); uniform otherwise. The draw comes
    from the step's generator, identically on every process.
    """
    g = max(1, min(groups, ctx.global_batch))
    if probs is None:
        idx = torch.randint(0, high, (g,), generator=ctx.generator)
    else:
        idx = torch.multinomial(probs.double(), g, replacement=True, generator=ctx.generator)
    per_sample = idx[torch.arange(ctx.global_batch) * g // ctx.global_batch]
    return per_sample[ctx.local].to(ctx.device)


def teacher_step(
    teacher: Any,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    *,
    solver: str = "ddim",
    cond: dict[str, Any] | None = None,
    guidance: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """One step of a registered diffspeed solver on the teacher's PF-ODE, ``sigma -> sigma_next``.

    ``sigma``/``sigma_next`` are per-sample ``[B]``; the solver runs once per distinct pair
    (solvers take one schedule per call). ``guidance`` (a float or ``[B]``) wraps the teacher
    in classifier-free guidance against its spec's unconditional input — LCM's CFG-augmented
    ODE.
    """
    from diffspeed.core.guidance import guidance as cfg
    from diffspeed.solvers.registry import SOLVERS

    fn = SOLVERS[solver].fn
    cond = cond or {}
    out = torch.empty_like(x)
    pairs = torch.stack([sigma.double(), sigma_next.double()], 1).cpu()
    uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    for g, pair in enumerate(uniq):
        rows = (inverse == g).nonzero().squeeze(1).to(x.device)
        den = teacher
        if guidance is not None:
            w = guidance if not isinstance(guidance, torch.Tensor) else guidance[rows]
            den = cfg(teacher, w)
        sub = teacher.cond_spec.select(cond, rows)
        out[rows] = fn(den, x[rows], pair, cond=sub, generator=None, callback=None)
    return out


METRICS = ("l2", "pseudo_huber")


def distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-sample distance ``[B]``: mean squared error (``"l2"``) or the pseudo-Huber metric
    ``sqrt(||a - b||^2 + c^2) - c`` of improved CT (Song & Dhariwal 2023, Sec. 3.3), with
    ``c = 0.00054 sqrt(d)``."""
    diff = (a - b).flatten(1).float()
    if metric == "l2":
        return diff.pow(2).mean(1)
    if metric == "pseudo_huber":
        c = 0.00054 * math.sqrt(diff.shape[1])
        return torch.sqrt(diff.pow(2).sum(1) + c**2) - c
    raise unknown_name("consistency metric", metric, METRICS)


def consistency_student(
    teacher: Any,
    boundary: Boundary = Boundary(),
    *,
    parameterization: str = "eps",
    w_conditioned: bool = False,
    strength: float = 1.0,
    init: Any = None,
) -> ConsistencyDenoiser:
    """A trainable consistency student initialised from a discrete-time VP teacher.

    A copy of the teacher's network (``distill.students.make_student``: ``parameterization``
    ``"eps"``, ``"v"`` or ``"x0"``; optionally wrapped in a guidance-scale-conditioned
    :class:`~diffspeed.distill.wcond.WCondUNet`) inside :class:`ConsistencyDenoiser`.
    ``init`` (a student denoiser, e.g. from ``load_student``) replaces the teacher as the
    starting point; its own parameterisation is kept and ``parameterization`` is ignored.
    """
    from diffspeed.distill.students import PARAMETERIZATIONS, make_student

    if init is not None:
        names = {v: k for k, v in PARAMETERIZATIONS.items()}
        teacher, parameterization = init, names[init.prediction]
    inner = make_student(teacher, parameterization, w_conditioned=w_conditioned)
    return ConsistencyDenoiser(inner, boundary, strength)


def consistency_recipe(
    den: ConsistencyDenoiser, steps: int = 4, *, guidance: float = 1.0, w_range=None
) -> Any:
    """The sampling recipe stored with a consistency student: the ``lcm`` sampler on the LCM
    scheduler's timesteps (``steps`` of them at the student's ``strength``; any other count
    works at load time)."""
    from diffspeed.distill.students import Recipe
    from diffspeed.solvers.schedules import get_sigmas

    sigmas = get_sigmas(den, "lcm", steps, strength=den.strength)
    return Recipe(
        "lcm",
        tuple(float(s) for s in sigmas),
        guidance=guidance,
        w_conditioned=w_range is not None,
        w_range=tuple(w_range) if w_range is not None else None,
    )


def top_sigma(den: Any, strength: float) -> float | None:
    """The first sigma of the ``lcm`` schedule at ``strength`` (None for the full range)."""
    if strength == 1.0:
        return None
    from diffspeed.solvers.schedules import get_sigmas

    return float(get_sigmas(innermost(den), "lcm", 1, strength=strength)[0])


def train_consistency(
    student: ConsistencyDenoiser,
    loss: Any,
    teacher: Any,
    config: Any,
    out_dir: Path,
    *,
    data: Any,
    recipe: Any,
    opts: Any,
    info: dict[str, Any] | None = None,
) -> Path:
    """Train a consistency student with the shared loop and save its EMA weights.

    Writes ``out_dir/student.safetensors`` (+ ``.json``: architecture, ``recipe``, and
    ``info`` with the boundary scalings and the method's config) and returns its path.
    ``opts`` are the run's :class:`~diffspeed.distill.methods.RunOptions`.
    """
    from diffspeed.distill.students import save_student
    from diffspeed.distill.trainer import train
    from diffspeed.models.io import weights_digest

    run_info = {"teacher": weights_digest(network_of(teacher))}
    result = train(
        student,
        loss,
        config,
        out_dir,
        data=data,
        teacher=teacher,
        resume=opts.resume,
        force=opts.force,
        evaluate=opts.evaluate(recipe) if opts.evaluate is not None else None,
        run_info=run_info,
        progress=opts.progress,
    )
    best = result.best
    meta = {
        "boundary": best.boundary.to_dict(),
        "strength": best.strength,
        "method": loss.config.method,
        "config": loss.config.to_dict(),
        "train": config.to_dict(),
        **run_info,
        **(info or {}),
    }
    path = out_dir / "student.safetensors"
    save_student(path, best.inner, recipe, **meta)
    return path


def load_consistency(
    name_or_path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[ConsistencyDenoiser, Any]:
    """Load a consistency student (shipped name such as ``"cd"`` / ``"lcm"``, or a path):
    ``(ConsistencyDenoiser, Recipe)``. Sample it with :func:`sample_consistency` or
    ``diffspeed.sample(den, noise, "lcm", steps, "lcm", cond=recipe.cond(cond))``."""
    from diffspeed.distill.students import load_student

    den, recipe = load_student(name_or_path, device=device)
    info = consistency_info(name_or_path)
    strength = float(info.get("strength", 1.0))
    return ConsistencyDenoiser(den, Boundary(**info["boundary"]), strength), recipe


def consistency_info(name_or_path: str | Path) -> dict[str, Any]:
    """The ``info`` of a consistency student's config (boundary scalings, strength, the
    method's settings); a :class:`~diffspeed.errors.WeightsError` for any other student."""
    from diffspeed.distill.students import read_student_config
    from diffspeed.errors import WeightsError

    info = read_student_config(name_or_path).get("info", {})
    if "boundary" not in info:
        raise WeightsError(
            f"{name_or_path} is not a consistency student (no boundary scalings in its config); "
            "load it with diffspeed.distill.students.load_student"
        )
    return info


def sample_consistency(
    student: Any,
    noise: torch.Tensor,
    cond: Any,
    steps: int = 4,
    *,
    guidance: float | None = None,
    generator: Any = None,
    solver: str = "lcm",
    schedule: str = "lcm",
) -> torch.Tensor:
    """Few-step samples of a consistency student: ``(denoiser, recipe)``, a name / path for
    :func:`load_consistency`, or a bare :class:`ConsistencyDenoiser` (e.g. from ``load_lora``).

    ``cond`` is the model's conditioning (a dict, or a bare tensor for a model with one cond
    key); ``generator`` seeds the re-noising (per-sample seeds make samples batch-independent);
    the ``lcm`` schedule starts at the student's trained ``strength``.
    """
    from diffspeed.distill.students import as_cond
    from diffspeed.solvers import sample

    if isinstance(student, ConsistencyDenoiser):  # e.g. load_lora(...): no recipe
        den, recipe = student, None
    else:
        den, recipe = student if isinstance(student, tuple) else load_consistency(student)
    cond = {k: v.to(den.device) for k, v in as_cond(den, cond).items()}
    if recipe is not None:
        cond = recipe.cond(cond, guidance)
    opts = {"strength": den.strength} if schedule == "lcm" else None
    return sample(
        den, noise, solver, steps, schedule, cond=cond, generator=generator, schedule_options=opts
    )
