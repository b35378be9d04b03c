"""A tiny ``diffspeed.distill`` run for the subprocess tests (multi-process, kill-and-resume).

usage: python train_script.py OUT_DIR [--steps N] [--kill-at-step K] [--kill-at-write K]
(also under ``accelerate launch --multi_gpu --num_processes 2`` on CPU). Consistency training
(CT) of a small MLP denoiser on 4-d points; writes OUT_DIR/final.safetensors (the final
checkpoint's student and EMA weights) and OUT_DIR/processes-<rank>.txt (the world size each
process saw). ``--kill-at-write K`` SIGKILLs the process at the K-th write boundary of
:mod:`diffspeed.atomic` (before a temporary file is written, before its rename, after it);
``--list-writes`` prints every boundary instead.
"""

import argparse
import os
import signal

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

torch.set_num_threads(1)

import diffspeed  # noqa: E402
from diffspeed import atomic  # noqa: E402
from diffspeed.core.adapters import DiscreteVPDenoiser  # noqa: E402
from diffspeed.distill import CT, TrainConfig  # noqa: E402
from diffspeed.distill import ct as ct_method  # noqa: E402
from diffspeed.distill.trainer import CHECKPOINT  # noqa: E402
from diffspeed.models import io  # noqa: E402
from diffspeed.toy import ddpm_alphas_cumprod  # noqa: E402


class TinyEps(ModelMixin, ConfigMixin):
    """``eps(x_t, t) = MLP(x_t, t / 1000)`` on 4-d points (a diffusers model: students record
    its config)."""

    @register_to_config
    def __init__(self, dim: int = 4, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, dim),
        )  # fmt: skip

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.net(torch.cat([x, t.view(-1, 1) / 1000], 1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--kill-at-step", type=int, default=-1)
    p.add_argument("--kill-at-write", type=int, default=-1)
    p.add_argument("--list-writes", action="store_true")
    a = p.parse_args()
    boundaries = []

    def boundary(label: str) -> None:
        boundaries.append(label)
        if a.list_writes:
            print(f"write boundary {len(boundaries)}: {label}", flush=True)
        if len(boundaries) == a.kill_at_write:
            os.kill(os.getpid(), signal.SIGKILL)

    atomic.on_boundary = boundary

    real_loss = ct_method.CTLoss.__call__

    def loss(self, student, teacher, x0, cond, ctx):
        if ctx.step == a.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_loss(self, student, teacher, x0, cond, ctx)

    ct_method.CTLoss.__call__ = loss

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 4, generator=gen) * 0.5 + torch.tensor([1.0, -1, 0.5, 0])
    torch.manual_seed(0)
    teacher = DiscreteVPDenoiser(TinyEps(), ddpm_alphas_cumprod())
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=32,
        lr=3e-3,
        warmup=3,
        grad_accum=a.grad_accum,
        ema_decay=0.9,
        checkpoint_every=4,
        log_every=1,
    )
    method = CT(n_start=11, n_end=11, strength=1.0, metric="l2")
    diffspeed.distill(teacher, method, train=cfg, out=a.out, data=x0)
    from accelerate import PartialState

    state = PartialState()
    with open(os.path.join(a.out, f"processes-{state.process_index}.txt"), "w") as f:
        f.write(str(state.num_processes))
    if int(os.environ.get("RANK", "0")) == 0:
        state = io.load_weights(os.path.join(a.out, CHECKPOINT))
        final = {k: v for k, v in state.items() if k.startswith(("student.", "emas."))}
        io.save_weights(os.path.join(a.out, "final.safetensors"), final)


if __name__ == "__main__":
    main()
