"""Reading files of the embedded models written before the conditioning contract."""

from __future__ import annotations

from typing import Any

from diffspeed.core.contract import UNDECLARED, CondSpec


def legacy_student_spec(config: dict[str, Any]) -> CondSpec:
    """The conditioning of a student whose JSON predates ``cond_spec``.

    Those students were all distilled from the digits teacher and record its null class as
    ``null_label``; ``None`` (or no entry) means nothing was declared.
    """
    from diffspeed.models.teacher import digits_cond_spec

    null = config.get("null_label")
    return UNDECLARED if null is None else digits_cond_spec(int(null))
