"""A tiny ``train_mini_sd`` run for the kill-and-resume test.

usage: python minisd_train_script.py OUT [--kill-after-checkpoint K]
Kills itself with SIGKILL right after the K-th checkpoint is written (an injected kill, not a
timed one).
"""

import argparse
import os
import signal

import torch

torch.set_num_threads(1)

from diffspeed.models.minisd import train  # noqa: E402

TINY = train.MiniSDTraining(
    vae_steps=4, vae_batch=4, unet_steps=4, unet_batch=4, warmup=1, max_shift=0,
    checkpoint_every=2,
)  # fmt: skip


def small_dataset():
    """The first 96 images of each style: the kill-and-resume check needs no more."""
    x, y, s = FULL_DATASET()
    keep = torch.cat([torch.nonzero(s == k).flatten()[:96] for k in range(3)])
    return x[keep], y[keep], s[keep]


FULL_DATASET = train.msd.dataset


def main() -> None:
    train.msd.dataset = small_dataset
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kill-after-checkpoint", type=int, default=-1)
    a = p.parse_args()
    if a.kill_after_checkpoint >= 0:
        real, written = train.save_train_state, []

        def dying_save(*args, **kwargs):
            real(*args, **kwargs)
            written.append(1)
            if len(written) == a.kill_after_checkpoint:
                os.kill(os.getpid(), signal.SIGKILL)

        train.save_train_state = dying_save
    train.train_mini_sd(a.out, TINY)


if __name__ == "__main__":
    main()
