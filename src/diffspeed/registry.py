"""Name -> object registries filled by decorators; dispatch is a dict lookup."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from diffspeed.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries with a ``register`` decorator and a helpful lookup error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and optional aliases)."""

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries:
                    raise ValueError(f"{self.kind} {key!r} registered twice")
                self._entries[key] = obj
            return obj

        return deco

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, name, list(self._entries)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)
