"""Compression tests run tiny models: one thread avoids OpenMP spin-waiting on a busy CPU."""

import torch

torch.set_num_threads(1)
