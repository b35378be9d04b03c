"""Distilled students on disk: build, save, load and sample them.

A student file is one safetensors weight file whose header metadata holds its config (a copy
is written beside it as ``.json`` for reading; the header is authoritative, so a kill between
the two writes leaves a complete student). The config holds the
architecture (the teacher's diffusers ``UNet2DModel`` config, optionally wrapped by
:class:`~diffspeed.distill.wcond.WCondUNet`), its parameterisation, the noise schedule and the
**sampling recipe** it was distilled for: solver name, number of steps and the exact sigmas.
``load_student(name_or_path)`` returns ``(denoiser, recipe)``; :func:`sample_student` runs it
through :func:`diffspeed.sample` with that recipe.

Shipped students live in ``diffspeed/models/assets/students/<name>.safetensors`` (+ ``.json``),
stored int8-compressed (:func:`diffspeed.models.io.compress_int8`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.core.contract import UNDECLARED, CondSpec, innermost
from diffspeed.distill.wcond import WCondUNet, WEmbedConfig, build_wcond
from diffspeed.errors import (
    ConfigError,
    UnsupportedModelError,
    WeightsError,
    did_you_mean,
    unknown_name,
)
from diffspeed.models.io import (
    atomic_write_json,
    load_state_into,
    load_weights,
    read_metadata,
    save_weights,
)

#: Where shipped students live.
STUDENTS_DIR = Path(__file__).resolve().parents[1] / "models" / "assets" / "students"
#: The safetensors metadata key holding a student's config (JSON).
CONFIG_KEY = "diffspeed_student"
#: ``kind`` of a student JSON config.
KIND = "diffspeed_student"
#: The cond key of the guidance scale a w-conditioned student takes.
SCALE_KEY = "guidance_scale"
#: Student parameterisations (diffusers prediction types).
PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


@dataclass(frozen=True)
class Recipe:
    """How a student samples: the solver, its steps and the exact sigmas it was trained on.

    Attributes:
        solver: a :func:`diffspeed.sample` solver name (``"ddim"`` for progressive students).
        sigmas: float64 schedule ``[steps + 1]`` ending in 0.
        guidance: the guidance scale the student bakes in (fixed) or defaults to.
        w_conditioned: the student takes ``guidance_scale`` in ``cond`` (any ``w`` in
            ``w_range``), one forward per step either way.
        w_range: the trained guidance range of a w-conditioned student.
    """

    solver: str
    sigmas: tuple[float, ...]
    guidance: float = 1.0
    w_conditioned: bool = False
    w_range: tuple[float, float] | None = None

    @property
    def steps(self) -> int:
        """Number of sampling steps (network evaluations for a one-eval-per-step solver)."""
        return len(self.sigmas) - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        d["w_range"] = list(self.w_range) if self.w_range else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`."""
        w_range = d.get("w_range")
        return cls(
            solver=d["solver"],
            sigmas=tuple(float(s) for s in d["sigmas"]),
            guidance=float(d.get("guidance", 1.0)),
            w_conditioned=bool(d.get("w_conditioned", False)),
            w_range=tuple(float(v) for v in w_range) if w_range else None,
        )

    def cond(
        self, cond: Mapping[str, Any], guidance: float | torch.Tensor | None = None
    ) -> dict[str, Any]:
        """The ``cond`` a student needs: the model's, plus the guidance scale if w-conditioned.

        ``cond`` holds one value per sample (its first tensor's length is the batch).
        """
        out = dict(cond)
        if self.w_conditioned:
            batch = next((len(v) for v in out.values() if isinstance(v, torch.Tensor)), None)
            if batch is None:
                raise ConfigError("a w-conditioned student needs a batched cond to size the scale")
            w = self.guidance if guidance is None else guidance
            out[SCALE_KEY] = torch.as_tensor(w, dtype=torch.float32).expand(batch)
        elif guidance is not None and float(guidance) != self.guidance:
            raise ConfigError(
                f"this student bakes in guidance {self.guidance}; it cannot sample at "
                f"{float(guidance)} (only w-conditioned students take a scale)"
            )
        return out


def as_cond(denoiser: Any, cond: Mapping[str, Any] | torch.Tensor) -> dict[str, Any]:
    """``cond`` as a dict: a bare tensor is the value of the model's only cond key (besides a
    w-conditioned student's guidance scale)."""
    if isinstance(cond, Mapping):
        return dict(cond)
    keys = tuple(k for k in denoiser.cond_spec.keys or () if k != SCALE_KEY)
    if len(keys) != 1:
        raise ConfigError(
            f"a bare tensor cond needs a model with exactly one cond key (it has {keys}); "
            "pass cond as a dict {key: value}"
        )
    return {keys[0]: cond}


def with_scale(spec: CondSpec, net: nn.Module) -> CondSpec:
    """The spec of a student around ``net``: a w-conditioned network (:class:`WCondUNet`) also
    takes the guidance scale (``cond["guidance_scale"]``, one per sample)."""
    if not isinstance(net, WCondUNet) or spec.keys is None or SCALE_KEY in spec.keys:
        return spec
    return replace(spec, keys=(*spec.keys, SCALE_KEY))


def spec_to_json(spec: CondSpec) -> dict[str, Any] | None:
    """A JSON form of a conditioning spec (``None`` when undeclared; examples are not kept)."""
    if spec.keys is None:
        return None
    uncond = {
        k: {"value": torch.as_tensor(v).tolist(), "dtype": str(torch.as_tensor(v).dtype)[6:]}
        for k, v in (spec.uncond or {}).items()
    }
    return {
        "keys": list(spec.keys),
        "uncond": uncond,
        "batch_dims": dict(spec.batch_dims),
        "sample_shape": list(spec.sample_shape) if spec.sample_shape else None,
        "classes": dict(spec.classes),
    }


def spec_from_json(config: Mapping[str, Any]) -> CondSpec:
    """The conditioning spec recorded in a student config (older configs: their null class)."""
    if "cond_spec" not in config:
        from diffspeed.models.compat import legacy_student_spec

        return legacy_student_spec(dict(config))
    d = config["cond_spec"]
    if d is None:
        return UNDECLARED
    uncond = {
        k: torch.tensor(v["value"], dtype=getattr(torch, v["dtype"]))
        for k, v in d["uncond"].items()
    }
    shape = d.get("sample_shape")
    return CondSpec(
        keys=tuple(d["keys"]),
        uncond=uncond,
        batch_dims={k: int(v) for k, v in d.get("batch_dims", {}).items()},
        sample_shape=tuple(shape) if shape else None,
        classes={k: int(v) for k, v in d.get("classes", {}).items()},
    )


def make_student(
    teacher: Any,
    parameterization: str = "v",
    *,
    w_conditioned: bool = False,
    w_embed: WEmbedConfig | None = None,
) -> DiscreteVPDenoiser:
    """A trainable student initialised from the teacher's weights (a deep copy).

    Args:
        teacher: the teacher denoiser (a discrete VP denoiser, guided or not) or a student.
        parameterization: ``"v"``, ``"x0"`` or ``"eps"`` - what the student network predicts
            (Salimans & Ho 2022, sec. 4: eps fails at few steps; v or x0 are stable).
        w_conditioned: wrap the UNet in :class:`WCondUNet` (a no-op at initialisation) unless
            it already is one.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise unknown_name("parameterization", parameterization, PARAMETERIZATIONS)
    inner = innermost(teacher)
    if not isinstance(inner, DiscreteVPDenoiser):
        raise UnsupportedModelError(
            "step distillation here needs a discrete-time VP teacher (diffspeed.wrap / "
            f"from_diffusers / load_teacher), got {type(inner).__name__}"
        )
    if inner.model is None:
        raise UnsupportedModelError("the teacher denoiser wraps no nn.Module to copy")
    net = copy.deepcopy(inner.model)
    if w_conditioned and not isinstance(net, WCondUNet):
        net = WCondUNet(net, w_embed)
    net.requires_grad_(True).train()
    den = DiscreteVPDenoiser(net, inner.alphas_cumprod, PARAMETERIZATIONS[parameterization])
    den.cond_spec = with_scale(inner.cond_spec, net)
    return den


def frozen_copy(student: DiscreteVPDenoiser) -> DiscreteVPDenoiser:
    """A no-gradient, eval-mode deep copy (the next round's teacher)."""
    return copy.deepcopy(student).requires_grad_(False).eval()


def student_config(student: DiscreteVPDenoiser, recipe: Recipe, **info: Any) -> dict[str, Any]:
    """The JSON config of a student: architecture, parameterisation, schedule, recipe, info."""
    net = student.model
    if isinstance(net, WCondUNet):
        arch: dict[str, Any] = net.config()
    else:
        arch = {"kind": "unet", "unet": {k: v for k, v in dict(net.config).items() if k[0] != "_"}}
        if type(net).__name__ != "UNet2DModel":
            arch["class"] = type(net).__name__
    return {
        "kind": KIND,
        "arch": arch,
        "prediction": student.prediction,
        "alphas_cumprod": student.alphas_cumprod.tolist(),
        "cond_spec": spec_to_json(student.cond_spec),
        "recipe": recipe.to_dict(),
        "info": info,
    }


def save_student(
    path: str | Path,
    student: DiscreteVPDenoiser,
    recipe: Recipe,
    *,
    int8: bool = False,
    **info: Any,
) -> Path:
    """Write ``path`` (safetensors, atomic, the config in its header), then a readable copy of
    the config at ``path.with_suffix('.json')``.

    ``int8=True`` stores large weights int8-compressed (about 4x smaller than fp32).
    ``info`` (JSON-able) is recorded in the config (method, teacher digest, training...).
    """
    path = Path(path)
    cfg = student_config(student, recipe, **info)
    meta = {CONFIG_KEY: json.dumps(cfg, sort_keys=True)}
    save_weights(path, student.model.state_dict(), cfg, metadata=meta, int8=int8)
    atomic_write_json(path.with_suffix(".json"), cfg)
    return path


def _resolve(name_or_path: str | Path) -> Path:
    if not isinstance(name_or_path, str | Path):
        raise WeightsError(
            f"a student is a shipped name or a .safetensors path, got "
            f"{type(name_or_path).__name__}; pass one of: {', '.join(shipped_students())}"
        )
    p = Path(name_or_path)
    if p.is_dir():
        found = sorted(q.name for q in p.glob("*.safetensors"))[:3]
        raise WeightsError(
            f"student {p} is a folder; pass its .safetensors file"
            + (f" (this folder holds {', '.join(found)})" if found else "")
        )
    if p.suffix == ".safetensors" and p.is_file():
        return p
    if p.with_suffix(".safetensors").is_file() and p.suffix in ("", ".json"):
        return p.with_suffix(".safetensors")
    shipped = STUDENTS_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    raise WeightsError(
        f"no student {str(name_or_path)!r}{did_you_mean(str(name_or_path), shipped_students())}: "
        "not an existing .safetensors path and not a shipped student; pass a path written by "
        f"save_student or one of: {', '.join(shipped_students()) or 'none'}"
    )


def check_finished(path: str | Path, expected: Mapping[str, Any], force: bool = False) -> None:
    """Refuse to reuse a finished stage's student written with other settings.

    Compares ``expected`` with the ``info`` recorded in the student's config (keys the file
    does not record are not compared; the loop's logistics fields never are) and names the
    differing fields, unless ``force``.
    """
    from diffspeed.distill.trainer import LOGISTICS, check_same_run

    stored = read_student_config(path).get("info", {})

    def comparable(d: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: d[k] for k in expected if k in stored}
        if isinstance(out.get("train"), Mapping):
            out["train"] = {k: v for k, v in out["train"].items() if k not in LOGISTICS}
        return json.loads(json.dumps(out, default=str))

    check_same_run(Path(path), comparable(stored), comparable(expected), force)


def shipped_students() -> list[str]:
    """Names of the students shipped in the package."""
    return sorted(p.stem for p in STUDENTS_DIR.glob("*.safetensors"))


def read_student_config(name_or_path: str | Path) -> dict[str, Any]:
    """A student's config: from its weight file's header, else from the ``.json`` beside it.

    Raises:
        WeightsError: no config, malformed JSON, or not a diffspeed student's config.
    """
    path = _resolve(name_or_path)
    text = read_metadata(path).get(CONFIG_KEY)
    source = f"{path} (header)"
    if text is None:
        cfg_path = path.with_suffix(".json")
        if not cfg_path.is_file():
            raise WeightsError(
                f"{path} has no student config in its header and its JSON config {cfg_path} is "
                "missing; save students with diffspeed.distill.save_student"
            )
        text, source = cfg_path.read_text(), str(cfg_path)
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise WeightsError(f"{source} is not valid JSON ({e}); re-save the student") from None
    if not isinstance(cfg, dict) or cfg.get("kind") != KIND:
        raise WeightsError(
            f"{source} is not a diffspeed student config (needs kind {KIND!r}); pass a file "
            "written by diffspeed.distill.save_student"
        )
    missing = [k for k in ("arch", "prediction", "alphas_cumprod", "recipe") if k not in cfg]
    if missing:
        raise WeightsError(f"{source} lacks {missing}; re-save the student with save_student")
    return cfg


def load_student(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[DiscreteVPDenoiser, Recipe]:
    """Load a student: ``(denoiser, recipe)``.

    Args:
        name_or_path: a shipped name (``"progressive-4"``; see :func:`shipped_students`) or
            a ``.safetensors`` path written by :func:`save_student` (its ``.json`` beside it).
    """
    path = _resolve(name_or_path)
    cfg = read_student_config(path)
    arch = cfg["arch"]
    if arch["kind"] == "unet":
        import diffusers

        cls = getattr(diffusers, arch.get("class", "UNet2DModel"), None)
        if not isinstance(cls, type) or not issubclass(cls, nn.Module):
            raise WeightsError(f"{path}: {arch.get('class')!r} is not a diffusers model class")
        net: nn.Module = cls(**arch["unet"])
    else:
        net = build_wcond(arch)
    load_state_into(net, load_weights(path, cfg), str(path))
    net.eval().requires_grad_(False).to(device=device)
    if dtype != torch.float32:  # (diffusers warns on any dtype cast, even a no-op one)
        net.to(dtype=dtype)
    den = DiscreteVPDenoiser(net, torch.tensor(cfg["alphas_cumprod"]), cfg["prediction"])
    den.cond_spec = with_scale(spec_from_json(cfg), net)
    return den, Recipe.from_dict(cfg["recipe"])


def sample_student(
    student: str | Path | tuple[DiscreteVPDenoiser, Recipe],
    noise: torch.Tensor,
    cond: Mapping[str, Any] | torch.Tensor,
    *,
    guidance: float | None = None,
    return_info: bool = False,
) -> Any:
    """Sample a student with its recipe (solver + recorded sigmas) from unit ``noise``.

    Args:
        student: a name / path for :func:`load_student`, or its ``(denoiser, recipe)``.
        noise: ``[B, C, H, W]`` unit Gaussian noise.
        cond: the model's conditioning, one value per sample (a bare tensor for a model with
            one cond key, e.g. the digits' labels ``[B]``).
        guidance: scale for a w-conditioned student (default: its recipe's).
    """
    from diffspeed.solvers import sample

    den, recipe = student if isinstance(student, tuple) else load_student(student)
    cond = {
        k: v.to(den.device) if isinstance(v, torch.Tensor) else v
        for k, v in as_cond(den, cond).items()
    }
    cond = recipe.cond(cond, guidance)
    den.cond_spec.check(cond, noise.shape[0])
    schedule = torch.tensor(recipe.sigmas, dtype=torch.float64)
    return sample(den, noise, recipe.solver, schedule=schedule, cond=cond, return_info=return_info)


#: Base seed of the periodic-evaluation noise (disjoint from the reference set's seed 0).
EVAL_SEED = 7


def recipe_evaluator(
    spec: CondSpec,
    score: Callable[[torch.Tensor, dict[str, Any]], dict[str, float]],
    n: int = 200,
    *,
    seed: int = EVAL_SEED,
    guidance: float | None = None,
) -> Any:
    """Factory for periodic evaluation: ``recipe -> fn(student, step) -> score(x, cond)``.

    Samples ``n`` of the spec's example conditions with the recipe from fixed noise seeds
    ``seed * 1_000_003 + i`` (never the reference set's) and scores them with ``score``; a
    consistency student (``lcm`` recipe) is scored at 1 and 4 steps (``fdd1``, ``fdd4``...).
    """
    from diffspeed.distill.consistency import sample_consistency
    from diffspeed.solvers import seeded_noise

    cond = spec.example_cond(n)
    seeds = [seed * 1_000_003 + i for i in range(n)]
    noise = seeded_noise(seeds, sample_shape(spec))

    def for_recipe(recipe: Recipe) -> Any:
        def evaluate(student: Any, step: int) -> dict[str, float]:
            z = noise.to(student.device)
            if recipe.solver != "lcm":
                return score(sample_student((student, recipe), z, cond, guidance=guidance), cond)
            scores = {}
            for k in (1, 4):
                x = sample_consistency((student, recipe), z, cond, k, generator=seeds)
                scores.update({f"{name}{k}": v for name, v in score(x, cond).items()})
            return scores

        return evaluate

    return for_recipe


def sample_shape(spec: CondSpec) -> tuple[int, ...]:
    """The model's sample shape from its spec (refused when the spec does not say)."""
    if spec.sample_shape is None:
        raise ConfigError(
            "the model's conditioning spec names no sample_shape; build the denoiser with "
            "CondSpec(sample_shape=(C, H, W))"
        )
    return tuple(spec.sample_shape)
