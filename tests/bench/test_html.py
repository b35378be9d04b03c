"""index.html opened in a real headless Chromium: the table, the plot and the grid render."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()),
    None,
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_report_renders_in_chromium(tiny_report, tmp_path):
    out, res = tiny_report
    url = (out / "index.html").resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the table, with one body row per bench row, and both images inline (no network)
    table = re.search(r'<table id="results">(.*?)</table>', html, re.S)
    assert table is not None
    assert len(re.findall(r"<tr[ >]", table.group(1))) == len(res["order"]) + 1
    for name in res["order"]:
        assert name in table.group(1)
    for img in ("pareto", "grid"):
        data = rf'<img id="{img}"[^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{{500}}'
        assert re.search(data, html), img

    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", url)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    import matplotlib.image

    px = matplotlib.image.imread(shot)[..., :3]
    assert px.shape[:2] == (2400, 1400)
    dark = (px.mean(-1) < 0.5).mean()
    assert px.std() > 0.05 and dark > 0.01, "the screenshot is (nearly) blank"
    # the plot and the grid are drawn: many distinct colours, rows of grey digit pixels
    colours = np.unique((px[::4, ::4] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50
