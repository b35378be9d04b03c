"""A CPU hog for load tests: float32 matmuls on ``--threads`` torch threads until killed
(or for ``--seconds``). It stands in for "another job on the same machine".

    python benchmarks/bench_load_hog.py --threads 2 &
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the hog")
    ap.add_argument("--size", type=int, default=768, help="matrix side")
    ap.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a = torch.randn(args.size, args.size)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


if __name__ == "__main__":
    main()
