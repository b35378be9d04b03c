"""A run killed at every write boundary resumes to bit-identical weights.

Every file a distillation run writes goes through :mod:`diffspeed.atomic`, which calls a hook
at each boundary: before the temporary file is written, before its rename, after it. A forked
child runs a tiny consistency-training run and SIGKILLs itself at boundary ``k``; a second
child resumes the run with ``--resume`` semantics; its student must equal, bit for bit, the one
of an uninterrupted run, with no temporary file left behind. Forking keeps the test fast (one
import of torch, one short run per child).
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

STEPS = 8


def _run(out: str, kill_at: int, labels_to: str | None = None) -> None:
    """The child's body: a tiny CT run in ``out`` (resuming), killed at boundary ``kill_at``."""
    from train_script import TinyEps

    import diffspeed
    from diffspeed import atomic
    from diffspeed.core.adapters import DiscreteVPDenoiser
    from diffspeed.distill import CT, TrainConfig
    from diffspeed.toy import ddpm_alphas_cumprod

    seen: list[str] = []

    def boundary(label: str) -> None:
        seen.append(label)
        if len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    atomic.on_boundary = boundary
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 4, generator=gen) * 0.5 + torch.tensor([1.0, -1, 0.5, 0])
    torch.manual_seed(0)
    teacher = DiscreteVPDenoiser(TinyEps(), ddpm_alphas_cumprod())
    cfg = TrainConfig(
        steps=STEPS, batch_size=16, lr=3e-3, ema_decay=0.9, checkpoint_every=4, log_every=1
    )
    method = CT(n_start=11, n_end=11, strength=1.0, metric="l2")
    diffspeed.distill(teacher, method, train=cfg, out=out, data=x0, resume=True)
    if labels_to is not None:
        with open(labels_to, "w") as f:
            f.write("\n".join(seen))


def _fork(out, kill_at: int, labels_to=None) -> int:
    """Run :func:`_run` in a forked child; its exit status (``-9`` when killed)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            torch.set_num_threads(1)
            _run(str(out), kill_at, labels_to)
        except BaseException as e:  # noqa: BLE001 - report anything, then leave
            print(f"child failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _student(out):
    """The student's weights and its config (read from the weight file's header)."""
    from diffspeed.distill.students import read_student_config
    from diffspeed.models.io import load_weights

    path = next(out.rglob("student.safetensors"))
    return load_weights(path), read_student_config(path)


def test_kill_at_every_write_boundary_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "reference"
    labels = tmp_path / "labels.txt"
    assert _fork(ref, kill_at=-1, labels_to=labels) == 0
    boundaries = labels.read_text().split("\n")
    # checkpoints, the student's weights and its JSON copy: 3 boundaries per file
    assert any("student.safetensors" in b for b in boundaries)
    assert any("checkpoint.safetensors" in b for b in boundaries)
    want, want_config = _student(ref)
    # "done X" leaves the disk as "write Y" (the next file) finds it; the last one is kept
    kills = [k for k, b in enumerate(boundaries, 1) if not b.startswith("done")]
    for k in [*kills, len(boundaries)]:
        out = tmp_path / f"kill-{k}"
        assert _fork(out, kill_at=k) == -signal.SIGKILL, f"boundary {k} did not kill"
        assert _fork(out, kill_at=-1) == 0, f"resume after a kill at {boundaries[k - 1]!r} failed"
        got, config = _student(out)
        assert config == want_config
        for name, value in want.items():
            assert torch.equal(got[name], value), (boundaries[k - 1], name)
        assert not list(out.rglob(".*.tmp")), f"stale temporary files after {boundaries[k - 1]!r}"


def test_identical_runs_write_identical_files(tmp_path):
    """Deterministic safetensors headers: the same run twice gives the same file hashes."""
    import hashlib

    for name in ("a", "b"):
        assert _fork(tmp_path / name, kill_at=-1) == 0

    def digests(root):
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))
        }

    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a and a == b
