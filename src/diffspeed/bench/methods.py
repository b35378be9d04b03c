"""Row kinds: how a bench row becomes something that generates images.

Every row is resolved by a dict lookup on ``row.kind`` in :data:`METHODS`. A method builder is
``fn(row, ctx) -> Generator``; other areas plug theirs in with::

    from diffspeed.bench import register_method

    @register_method("progressive", family="student")
    def _progressive(row, ctx):
        student = load_student(row.student)          # your loader
        return MyGenerator(student, steps=row.steps)  # has generate(), nfe, rounds, size

and a row ``{method = "progressive", student = "progressive-4", steps = 4}`` in a bench TOML
(or in ``diffspeed/bench/demo.toml``) runs it. The ``family`` colours the Pareto plot.

Built in here: ``solver`` (``diffspeed.sample``), ``peer`` (a diffusers scheduler driven step by
step through ``scheduler.step`` on the same denoiser, same noise) and ``cache``
(``diffspeed.apply_cache`` around a solver run).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from diffspeed.bench.config import Row
from diffspeed.core.contract import CondSpec, cond_to, innermost
from diffspeed.errors import ConfigError, UnsupportedModelError, unknown_name
from diffspeed.models.scoring import ModelScoring
from diffspeed.registry import Registry

#: Families a method may belong to (they colour the Pareto plot; order = legend order).
FAMILIES = ("solver", "peer", "cache", "student", "compress", "other")


@runtime_checkable
class Generator(Protocol):
    """What a row builder returns.

    Attributes:
        nfe: network evaluations per image of the last :meth:`generate` (a guided call that
            batches cond and uncond counts once).
        rounds: sequential network rounds of the last run (``nfe`` unless parallel).
        model_size_bytes: bytes of the weights the method runs (student, quantized model...).

    A generator may also set ``disk_size_bytes`` (bytes of its weight files; compress rows).
    """

    nfe: int
    rounds: int
    model_size_bytes: int

    def generate(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        """Map unit Gaussian ``noise [B, C, H, W]`` drawn for the conditions ``cond`` (the
        model's ``cond`` keys, one value per sample, on the CPU) to images ``[B, C, H, W]``;
        ``seeds[i]`` seeds any fresh noise of sample ``i`` (stochastic samplers: pass
        ``generator=list(seeds)`` to ``diffspeed.sample``)."""
        ...


@dataclass
class BenchContext:
    """What a builder may use: the model under test and the run's settings.

    Attributes:
        denoiser: the unguided denoiser of the model (``D(x, sigma, **cond)``); its
            ``cond_spec`` says the ``cond`` keys and the uncond guidance contrasts with.
        sample_shape: ``(C, H, W)`` of one image.
        guidance: the run's default guidance scale.
        device: where the model lives (noise and conditions are moved there).
        model_size_bytes: bytes of the model's weights.
        scoring: the model's domain metrics (None: fidelity to the reference only).
    """

    denoiser: Any
    sample_shape: tuple[int, ...]
    guidance: float
    device: torch.device
    model_size_bytes: int
    scoring: ModelScoring | None = None

    @property
    def cond_spec(self) -> CondSpec:
        """The model's conditioning spec."""
        return self.denoiser.cond_spec

    def scale(self, row: Row) -> float:
        """The guidance scale of ``row`` (its own or the default)."""
        return self.guidance if row.guidance is None else float(row.guidance)

    def guided(self, scale: float) -> Any:
        """The denoiser with classifier-free guidance ``scale`` (itself when not applicable)."""
        from diffspeed.core.guidance import guidance

        if not self.cond_spec.conditional or scale == 1.0:
            return self.denoiser
        if not self.cond_spec.guidable:
            raise ConfigError(
                f"guidance {scale} needs the model's unconditional input, which it does not "
                "declare; set guidance = 1.0, or name it with --uncond (a JSON object of the "
                "unconditional inputs, e.g. the null class)"
            )
        return guidance(self.denoiser, scale)

    def cond(self, cond: Mapping[str, Any]) -> dict[str, Any]:
        """``cond`` on the model's device."""
        return cond_to(cond, self.device)


Builder = Callable[[Row, BenchContext], Generator]


@dataclass(frozen=True)
class MethodSpec:
    """A registered row kind: its builder and its family (for colours and grouping)."""

    build: Builder
    family: str


METHODS: Registry[MethodSpec] = Registry("bench method")


def load_method_modules(extra: Sequence[str] = ()) -> None:
    """Register the distilled students' row kinds (resolved through the ``DISTILLERS``
    registry) and import ``extra`` modules (a bench's ``plugins``) so they register theirs."""
    from diffspeed.distill.methods import bench_rows

    for kind, build in bench_rows().items():
        if kind not in METHODS:
            register_method(kind, family="student")(build)
    for name in extra:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import bench plugin module {name!r}: {e}") from None


def register_method(name: str, *, family: str = "other") -> Callable[[Builder], Builder]:
    """Decorator: register ``build(row, ctx) -> Generator`` for rows with ``method = name``.

    Args:
        name: the row's ``method`` value.
        family: one of :data:`FAMILIES` (colour and group in the report).
    """
    if family not in FAMILIES:
        raise unknown_name("method family", family, FAMILIES)

    def deco(fn: Builder) -> Builder:
        METHODS.register(name)(MethodSpec(fn, family))
        return fn

    return deco


def build_generator(row: Row, ctx: BenchContext) -> Generator:
    """Resolve ``row`` through :data:`METHODS` and check what the builder returned."""
    gen = METHODS[row.kind].build(row, ctx)
    missing = [a for a in ("generate", "nfe", "rounds", "model_size_bytes") if not hasattr(gen, a)]
    if missing:
        raise ConfigError(
            f"row {row.label!r}: the {row.kind!r} builder returned {type(gen).__name__} "
            f"without {missing}; see diffspeed.bench.Generator"
        )
    return gen


def family_of(row: Row) -> str:
    """The family of a row's method."""
    return METHODS[row.kind].family


# --- solver rows ------------------------------------------------------------------------------
class SolverGenerator:
    """A diffspeed solver on a (guided) denoiser; optionally wrapped in a context (a cache)."""

    def __init__(
        self,
        denoiser: Any,
        ctx: BenchContext,
        row: Row,
        *,
        around: Callable[[], Any] | None = None,
    ) -> None:
        from diffspeed.solvers.registry import SOLVERS

        if row.solver is None:
            raise ConfigError(f"row {row.label!r}: a {row.kind} row needs 'solver'")
        if row.solver not in SOLVERS:
            raise unknown_name("solver", row.solver, SOLVERS.names())
        self.den, self.ctx, self.row, self.around = denoiser, ctx, row, around
        self.nfe = 0
        self.rounds = 0
        self.model_size_bytes = ctx.model_size_bytes

    def _run(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        from diffspeed.solvers import sample

        r = self.row
        x, info = sample(
            self.den,
            noise.to(self.ctx.device),
            r.solver,
            r.steps if r.steps is not None else 50,
            r.schedule,
            cond=self.ctx.cond(cond),
            generator=list(seeds),
            schedule_options=r.schedule_options,
            return_info=True,
            **r.options,
        )
        self.nfe = int(info["nfe"])
        self.rounds = int(info.get("rounds", info["nfe"]))
        return x

    def generate(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        """Sample ``noise`` with the row's solver, steps and schedule."""
        if self.around is None:
            return self._run(noise, cond, seeds)
        with self.around():
            return self._run(noise, cond, seeds)


@register_method("solver", family="solver")
def _solver(row: Row, ctx: BenchContext) -> Generator:
    return SolverGenerator(ctx.guided(ctx.scale(row)), ctx, row)


@register_method("cache", family="cache")
def _cache(row: Row, ctx: BenchContext) -> Generator:
    from diffspeed.cache import apply_cache, config_from_dict

    if not row.cache:
        raise ConfigError(f"row {row.label!r}: a cache row needs a 'cache' table with 'method'")
    cfg = config_from_dict(dict(row.cache))
    den = ctx.guided(ctx.scale(row))
    return SolverGenerator(den, ctx, row, around=lambda: apply_cache(ctx.denoiser, cfg))


# --- peers: diffusers schedulers on the same denoiser ----------------------------------------
#: Deterministic diffusers schedulers a ``peer`` row may name.
PEERS = (
    "DDIMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
)


def _peer_scheduler(name: str, den: Any, options: dict[str, Any]) -> Any:
    import diffusers

    if name not in PEERS:
        raise unknown_name("peer scheduler", name, PEERS)
    inner = innermost(den)
    if not hasattr(inner, "alphas_cumprod") or not hasattr(inner, "t_to_sigma"):
        raise UnsupportedModelError(
            "peer rows drive diffusers schedulers over discrete timesteps and need a "
            f"discrete-time VP model (diffspeed.wrap / from_diffusers), not {type(inner).__name__}"
        )
    ac = inner.alphas_cumprod.double().cpu()
    betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    cls = getattr(diffusers, name)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "trained_betas"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"peer {name} has no option(s) {unknown}; it accepts: {', '.join(sorted(allowed))}"
        )
    return cls(
        num_train_timesteps=ac.numel(),
        trained_betas=betas.tolist(),
        prediction_type="epsilon",
        **options,
    )


class PeerGenerator:
    """A diffusers scheduler driven through ``set_timesteps`` / ``scale_model_input`` / ``step``.

    The network output the scheduler needs (eps) is read off the same denoiser the diffspeed
    rows use: ``eps = (x_ve - D(x_ve, sigma_t)) / sigma_t`` with ``x_ve = x_t * sqrt(1 +
    sigma_t^2)``, so guidance, caches and NFE counting are shared, and the starting noise is the
    same (diffusers' ``x_T = noise * init_noise_sigma`` is our ``noise * sqrt(1 + sigma_max^2)``).
    """

    def __init__(self, den: Any, ctx: BenchContext, row: Row) -> None:
        if row.peer is None:
            raise ConfigError(f"row {row.label!r}: a peer row needs 'peer'")
        if row.steps is None:
            raise ConfigError(f"row {row.label!r}: a peer row needs 'steps'")
        self.den, self.ctx, self.row = den, ctx, row
        self.scheduler = _peer_scheduler(row.peer, den, dict(row.options))
        self.nfe = 0
        self.rounds = 0
        self.model_size_bytes = ctx.model_size_bytes

    def generate(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        """Run the scheduler's sampling loop from ``noise``."""
        sched, den = self.scheduler, self.den
        inner = innermost(den)
        cond = self.ctx.cond(cond)
        sched.set_timesteps(self.row.steps)
        nfe0 = den.nfe
        with torch.inference_mode():
            x = noise.to(self.ctx.device).float() * sched.init_noise_sigma
            for t in sched.timesteps:
                # the VP input the scheduler would feed the network, seen in VE form
                x_t = sched.scale_model_input(x, t).double()
                sigma = inner.t_to_sigma(torch.as_tensor(t, dtype=torch.float64).reshape(1))
                x_ve = x_t * torch.sqrt(1 + sigma**2).to(x_t.device)
                s = sigma.expand(x.shape[0]).to(x.device)
                x0 = den(x_ve.float(), s, **cond).double()
                eps = (x_ve - x0) / sigma.to(x.device)
                x = sched.step(eps.float(), t, x).prev_sample
        self.nfe = self.rounds = den.nfe - nfe0
        return x


@register_method("peer", family="peer")
def _peer(row: Row, ctx: BenchContext) -> Generator:
    return PeerGenerator(ctx.guided(ctx.scale(row)), ctx, row)


@register_method("compress", family="compress")
def _compress(row: Row, ctx: BenchContext) -> Generator:
    from diffspeed.compress.bench import build_compressed

    return build_compressed(row, ctx)


@register_method("tuned", family="other")
def _tuned(row: Row, ctx: BenchContext) -> Generator:
    """A ``diffspeed tune`` file's configuration (``tuned = "tuned.json"``)."""
    from diffspeed.tune.apply import TunedSampler
    from diffspeed.tune.config import load_tuned

    tuned = load_tuned(row.tuned)
    if row.guidance is not None and float(row.guidance) != tuned.config.guidance:
        raise ConfigError(
            f"row {row.label!r}: {row.tuned} was tuned at guidance {tuned.config.guidance}; "
            "drop 'guidance' from the row or re-tune at the scale you want"
        )
    return TunedSampler(ctx.denoiser, tuned, ctx.device, ctx.model_size_bytes)
