"""One dict -> frozen-dataclass parser for every config family (caches, distillers, ...).

Configs round-trip JSON: ``to_dict`` writes their fields (tuples as lists), and
:func:`dataclass_from_dict` builds them back, refusing keys that are not fields.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from diffspeed.errors import ConfigError, did_you_mean

T = TypeVar("T")


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The fields where two JSON-like configs differ, as ``"name: old -> new"`` lines
    (nested dicts flattened to dotted names)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{key}"
            if key not in old or key not in new:
                where = "new" if key not in old else "old"
                value = new.get(key) if key not in old else old.get(key)
                out.append(f"{name}: only in the {where} config ({value!r})")
            else:
                out.extend(config_diff(old[key], new[key], name + "."))
        return out
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix.rstrip('.') or 'value'}: {old!r} -> {new!r}"]


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data`` (JSON lists become tuples).

    Args:
        cls: a dataclass type (its ``__post_init__`` validates the values).
        data: field name -> value.
        what: how the error names the config (default: the class name).

    Raises:
        ConfigError: a key that is not a field of ``cls`` (the message lists the fields).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{what or cls.__name__} has no field(s) {unknown}"
            + "".join(did_you_mean(k, names) for k in unknown)
            + f"; it accepts: {', '.join(sorted(names)) or 'no fields'}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


class JsonConfig:
    """``to_dict`` / ``to_json`` / ``from_dict`` for a frozen dataclass config: tuples are JSON
    lists, unknown keys are refused. ``config_name`` is how error messages name the config."""

    config_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> Any:
        """Build from :meth:`to_dict` output (or its JSON string)."""
        what = cls.config_name or cls.__name__
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise ConfigError(f"{what} is not valid JSON ({e})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{what} must be a dict, got {type(data).__name__}")
        return dataclass_from_dict(cls, data, what)
