"""One dict -> frozen-dataclass parser for every config family (caches, distillers, ...).

Configs round-trip JSON: ``to_dict`` writes their fields (tuples as lists), and
:func:`dataclass_from_dict` builds them back, refusing keys that are not fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from diffspeed.errors import ConfigError, did_you_mean

T = TypeVar("T")


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
