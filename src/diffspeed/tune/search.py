"""``diffspeed.tune``: the fastest configuration of a model that meets a quality bar.

The search, all on calibration noises (a reference set with seeds from about 2e9, see
:data:`CALIBRATION_SPEC_SEED`) whose high-accuracy reference samples are computed once (and
cached on disk) and shared by every candidate and by the schedule optimiser:

1. **Students** (the shipped distilled ones, when the model is the embedded teacher) are tried
   first; one that survives stage 4 bounds the rest: nothing estimated slower is tried.
2. **Branches** (solver x named schedule): step counts are tried in increasing order on the
   first rung (a few noises; within a margin of the target a candidate is kept); a branch
   stops at its first step count meeting the target outright, since more steps are only
   slower, or once it is estimated slower than the bound (early stopping).
3. **Refinements** of the ``top_branches`` fastest passing branches: AYS / DP schedules tuned
   on the fly for fewer steps, exposure-bias shifts, cache configs, and extension dimensions.
4. **Successive halving and validation**: the first-rung survivors, in order of estimated
   latency, go through rungs of growing calibration sets with shrinking margins (a failure
   drops the candidate); a survivor of the last rung is re-checked on disjoint validation
   seeds (the reference set of :mod:`diffspeed.eval.reference`), and the first that meets the
   constraint there is chosen; one that fails validation is rejected and the next one tried.

Samples of a candidate are kept between rungs (per-sample seeds make sample ``i`` independent
of the batch), so a promotion only computes the new noises.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.tune.config import Candidate, TunedConfig, save_tuned
from diffspeed.tune.latency import LatencyCalibrator
from diffspeed.tune.quality import Quality, measure, parse_quality
from diffspeed.tune.runner import Runner
from diffspeed.tune.space import EXTENSIONS, SearchSpace

log = logging.getLogger("diffspeed")

#: Default calibration rung sizes (noises) per metric: fidelity needs few, FDD needs many.
RUNGS = {"psnr": (8, 32, 96), "rmse": (8, 32, 96), "fdd-ratio": (100, 250, 500)}
#: Default validation sizes: the first samples of the reference set (seeds 0 .. n-1).
VALIDATION = {"psnr": 100, "rmse": 100, "fdd-ratio": 1000}
#: ``ReferenceSpec.seed`` of the calibration sets (plus the search's ``seed``): their noise
#: seeds ``seed * 1_000_003 + i`` start near 2e9, disjoint from the validation sets' (0, 1, ...).
CALIBRATION_SPEC_SEED = 2000
#: Calibration noises used by the schedule optimiser (AYS / DP).
SCHEDULE_NOISES = 16


@dataclass(frozen=True)
class Budget:
    """A cost bound: at most ``nfe`` network evaluations and/or ``latency_s`` per image."""

    nfe: int | None = None
    latency_s: float | None = None

    def __str__(self) -> str:
        parts = []
        if self.nfe is not None:
            parts.append(f"nfe<={self.nfe}")
        if self.latency_s is not None:
            parts.append(f"latency<={1e3 * self.latency_s:g}ms")
        return ", ".join(parts) or "none"


def parse_budget(text: str | int | Budget | None) -> Budget:
    """Parse ``None``, ``"nfe=8"``, ``8`` (NFE), ``"latency=20ms"`` / ``"latency=0.02s"``."""
    if text is None or isinstance(text, Budget):
        return text or Budget()
    if isinstance(text, int) and not isinstance(text, bool):
        text = f"nfe={text}"
    nfe, lat = None, None
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        try:
            if key == "nfe":
                nfe = int(value)
            elif key == "latency":
                scale = 1e-3 if value.endswith("ms") else 1.0
                lat = float(value.removesuffix("ms").removesuffix("s")) * scale
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"budget {text!r}: write nfe=N and/or latency=20ms (per image), e.g. --budget nfe=8"
            ) from None
    if (nfe is not None and nfe < 1) or (lat is not None and lat <= 0):
        raise ConfigError(f"budget {text!r} must be positive")
    return Budget(nfe, lat)


@dataclass
class Trial:
    """One candidate the search evaluated.

    Attributes:
        candidate: the configuration.
        nfe, full: network calls per run, and how many of them were computed in full.
        latency_s: estimated seconds per image.
        values: metric value per rung reached; ``sizes``: noises per rung.
        validation: the metric on the validation seeds (when it got there).
        status: ``pruned`` (failed rung 0), ``dropped@rN``, ``rejected`` (failed validation),
            ``chosen``, ``passed`` (met rung 0, never needed further) or ``over budget``.
    """

    candidate: Candidate
    nfe: int
    full: int
    latency_s: float
    values: dict[int, float] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    validation: float | None = None
    status: str = "pruned"

    @property
    def best_value(self) -> float:
        """The value at the largest rung reached (validation when there)."""
        if self.validation is not None:
            return self.validation
        return self.values[max(self.values)] if self.values else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return {
            "label": self.candidate.label,
            "config": self.candidate.to_dict(),
            "nfe": self.nfe,
            "full_calls": self.full,
            "latency_ms": 1e3 * self.latency_s,
            "values": {str(k): v for k, v in self.values.items()},
            "sizes": {str(k): v for k, v in self.sizes.items()},
            "validation": self.validation,
            "status": self.status,
        }


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        tuned: the chosen configuration with its report (what ``save`` writes).
        met: whether the chosen configuration meets the constraint on the validation seeds
            (False: none did; ``tuned`` is then the best found and ``message`` says so).
        message: a one-paragraph summary.
        trials: every candidate evaluated.
        cost: what the search itself spent: ``nfe`` (network calls), ``sample_evals`` (calls x
            batch), ``seconds`` (wall), ``cpu_seconds`` (process CPU time over all threads; on a
            shared machine it measures the work better than the wall time does).
    """

    tuned: TunedConfig
    met: bool
    message: str
    trials: list[Trial]
    cost: dict[str, Any]

    @property
    def config(self) -> Candidate:
        """The chosen candidate."""
        return self.tuned.config

    def save(self, path: str | Path) -> Path:
        """Write the tuned-configuration JSON file."""
        return save_tuned(self.tuned, path)

    def write_report(self, out: str | Path) -> Path:
        """Write ``out/index.html`` (Pareto plot of everything tried) and ``out/trials.json``."""
        from diffspeed.tune.report import write_report

        return write_report(self, out)


# --- the search -----------------------------------------------------------------------------
class _Search:
    """State of one search: noises, references, samples kept per candidate, costs."""

    def __init__(self, den: Any, quality: Quality, budget: Budget, space: SearchSpace,
                 guidance: float, rungs: tuple[int, ...], distance: Callable | None,
                 reference_steps: int, seed: int, timing_batch: int,
                 progress: Callable[[str], None]) -> None:  # fmt: skip
        from diffspeed.eval.reference import ReferenceSpec, reference_set

        self.den, self.q, self.budget, self.space = den, quality, budget, space
        self.guidance, self.rungs, self.distance = guidance, rungs, distance
        self.say = progress
        self.runner = Runner(den)
        # the calibration set is a reference set (cached on disk like the validation one)
        # whose seeds start near 2e9: disjoint from the validation seeds (0, 1, ...)
        nfe0 = den.nfe
        cal = reference_set(
            ReferenceSpec(n=rungs[-1], seed=CALIBRATION_SPEC_SEED + seed, guidance=guidance,
                          solver="heun", steps=reference_steps, schedule="karras"),
            denoiser=den,
        )  # fmt: skip
        self.seeds = cal.spec.seeds()
        self.noise, self.cond, self.ref = cal.noise, cal.cond, cal.samples
        self.t0 = time.perf_counter()
        self.sample_evals = (den.nfe - nfe0) * rungs[-1]
        self.reference_nfe = den.nfe - nfe0
        self.ref_distance = {m: float(distance(self.ref[:m])) for m in rungs} if distance else {}
        self.kept: dict[str, tuple[torch.Tensor, Any]] = {}
        self.trials: dict[str, Trial] = {}
        tb = max(1, timing_batch)
        self.timing_batch = tb
        self.latency = LatencyCalibrator(self.runner, self.noise[:tb], self._cond(slice(0, tb)),
                                         guidance)  # fmt: skip
        self.schedules: dict[tuple, tuple[float, ...] | None] = {}
        self.schedule_nfe = 0
        #: latency of the fastest configuration validated so far: slower ones are not tried
        self.bound = math.inf

    def _cond(self, sl: slice) -> dict[str, Any]:
        return self.den.cond_spec.select(self.cond, sl) if self.cond else {}

    # samples of a candidate on the first m calibration noises (kept and extended)
    def samples(self, cand: Candidate, m: int) -> tuple[torch.Tensor, Any]:
        key = cand.label + repr(cand.sigmas)
        have, stats = self.kept.get(key, (torch.empty(0), None))
        parts = [have]
        for i in range(len(have), m, 250):
            sl = slice(i, min(i + 250, m))
            x, stats = self.runner.run(cand, self.noise[sl], self._cond(sl), self.seeds[sl])
            parts.append(x.float().cpu())
            self.sample_evals += stats.nfe * (sl.stop - sl.start)
        x = torch.cat(parts) if len(parts) > 1 else have
        self.kept[key] = (x, stats)
        return x, stats

    def value(self, cand: Candidate, rung: int) -> tuple[float, Any]:
        m = self.rungs[rung]
        x, stats = self.samples(cand, m)
        v = measure(self.q, x, self.ref[:m], self.distance, self.ref_distance.get(m))
        return v, stats

    def within_budget(self, trial: Trial) -> bool:
        b = self.budget
        if b.nfe is not None and trial.nfe > b.nfe:
            return False
        return b.latency_s is None or trial.latency_s <= b.latency_s

    def try_rung0(self, cand: Candidate) -> Trial | None:
        """Evaluate ``cand`` on rung 0 (once); None when it cannot run on this model or is
        estimated slower than the best configuration validated so far."""
        from diffspeed.errors import DiffspeedError

        key = cand.label + repr(cand.sigmas)
        if key in self.trials:
            return self.trials[key]
        if self.bound < math.inf and not (cand.cache or cand.student or cand.extensions):
            from diffspeed.solvers.registry import SOLVERS

            nfe = SOLVERS[cand.solver].nfe(int(cand.steps or 1))
            if self.latency.estimate(cand, nfe, nfe) / self.timing_batch >= self.bound:
                return None  # slower than a configuration already validated: not tried
        try:
            v, stats = self.value(cand, 0)
        except DiffspeedError as e:  # e.g. a cache that does not support this network
            log.info("tune: %s cannot run here: %s", cand.label, e)
            self.trials[key] = None  # type: ignore[assignment]
            return None
        lat = self.latency.estimate(cand, stats.nfe, stats.full) / self.timing_batch
        trial = Trial(cand, stats.nfe, stats.full, lat, {0: v}, {0: self.rungs[0]})
        trial.status = "passed" if self.q.passes(v, 0) else "pruned"
        if trial.status == "passed" and not self.within_budget(trial):
            trial.status = "over budget"
        self.trials[key] = trial
        return trial

    def scan(self, make: Callable[[int], Candidate | None], steps: range,
             stop_above: float = math.inf) -> Trial | None:  # fmt: skip
        """Try step counts in order; stop at the first one meeting the target on rung 0
        without slack (returned; the ones before it within the slack stay candidates too)."""
        from diffspeed.solvers.registry import SOLVERS

        for k in steps:
            cand = make(k)
            if cand is None:
                continue
            if cand.solver and SOLVERS[cand.solver].nfe(k) > self.max_nfe:
                break
            trial = self.try_rung0(cand)
            if trial is None:
                return None
            if trial.latency_s > min(stop_above, self.bound):
                return None
            if trial.status == "over budget":
                return None
            if trial.status == "passed" and self.q.passes(trial.values[0]):
                return trial
        return None

    @property
    def max_nfe(self) -> int:
        return min(self.space.max_nfe, self.budget.nfe or self.space.max_nfe)

    # tuned schedules, computed once per (method, solver, steps) on SCHEDULE_NOISES noises
    def tuned_sigmas(self, method: str, solver: str, steps: int, base: str):
        from diffspeed.errors import DiffspeedError
        from diffspeed.solvers.optimize import _coordinate_search, dp_schedules
        from diffspeed.solvers.sampling import sample
        from diffspeed.solvers.schedules import get_sigmas

        key = (
            method,
            solver if method == "ays" else None,
            steps,
            base if method == "ays" else None,
        )
        if key in self.schedules:
            return self.schedules[key]
        m = min(SCHEDULE_NOISES, len(self.noise))
        den = self.runner.guided(self.guidance)
        noise, cond, ref = self.noise[:m], self._cond(slice(0, m)), self.ref[:m]
        nfe0 = self.den.nfe
        try:
            with torch.inference_mode():
                if method == "ays":

                    def loss(sig: torch.Tensor) -> float:
                        x = sample(den, noise, solver, schedule=sig, cond=cond)
                        return float((x.double() - ref.double()).pow(2).mean())

                    start = get_sigmas(den, base, steps)
                    sig, _ = _coordinate_search(den, start, loss, 3, True)
                    self.schedules[key] = tuple(sig.tolist())
                else:
                    wanted = list(range(1, self.max_nfe + 1))
                    found, _ = dp_schedules(den, noise, wanted, cond=cond)
                    for k, sig in found.items():
                        self.schedules[("dp", None, k, None)] = tuple(sig.tolist())
        except DiffspeedError as e:
            log.info("tune: %s schedule not available: %s", method, e)
            self.schedules[key] = None
        spent = self.den.nfe - nfe0
        self.schedule_nfe += spent
        self.sample_evals += spent * m
        return self.schedules.get(key)


def _is_embedded_teacher(den: Any) -> bool:
    from diffspeed.core.contract import network_of
    from diffspeed.models.io import weights_digest
    from diffspeed.models.teacher import load_teacher

    mine = weights_digest(network_of(den))
    return mine is not None and mine == weights_digest(network_of(load_teacher()))


def default_students(den: Any, guidance: float) -> tuple[str, ...]:
    """Shipped fixed-recipe students that run at ``guidance`` (only for the embedded teacher)."""
    from diffspeed.distill.students import read_student_config, shipped_students
    from diffspeed.solvers.registry import SOLVERS

    if not _is_embedded_teacher(den):
        return ()
    out = []
    for name in shipped_students():
        try:
            recipe = read_student_config(name)["recipe"]
        except (ConfigError, KeyError, OSError, ValueError) as e:
            log.debug("tune: skipping %s: %s", name, e)
            continue
        solver = recipe.get("solver")
        if solver not in SOLVERS or SOLVERS[solver].stochastic:
            continue
        if recipe.get("w_conditioned") or float(recipe.get("guidance", 1.0)) == guidance:
            out.append(name)
    return tuple(out)


def _named_branches(s: _Search) -> list[Trial]:
    """Stage 1: the first passing step count of each solver x named schedule branch."""
    from diffspeed.errors import DiffspeedError
    from diffspeed.solvers.schedules import get_sigmas

    passers = []
    for solver in s.space.solvers:
        for schedule in s.space.schedules:
            try:
                get_sigmas(s.den, schedule, 2)
            except DiffspeedError:  # e.g. a discrete spacing on a continuous-time model
                continue

            def make(k: int, solver: str = solver, schedule: str = schedule) -> Candidate:
                return Candidate(solver, k, schedule, guidance=s.guidance)

            t = s.scan(make, range(1, s.max_nfe + 1))
            if t is not None:
                passers.append(t)
        s.say(f"branches of {solver}: {len(passers)} passing so far")
    return passers


def _refine(s: _Search, top: list[Trial]) -> None:
    """Stage 3: tuned schedules, shifts, caches and extensions on the best branches."""
    from diffspeed.solvers.registry import SOLVERS

    done_solvers: set[str] = set()
    for t in top:
        c = t.candidate
        k_star = int(c.steps or 1)
        if c.solver not in done_solvers:
            done_solvers.add(c.solver)
            for method in s.space.tuned_schedules:
                for k in range(k_star - 1, 0, -1):
                    sig = s.tuned_sigmas(method, c.solver, k, c.schedule)
                    if sig is None:
                        break
                    cand = replace(c, steps=k, schedule=method, sigmas=sig)
                    trial = s.try_rung0(cand)
                    if trial is None or trial.status != "passed":
                        break
        for shift in s.space.time_shifts:

            def shifted(k: int, shift: float = shift, c: Candidate = c) -> Candidate:
                return replace(c, steps=k, time_shift=shift)

            s.scan(shifted, range(max(1, k_star - 3), k_star))
        for cache in s.space.caches:

            def cached(k: int, cache: dict = cache, c: Candidate = c) -> Candidate:
                return replace(c, steps=k, cache=dict(cache))

            limit = SOLVERS[c.solver].steps_for_nfe(s.max_nfe)
            s.scan(cached, range(k_star, limit + 1), stop_above=t.latency_s)
        for name in s.space.extensions:
            for variant in EXTENSIONS[name].expand(c):
                s.try_rung0(variant)
        s.say(f"refined {c.label}")


def _validate(s: _Search, trial: Trial, validation: Any) -> float:
    """The metric of ``trial`` on the validation seeds (the reference set)."""
    xs = []
    n = len(validation.noise)
    spec = s.den.cond_spec
    for i in range(0, n, 250):
        sl = slice(i, min(i + 250, n))
        cond = spec.select(validation.cond, sl) if validation.cond else {}
        x, stats = s.runner.run(trial.candidate, validation.noise[sl], cond,
                                validation.spec.seeds()[sl])  # fmt: skip
        xs.append(x.float().cpu())
        s.sample_evals += stats.nfe * (sl.stop - sl.start)
    x = torch.cat(xs)
    ref_d = float(s.distance(validation.samples)) if s.distance else None
    return measure(s.q, x, validation.samples, s.distance, ref_d)


def _next_in_branch(s: _Search, t: Trial) -> Trial | None:
    """After ``t`` failed a larger rung or validation: the next step counts of its branch on
    rung 0, up to the first one kept there (None when the branch is exhausted or too slow)."""
    from diffspeed.solvers.registry import SOLVERS

    c = t.candidate
    if c.student or c.sigmas is not None or c.steps is None:
        return None  # fixed recipes and tuned schedules have no next step count here
    for k in range(int(c.steps) + 1, SOLVERS[c.solver].steps_for_nfe(s.max_nfe) + 1):
        trial = s.try_rung0(replace(c, steps=k))
        if trial is None or trial.status == "over budget":
            return None
        if trial.status == "passed" and trial.latency_s < s.bound:
            return trial
    return None


def _halving(s: _Search, val: Any) -> Trial | None:
    """Stage 4: first-rung survivors faster than ``s.bound``, fastest first, climb the rungs
    (a failure drops them) and are re-checked on the validation seeds; the first to meet the
    constraint there is returned (and bounds the rest of the search), one that fails is
    rejected. A dropped or rejected candidate's branch resumes at its next step count."""
    import heapq

    q, rungs = s.q, s.rungs
    heap = [(t.latency_s, t.nfe, i, t) for i, t in enumerate(s.trials.values())
            if t is not None and t.status == "passed"]  # fmt: skip
    heapq.heapify(heap)
    order = len(heap)
    while heap:
        lat, _, _, t = heapq.heappop(heap)
        if lat >= s.bound:
            break
        if t.status != "passed":  # queued twice (resumed from a branch): already decided
            continue
        ok = True
        for r in range(1, len(rungs)):
            v, _ = s.value(t.candidate, r)
            t.values[r], t.sizes[r] = v, rungs[r]
            if not q.passes(v, r if r < len(rungs) - 1 else 2):
                t.status, ok = f"dropped@r{r}", False
                break
        if ok:
            t.validation = _validate(s, t, val)
            if q.passes(t.validation):
                t.status = "chosen"
                s.bound = t.latency_s
                return t
            t.status = "rejected"
            s.say(f"{t.candidate.label}: passed tuning, failed validation ({t.validation:.4g})")
        nxt = _next_in_branch(s, t)
        if nxt is not None and nxt.values.keys() == {0}:
            order += 1
            heapq.heappush(heap, (nxt.latency_s, nxt.nfe, order, nxt))
    return None


def tune(
    denoiser: Any,
    quality: str | Quality = "psnr=30",
    budget: str | int | Budget | None = None,
    *,
    space: SearchSpace | None = None,
    guidance: float | None = None,
    fdd: Callable[[torch.Tensor], float] | None = None,
    rungs: tuple[int, ...] | None = None,
    validation: int | None = None,
    validation_seed: int = 0,
    reference_steps: int = 100,
    seed: int = 0,
    timing_batch: int = 1,
    progress: bool | Callable[[str], None] = False,
) -> TuneResult:
    """Find the fastest configuration of ``denoiser`` that meets ``quality`` within ``budget``.

    Args:
        denoiser: any diffspeed denoiser (``D(x, sigma, **cond)``, unguided) whose
            ``cond_spec`` names its sample shape and example conditions.
        quality: ``"psnr=30"``, ``"rmse=0.05"`` or ``"fdd-ratio=1.05"`` (see
            :mod:`diffspeed.tune.quality`).
        budget: ``None`` (minimise latency), ``"nfe=8"`` or ``"latency=20ms"`` (per image).
        space: the search space (default :class:`SearchSpace`; students default to the
            shipped ones when ``denoiser`` is the embedded teacher).
        guidance: classifier-free guidance scale (default: the teacher's recommended 1.25
            for a guidable digits model, else 1.0).
        fdd: ``fdd(samples) -> float``, a distance to the data for ``fdd-ratio`` (default:
            the Frechet Digits Distance for digits models).
        rungs: calibration noises per rung (default by metric, :data:`RUNGS`).
        validation: validation samples: the first ``validation`` samples of the reference
            set with seed ``validation_seed`` (seeds 0.. are disjoint from calibration's).
        reference_steps: Heun (Karras) steps of the high-accuracy reference sampler.
        seed: selects the calibration noises (the search is deterministic given it).
        timing_batch: images per timed run of the latency model (latency is per image).
        progress: print progress lines (or a callable receiving them).

    Returns:
        a :class:`TuneResult`; ``met`` is False when no candidate met the constraint on the
        validation seeds (then the best found is returned and ``message`` says so).
    """
    from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
    from diffspeed.models.scoring import scoring_for

    q = parse_quality(quality)
    b = parse_budget(budget)
    say = progress if callable(progress) else (print if progress else (lambda _m: None))
    spec = denoiser.cond_spec
    if not spec.sample_shape:
        raise ConfigError(
            "the model does not say its sample shape; give its CondSpec a sample_shape"
        )
    digits = scoring_for(spec) is not None
    if guidance is None:
        guidance = RECOMMENDED_GUIDANCE if digits and spec.guidable else 1.0
    if q.metric == "fdd-ratio" and fdd is None:
        if not digits:
            raise ConfigError(
                "fdd-ratio needs a distance to the data; this model has no embedded metric. "
                "Pass fdd=callable(samples) -> float (API) or use --quality psnr=30 / rmse=..."
            )
        from diffspeed.eval import metrics

        fdd = metrics.fdd
    space = space or SearchSpace()
    if space.students is None:
        space = replace(space, students=default_students(denoiser, guidance))
    rungs = tuple(rungs or RUNGS[q.metric])
    if len(rungs) < 1 or any(b2 < a for a, b2 in zip(rungs, rungs[1:], strict=False)):
        raise ConfigError(f"rungs must be a non-decreasing list of noise counts, got {rungs}")
    n_val = int(validation or VALIDATION[q.metric])
    if validation_seed == CALIBRATION_SPEC_SEED + seed:
        raise ConfigError(
            f"validation_seed {validation_seed} is the calibration set's seed; validation "
            "must use other noises (the default 0 is the report set)"
        )
    distance = fdd if q.metric == "fdd-ratio" else None

    t_start, cpu_start = time.perf_counter(), time.process_time()
    nfe_start = denoiser.nfe
    say(f"reference on {rungs[-1]} calibration noises (heun {reference_steps} karras)")
    s = _Search(denoiser, q, b, space, guidance, rungs, distance, reference_steps, seed,
                timing_batch, say)  # fmt: skip

    say(f"validation reference: {n_val} samples, seeds from {validation_seed}")
    val = reference_set(
        ReferenceSpec(
            n=n_val,
            seed=validation_seed,
            guidance=guidance,
            solver="heun",
            steps=reference_steps,
            schedule="karras",
        ),
        denoiser=denoiser,
    )
    # the students first: one validated early bounds everything slower out of the search
    for name in space.students or ():
        s.try_rung0(Candidate(student=name, guidance=guidance))
    chosen = _halving(s, val)
    passers = _named_branches(s)
    top = sorted(passers, key=lambda t: (t.latency_s, t.nfe))[: space.top_branches]
    _refine(s, top)
    faster = _halving(s, val)
    if faster is not None:
        if chosen is not None:
            chosen.status = "met (slower)"
        chosen = faster
    trials = [t for t in s.trials.values() if t is not None]

    met = chosen is not None
    if chosen is None:  # best quality found at the deepest rung reached, validated
        pool = [t for t in trials if t.values]
        if not pool:
            raise ConfigError("no candidate could run on this model; widen the search space")
        chosen = min(pool, key=lambda t: (-max(t.values), q.key(t.values[max(t.values)]),
                                          t.latency_s))  # fmt: skip
        if chosen.validation is None:
            chosen.validation = _validate(s, chosen, val)
        chosen.status = "best found"
    cost = {
        "nfe": denoiser.nfe - nfe_start,
        "sample_evals": s.sample_evals,
        "seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - cpu_start,
        "threads": torch.get_num_threads(),
        "candidates": len(trials),
        "reference_nfe": s.reference_nfe,
        "schedule_nfe": s.schedule_nfe,
        "latency_model": s.latency.model.to_dict(),
    }
    c = chosen.candidate
    tuning_value = chosen.values[max(chosen.values)]
    report = {
        "met": met,
        "label": c.label,
        "nfe": chosen.nfe,
        "latency_ms_estimate": 1e3 * chosen.latency_s,
        "tuning": {"value": tuning_value, "noises": chosen.sizes[max(chosen.sizes)]},
        "validation": {
            "value": chosen.validation,
            "samples": n_val,
            "seeds": f"{validation_seed * 1_000_003}..+{n_val - 1}",
        },  # fmt: skip
        "shift": chosen.validation - tuning_value,
        "budget": str(b),
        "guidance": guidance,
        "rungs": list(rungs),
        "seed": seed,
        "search_cost": cost,
        "rejected_in_validation": [t.candidate.label for t in trials if t.status == "rejected"],
    }
    if met:
        message = (
            f"chose {c.label} ({chosen.nfe} NFE, ~{1e3 * chosen.latency_s:.2f} ms/image "
            f"estimated): {q.metric} {tuning_value:.4g} on {chosen.sizes[max(chosen.sizes)]} "
            f"calibration noises, {chosen.validation:.4g} on {n_val} validation samples "
            f"(target {q}); search: {len(trials)} candidates, {cost['nfe']} network calls, "
            f"{cost['seconds']:.1f} s"
        )
    elif q.passes(chosen.validation):
        message = (
            f"no configuration met {q} (budget {b}) on both the calibration noises and the "
            f"validation samples; the best found, {c.label}, reaches {chosen.validation:.4g} on "
            f"{n_val} validation samples but missed on calibration. Re-tune with another seed, "
            "a looser target or a larger max_nfe"
        )
        log.warning("tune: %s", message)
    else:
        message = (
            f"no configuration met {q} (budget {b}) on the validation samples; the best found "
            f"is {c.label} with {q.metric} {chosen.validation:.4g} on {n_val} validation "
            "samples. Loosen the target, raise the budget (or max_nfe) or widen the space"
        )
        log.warning("tune: %s", message)
    return TuneResult(TunedConfig(c, str(q), report), met, message, trials, cost)


def load_tune_model(model: str | None, device: str | None = None) -> Any:
    """The denoiser for ``--model``: digits (None), mini-sd, a diffusers pipeline folder, a
    diffusers ``unet/`` + ``scheduler/`` folder, a teacher ``.safetensors`` or
    ``module:function`` (resolved as ``diffspeed bench --model`` does)."""
    from diffspeed.bench.pipeline import load_text_to_image, resolve_model
    from diffspeed.bench.runner import ModelOptions, load_model

    kind, source = resolve_model(model)
    dev = torch.device(device or "cpu")
    if kind == "pipeline":
        return _pipeline_denoiser(model, source, load_text_to_image, dev)
    return load_model(ModelOptions(source=source, device=device), 1.0, dev).denoiser


def _pipeline_denoiser(model: str | None, folder: str | None, load: Callable, dev: Any) -> Any:
    from diffspeed.core.adapters import from_diffusers

    if model == "mini-sd":
        from diffspeed.models.minisd.quality import load_pipeline, mini_sd_denoiser

        return mini_sd_denoiser(load_pipeline())
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None or getattr(pipe, "text_encoder", None) is not None:
        raise ConfigError(
            f"{folder}: tune runs on the pipeline's denoising network; for a text-to-image "
            "pipeline give a module:function returning a denoiser whose CondSpec has example "
            "prompts (see diffspeed.models.minisd.quality.mini_sd_denoiser)"
        )
    net.to(dev).eval().requires_grad_(False)
    return from_diffusers(net, pipe.scheduler)
