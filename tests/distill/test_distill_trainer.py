"""The shared training loop: multi-process equivalence, kill-and-resume, NaN handling,
refusing foreign or corrupt checkpoints, config round trips."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffspeed.distill import CheckpointError, TrainConfig, TrainData, TrainingDivergedError, train
from diffspeed.distill.trainer import CHECKPOINT, TRAIN_LOG, step_generator
from diffspeed.errors import ConfigError
from diffspeed.models.io import load_weights

SCRIPT = Path(__file__).with_name("train_script.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


def run(*args, launcher=(sys.executable,), check=True):
    cmd = [*launcher, str(SCRIPT), *map(str, args)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def final(out):
    return load_weights(Path(out) / "final.safetensors")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run(out, "--steps", 30)
    return final(out)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, reference_run):
    """Two real processes (asserted) train the same student as one, to float32 rounding.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process on a machine without
    GPUs; ``--multi_gpu`` with no visible GPU starts two CPU processes joined by gloo. Each
    process draws the same global batch and evaluates its half, and the gradients are
    all-reduced: the sum is the same math in another order, so weights differ from one
    process by float32 rounding (measured: max |difference| 6.0e-8 over all 18 tensors after
    30 steps, none bit-identical); the tolerance below (rtol 1e-5, atol 1e-6) bounds that.
    """
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    launcher = [
        *accelerate,
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]
    r = run(tmp_path, "--steps", 30, launcher=launcher, check=False)
    if r.returncode != 0 and "gloo" in r.stderr:
        pytest.skip(f"no gloo process group on this machine: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    worlds = sorted(p.read_text() for p in tmp_path.glob("processes-*.txt"))
    assert worlds == ["2", "2"], f"expected two processes, each seeing 2; got {worlds}"
    two = final(tmp_path)
    assert two.keys() == reference_run.keys()
    for k in two:
        torch.testing.assert_close(two[k], reference_run[k], rtol=1e-5, atol=1e-6)


def test_grad_accumulation_changes_nothing_but_the_micro_batches(tmp_path, reference_run):
    run(tmp_path, "--steps", 30, "--grad-accum", 2)
    acc = final(tmp_path)
    # same global batch size but other micro-batch draws: trained, finite, not identical
    assert all(torch.isfinite(v).all() for v in acc.values())
    assert any(not torch.equal(acc[k], reference_run[k]) for k in acc)


def test_sigkill_mid_training_then_resume_is_bit_exact(tmp_path, reference_run):
    r = run(tmp_path, "--steps", 30, "--kill-at-step", 13, check=False)
    assert r.returncode == -9
    assert not (tmp_path / "final.safetensors").exists()
    run(tmp_path, "--steps", 30)
    resumed = final(tmp_path)
    for k in resumed:
        assert torch.equal(resumed[k], reference_run[k]), k
    # the log has exactly one row per step despite the replayed steps
    steps = [int(line.split(",")[0]) for line in (tmp_path / TRAIN_LOG).read_text().split()[1:]]
    assert steps == list(range(1, 31))


def test_sigkill_while_writing_a_checkpoint_then_resume_is_bit_exact(tmp_path, reference_run):
    # boundary 5: the second checkpoint's temporary file is written, not yet renamed
    r = run(tmp_path, "--steps", 30, "--kill-at-write", 5, check=False)
    assert r.returncode == -9
    leftovers = list(tmp_path.glob(f".{CHECKPOINT}.*.tmp"))
    assert leftovers, "the kill should leave a temporary file"
    load_weights(tmp_path / CHECKPOINT)  # the previous checkpoint is intact
    run(tmp_path, "--steps", 30)
    resumed = final(tmp_path)
    for k in resumed:
        assert torch.equal(resumed[k], reference_run[k]), k
    assert not list(tmp_path.glob(f".{CHECKPOINT}.*.tmp"))


# --- in-process ---------------------------------------------------------------------------
class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.a(x)


def mse(student, teacher, x0, cond):
    return (student(x0) - 2 * x0).pow(2).mean(1)


DATA = TrainData(torch.randn(64, 2))


def test_different_config_checkpoint_is_refused(tmp_path):
    train(Lin(), mse, TrainConfig(steps=3, batch_size=8), tmp_path, data=DATA)
    with pytest.raises(
        CheckpointError, match=r"another configuration \(train\.lr: 0\.0001 -> 0\.001"
    ):
        train(Lin(), mse, TrainConfig(steps=3, batch_size=8, lr=1e-3), tmp_path, data=DATA)
    # logistics (checkpoint / log frequency) are not part of the identity
    train(Lin(), mse, TrainConfig(steps=3, batch_size=8, log_every=1), tmp_path, data=DATA)
    # a fresh start is allowed explicitly
    train(
        Lin(), mse, TrainConfig(steps=3, batch_size=8, lr=1e-3), tmp_path, data=DATA, resume=False
    )
    # force=True (--force) continues it with changed settings
    train(Lin(), mse, TrainConfig(steps=4, batch_size=8), tmp_path, data=DATA, force=True)


def test_corrupt_checkpoint_is_refused(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=8)
    train(Lin(), mse, cfg, tmp_path, data=DATA)
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(Lin(), mse, cfg, tmp_path, data=DATA)
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError):
        train(Lin(), mse, cfg, tmp_path, data=DATA)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    class Other(Lin):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Linear(2, 2)

    cfg = TrainConfig(steps=2, batch_size=8)
    train(Lin(), mse, cfg, tmp_path, data=DATA)
    with pytest.raises(CheckpointError, match="does not match the model"):
        train(Other(), mse, cfg, tmp_path, data=DATA)


def test_nan_steps_are_skipped_counted_and_persistent_nan_stops(tmp_path):
    def sometimes_nan(student, teacher, x0, cond, ctx):
        out = mse(student, teacher, x0, cond)
        return out * float("nan") if ctx.step in (2, 5) else out

    before = Lin()
    res = train(
        before, sometimes_nan, TrainConfig(steps=8, batch_size=8), tmp_path / "a", data=DATA
    )
    assert res.skipped == 2 and res.step == 8 and math.isfinite(res.last_loss)
    assert all(torch.isfinite(p).all() for p in res.student.parameters())

    def always_nan(student, teacher, x0, cond):
        return mse(student, teacher, x0, cond) * float("inf")

    cfg = TrainConfig(steps=20, batch_size=8, max_bad_steps=4)
    with pytest.raises(TrainingDivergedError, match="4 consecutive steps"):
        train(Lin(), always_nan, cfg, tmp_path / "b", data=DATA)


def test_loss_must_be_per_sample(tmp_path):
    def scalar(student, teacher, x0, cond):
        return mse(student, teacher, x0, cond).mean()

    with pytest.raises(ConfigError.__mro__[1], match="one value per sample"):
        train(Lin(), scalar, TrainConfig(steps=1, batch_size=8), tmp_path, data=DATA)


def test_config_round_trip_and_validation():
    cfg = TrainConfig(steps=7, lr=3e-4, warmup=2, grad_accum=2, ema_decay=0.99)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="no field"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="divide"):
        train(
            Lin(),
            mse,
            TrainConfig(steps=1, batch_size=9, grad_accum=2),
            "/nonexistent/x",
            data=DATA,
        )


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 0.01


def test_step_generators_depend_only_on_seed_step_micro():
    a = torch.rand(3, generator=step_generator(0, 5, 1))
    assert torch.equal(a, torch.rand(3, generator=step_generator(0, 5, 1)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(0, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 5, 1)))


def test_eval_log_and_resume_of_a_finished_run(tmp_path):
    calls = []

    def evaluate(model, step):
        calls.append(step)
        return {"score": float(step)}

    cfg = TrainConfig(steps=6, batch_size=8, eval_every=3)
    res = train(Lin(), mse, cfg, tmp_path, data=DATA, evaluate=evaluate)
    assert calls == [3, 6]
    assert (tmp_path / "eval_log.csv").read_text().split() == ["step,score", "3,3.0", "6,6.0"]
    again = train(Lin(), mse, cfg, tmp_path, data=DATA, evaluate=evaluate)
    assert calls == [3, 6]  # nothing left to do
    for a, b in zip(again.student.parameters(), res.student.parameters(), strict=True):
        assert torch.equal(a, b)
    shutil.rmtree(tmp_path)
