"""The speed-vs-quality bench: rows of method configurations, timed and scored side by side.

Other areas add row kinds with :func:`register_method` (see :mod:`diffspeed.bench.methods`).
"""

from diffspeed.bench.config import BenchPlan, BenchSettings, Row, load_plan, parse_row_arg
from diffspeed.bench.methods import (
    FAMILIES,
    METHODS,
    BenchContext,
    Generator,
    MethodSpec,
    register_method,
)

__all__ = [
    "FAMILIES",
    "METHODS",
    "BenchContext",
    "BenchPlan",
    "BenchSettings",
    "Generator",
    "MethodSpec",
    "Row",
    "load_plan",
    "parse_row_arg",
    "register_method",
]
