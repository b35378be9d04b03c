"""Shared test settings: deterministic, thread count fixed (2 by default, CI has 2 cores)."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DIFFSPEED_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Keep reference-set caches written by tests out of the user's home."""
    monkeypatch.setenv("DIFFSPEED_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def sd_components(tmp_path_factory):
    """Tiny random-weight Stable Diffusion components (see ``tiny_sd.py``)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_sd import build_components

    return build_components(tmp_path_factory.mktemp("tokenizer"))
