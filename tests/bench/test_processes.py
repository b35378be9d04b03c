"""The bench as a command in other processes: kill-and-resume, and 1 vs 2 accelerate processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLOW_ROWS = """
[[row]]
solver = "ddim"
steps = 2

[[row]]
solver = "ddim"
steps = 3

[[row]]
name = "slow"
solver = "ddim"
steps = 120
"""


def _bench(toml: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "diffspeed", "bench", str(toml), "--out", str(out), *extra]


def _rows(out: Path) -> dict:
    try:
        return json.loads((out / "results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}


def test_killed_bench_resumes_without_recomputing(tmp_path, write_toml):
    toml = write_toml(tmp_path / "b.toml", SLOW_ROWS)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _bench(toml, out, "--no-progress"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while set(_rows(out)) != {"ddim-4", "ddim-2", "ddim-3"}:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the first rows never finished"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # in the middle of the slow row
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = _rows(out)
    assert "slow" not in first
    run = subprocess.run(_bench(toml, out, "--no-progress"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    final = _rows(out)
    assert set(final) == {"ddim-4", "ddim-2", "ddim-3", "slow"}
    for name in ("ddim-4", "ddim-2", "ddim-3"):  # kept, not recomputed
        assert final[name]["computed"] == first[name]["computed"]
    assert final["slow"]["computed"]["pid"] != first["ddim-2"]["computed"]["pid"]
    assert final["slow"]["nfe"] == 120
    assert (out / "index.html").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_accelerate_processes_give_the_same_metrics(tmp_path, write_toml, tiny_report):
    """``accelerate launch`` with 2 CPU processes splits the samples and gathers them: every
    metric equals the one-process run's (tiny_report, same settings and seeds)."""
    one_out, one = tiny_report
    toml = write_toml(tmp_path / "b.toml")
    out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "diffspeed", "bench", str(toml), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if run.returncode != 0 and "torch.distributed" in run.stderr and "gloo" in run.stderr:
        pytest.skip(f"no gloo process group on this machine: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((out / "results.json").read_text())
    assert two["manifest"]["processes"] == 2 and one["manifest"]["processes"] == 1
    assert two["order"] == one["order"]
    for name in one["order"]:
        for key in ("fdd", "kid", "accuracy", "psnr", "rmse", "nfe"):
            assert two["rows"][name][key] == one["rows"][name][key], (name, key)
