"""Progress bars: rich in the CLI, nothing when switched off from the API.

One wrapper for every long loop (bench rows, reference sets, training): ``Progress(enabled)``
is a context manager whose methods do nothing when disabled, so callers never branch on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Progress:
    """rich progress bars, or nothing.

    Args:
        enabled: show the bars (False: every method is a no-op).
        fields: extra per-task fields shown after the count, e.g. ``("loss",)``; give their
            values to :meth:`add` and :meth:`update`.
    """

    def __init__(self, enabled: bool, *, fields: Sequence[str] = ()) -> None:
        self.p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.p = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                *(TextColumn(f"{f} {{task.fields[{f}]}}") for f in fields),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )

    def __enter__(self) -> Progress:
        if self.p is not None:
            self.p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)

    def add(self, name: str, total: int, completed: int = 0, **fields: Any) -> Any:
        """A new bar of ``total`` units (its task id; None when disabled)."""
        if self.p is None:
            return None
        return self.p.add_task(name, total=total, completed=completed, **fields)

    def advance(self, task: Any, n: int = 1) -> None:
        """Advance ``task`` by ``n`` units."""
        if self.p is not None:
            self.p.advance(task, n)

    def update(self, task: Any, completed: int, **fields: Any) -> None:
        """Set ``task``'s completed count (and its extra fields)."""
        if self.p is not None:
            self.p.update(task, completed=completed, **fields)

    def remove(self, task: Any) -> None:
        """Remove a finished bar."""
        if self.p is not None:
            self.p.remove_task(task)


def track(items: Sequence[T], description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a progress bar (a plain iteration when not ``enabled``)."""
    with Progress(enabled) as bar:
        task = bar.add(description, len(items))
        for item in items:
            yield item
            bar.advance(task)
