"""One error family for everything diffspeed refuses, each saying what is wrong and what to do."""

from __future__ import annotations


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


def unknown_name(kind: str, name: object, allowed: list[str] | tuple[str, ...]) -> ConfigError:
    """Build the standard error for an unknown registry name, listing the allowed ones."""
    return ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(allowed))}")
