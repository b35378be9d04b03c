"""index.html opened in a real headless Chromium: the table, the plot and the grid render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
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

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)

#: Elements without an end tag.
VOID = {"meta", "img", "br", "hr", "input", "link"}


class _Strict(HTMLParser):
    """Records every element that is not closed explicitly and in order, and text with
    markdown left in it (backticks)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th") and self.rows:
            self.rows[-1].append(tag)
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        if "`" in data and self.stack and self.stack[-1] not in ("style", "script"):
            self.errors.append(f"literal backtick in <{self.stack[-1]}>: {data.strip()[:60]!r}")


def _check(page: str) -> _Strict:
    parser = _Strict()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    return parser


def test_index_html_is_well_formed(tiny_report):
    out, res = tiny_report
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    parser = _check(page)
    widths = {len(r) for r in parser.rows}
    assert len(parser.rows) == len(res["order"]) + 1 and len(widths) == 1, widths


def _with_timing(res: dict, **timing) -> dict:
    out = json.loads(json.dumps(res))
    out["timing"] = {**res["timing"], **timing}
    return out


def test_busy_warning_reaches_every_report(tiny_report, tmp_path):
    from diffspeed.bench.report import write_report

    out, res = tiny_report
    warning = "the machine was busy while timing (load average 9.0 on 2 cores)"
    for name, busy in (("busy", True), ("quiet", False)):
        shutil.copytree(out / "samples", tmp_path / name / "samples")
        timing = {"busy": busy, "speedup_basis": "cpu" if busy else "wall"}
        timing["warning"] = warning if busy else None
        write_report(_with_timing(res, **timing), tmp_path / name)
    md = (tmp_path / "busy" / "report.md").read_text()
    assert f"> **Warning:** {warning}" in md and "| speedup (CPU) |" in md
    page = (tmp_path / "busy" / "index.html").read_text()
    _check(page)
    assert 'id="warning"' in page and "<th>speedup (CPU)</th>" in page
    quiet = (tmp_path / "quiet" / "report.md").read_text()
    assert "**Warning" not in quiet and "| speedup |" in quiet
    assert 'id="warning"' not in (tmp_path / "quiet" / "index.html").read_text()
    # every column is explained
    for header in ("ms/img", "CPU ms/img", "speedup", "+-%", "peak MB", "FDD"):
        assert f"- **{header}**: " in quiet


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@needs_chromium
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
