"""A tiny distillation-loop run for the subprocess tests (multi-process, kill-and-resume).

usage: python train_script.py OUT_DIR [--steps N] [--kill-at-step K] [--kill-in-checkpoint K]
(also under ``accelerate launch --num_processes 2 --cpu``). Writes OUT_DIR/final.safetensors.
"""

import argparse
import os
import signal

import torch
from torch import nn

torch.set_num_threads(1)

from diffspeed.distill import TrainConfig, TrainData, train  # noqa: E402
from diffspeed.distill.trainer import module_tensors  # noqa: E402
from diffspeed.models import io  # noqa: E402


class TinyDenoiser(nn.Module):
    """``D(x, sigma) = x / (1 + sigma^2) + MLP(x, log sigma)`` on 4-d points."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 4)
        )

    def forward(self, x, sigma):
        s = sigma.view(-1, 1).to(x.dtype)
        return x / (1 + s**2) + self.net(torch.cat([x, s.log()], 1))


def denoising_loss(student, teacher, x0, cond, ctx):
    """Plain x0 regression at log-normal sigmas (draws all randomness from ctx)."""
    sigma = (ctx.randn() * 1.2 - 1.0).exp()
    x = x0 + sigma.view(-1, 1) * ctx.randn(4)
    return (student(x, sigma) - x0).pow(2).mean(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--kill-at-step", type=int, default=-1)
    p.add_argument("--kill-in-checkpoint", type=int, default=-1)
    a = p.parse_args()
    if a.kill_in_checkpoint >= 0:
        real = io.save_file
        writes = []

        def dying_save_file(tensors, path, metadata=None):
            # write the checkpoint's temporary file half-way, then die before the rename
            writes.append(path)
            if len(writes) == a.kill_in_checkpoint:
                real(tensors, path, metadata=metadata)
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            real(tensors, path, metadata=metadata)

        io.save_file = dying_save_file

    def loss(student, teacher, x0, cond, ctx):
        if ctx.step == a.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return denoising_loss(student, teacher, x0, cond, ctx)

    gen = torch.Generator().manual_seed(0)
    data = TrainData(torch.randn(512, 4, generator=gen) * 0.5 + torch.tensor([1.0, -1, 0.5, 0]))
    torch.manual_seed(0)
    student = TinyDenoiser()
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
    res = train(student, loss, cfg, a.out, data=data)
    if int(os.environ.get("RANK", "0")) == 0:
        final = {f"student.{k}": v for k, v in module_tensors(res.student).items()}
        final.update({f"ema.{k}": v for k, v in module_tensors(res.emas["ema"]).items()})
        io.save_weights(os.path.join(a.out, "final.safetensors"), final)


if __name__ == "__main__":
    main()
