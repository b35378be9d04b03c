"""One error family for everything diffspeed refuses, each saying what is wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffspeedError(Exception):
    """Base class of every error diffspeed raises on bad input or bad state."""


class ShapeError(DiffspeedError, ValueError):
    """A tensor has the wrong shape or dtype."""


class ConfigError(DiffspeedError, ValueError):
    """An unknown name, an out-of-range option or an inconsistent configuration."""


class SigmaRangeError(DiffspeedError, ValueError):
    """A noise level (sigma) or step schedule lies outside what the model supports."""


class NonFiniteError(DiffspeedError, FloatingPointError):
    """A model or a loss produced NaN or Inf."""


class WeightsError(DiffspeedError, OSError):
    """A weight file is missing, corrupt, not safetensors, or does not match its config."""


class UnsupportedModelError(DiffspeedError, TypeError):
    """A method was applied to a model it does not support."""


def did_you_mean(name: object, allowed: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest allowed names, or ``""`` when none is close.

    Case, ``-``/``_`` and spaces are ignored when comparing ("DPMpp2M" finds "dpmpp_2m").
    """
    if not isinstance(name, str):
        return ""
    allowed = [str(a) for a in allowed]

    def norm(s: str) -> str:
        return s.lower().replace("-", "").replace("_", "").replace(" ", "")

    by_norm = {norm(a): a for a in allowed}
    close = difflib.get_close_matches(norm(name), list(by_norm), n=3, cutoff=0.5)
    close = [by_norm[c] for c in close if by_norm[c] != name]
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def unknown_name(kind: str, name: object, allowed: Iterable[str]) -> ConfigError:
    """Build the standard error for an unknown name: a did-you-mean and the allowed names."""
    allowed = sorted(str(a) for a in allowed)
    return ConfigError(
        f"unknown {kind} {name!r}{did_you_mean(name, allowed)}; choose one of: {', '.join(allowed)}"
    )
