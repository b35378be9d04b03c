"""The step context a sampler hands to whatever is installed on a model (caches, profilers).

A sampler calls ``listener.start_run(total_steps)`` once, ``listener.set_step(ctx)`` before
every network evaluation, and ``listener.end_run()`` at the end. Listeners are attached to a
model (``nn.Module``) with :func:`attach_listener` and found by the sampler through
:func:`listeners_of`; nothing is fished out of closures.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Protocol

from torch import nn


@dataclass(frozen=True)
class StepContext:
    """Where a sampling run is when the network is about to be evaluated.

    Attributes:
        index: 0-based index of this network evaluation within the run.
        sigma: the (largest) noise level of this evaluation.
        total_steps: the solver's number of steps in this run.
        expected_evals: the number of evaluations the run is expected to make (0 if unknown).
    """

    index: int
    sigma: float
    total_steps: int
    expected_evals: int = 0


class StepListener(Protocol):
    """What a sampler calls on objects attached to the model it runs."""

    def start_run(self, total_steps: int) -> None: ...

    def set_step(self, ctx: StepContext) -> None: ...

    def end_run(self) -> None: ...


_LISTENERS: weakref.WeakKeyDictionary[nn.Module, list[StepListener]] = weakref.WeakKeyDictionary()


def attach_listener(module: nn.Module, listener: StepListener) -> None:
    """Attach ``listener`` to ``module`` (a sampler running this module will call it)."""
    _LISTENERS.setdefault(module, []).append(listener)


def detach_listener(module: nn.Module, listener: StepListener) -> None:
    """Detach a listener attached with :func:`attach_listener` (no-op if absent)."""
    items = _LISTENERS.get(module, [])
    if listener in items:
        items.remove(listener)
    if not items:
        _LISTENERS.pop(module, None)


def listeners_of(module: nn.Module | None) -> list[StepListener]:
    """Listeners attached to ``module`` (empty if none or if ``module`` is None)."""
    return [] if module is None else list(_LISTENERS.get(module, []))
