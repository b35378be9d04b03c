"""Tiny bench plans shared by the bench tests (20 samples, cheap reference, one timing run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Settings of every test bench: small and fast, same numbers for in-process and subprocess runs.
TINY_SETTINGS = """
[settings]
samples = 20
batch_size = 10
warmup = 0
repeats = 1
threads = 1
reference_steps = 10
baseline = {solver = "ddim", steps = 4}
"""

TINY_ROWS = """
[[row]]
solver = "ddim"
steps = 3

[[row]]
name = "dpm++2m-3 (diffusers)"
peer = "DPMSolverMultistepScheduler"
steps = 3
options = {timestep_spacing = "trailing"}
"""


def _write_toml(path: Path, rows: str = TINY_ROWS, settings: str = TINY_SETTINGS) -> Path:
    path.write_text(settings + rows)
    return path


@pytest.fixture
def write_toml():
    """``write_toml(path, rows=TINY_ROWS)``: a bench TOML with the tiny settings and ``rows``."""
    return _write_toml


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory) -> tuple[Path, dict]:
    """A finished one-process tiny bench (results dict and output folder), run in-process."""
    from diffspeed.bench.config import load_plan
    from diffspeed.bench.runner import run_bench

    base = tmp_path_factory.mktemp("tiny")
    os.environ["DIFFSPEED_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    plan = load_plan(_write_toml(base / "tiny.toml"))
    results = run_bench(plan, base / "report")
    return base / "report", results
