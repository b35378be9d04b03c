"""The bench report: ``report.md``, ``pareto.png``, ``grid.png``, ``index.html`` (one
self-contained page, images embedded) and the terminal table (rich), all from ``results.json``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

import torch

from diffspeed.bench.methods import FAMILIES
from diffspeed.models.io import atomic_write_bytes, load_weights

#: Colours of the method families in the plot and the page.
FAMILY_COLORS = {
    "solver": "#1f77b4",
    "peer": "#7f7f7f",
    "cache": "#2ca02c",
    "student": "#d62728",
    "compress": "#9467bd",
    "other": "#8c564b",
}

#: Marker shapes of the method families (they tell families apart in greyscale too).
FAMILY_MARKERS = {
    "solver": "o",
    "peer": "s",
    "cache": "^",
    "student": "D",
    "compress": "P",
    "other": "X",
}

#: (header, key, format) of the table columns; None values print as "-".
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("method", "name", "{}"),
    ("family", "family", "{}"),
    ("NFE", "nfe", "{}"),
    ("rounds", "rounds", "{}"),
    ("ms/img", "latency_ms", "{:.2f}"),
    ("CPU ms/img", "cpu_ms", "{:.2f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("+-%", "spread_pct", "{:.0f}"),
    ("FDD", "fdd", "{:.3f}"),
    ("FDD/ref", "fdd_vs_reference", "{:.2f}"),
    ("KIDx1e3", "kid_e3", "{:.2f}"),
    ("acc %", "accuracy_pct", "{:.1f}"),
    ("PSNR dB", "psnr", "{:.2f}"),
    ("RMSE", "rmse", "{:.4f}"),
    ("peak MB", "peak_mb", "{:.2f}"),
    ("size MB", "size_mb", "{:.2f}"),
)


#: Columns of a pipeline bench (``results["kind"] == "pipeline"``): end-to-end latency.
PIPELINE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("method", "name", "{}"),
    ("family", "family", "{}"),
    ("NFE", "nfe", "{}"),
    ("ms/img", "latency_ms", "{:.2f}"),
    ("CPU ms/img", "cpu_ms", "{:.2f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("+-%", "spread_pct", "{:.0f}"),
    ("FDD", "fdd", "{:.3f}"),
    ("FDD/ref", "fdd_vs_reference", "{:.2f}"),
    ("acc %", "accuracy_pct", "{:.1f}"),
    ("PSNR dB", "psnr", "{:.2f}"),
    ("RMSE", "rmse", "{:.4f}"),
    ("peak MB", "peak_mb", "{:.2f}"),
    ("size MB", "size_mb", "{:.2f}"),
)

_SPEEDUP_NOTE = (
    "median over the timing rounds of the baseline's time / the row's time, both timed in the "
    "same round (round-robin: each round times every row once, in a shuffled order, the "
    "baseline included); wall time, or process CPU time when the machine was busy (the header "
    "then reads 'speedup (CPU)')"
)
_SPREAD_NOTE = (
    "spread of the per-round ratios: half their interquartile range, in % of the speedup; a "
    "large value means the speedup moved between rounds (a busy machine)"
)
_CPU_NOTE = (
    "process CPU time per image (every thread of the bench process; it leaves out the time "
    "other processes held the cores): median over the timing rounds / images per call"
)

#: What each column of the denoiser bench means (a line per column in its ``report.md``).
COLUMN_NOTES = {
    "method": "the row: solver-steps(-schedule), a cache (+method), a diffusers peer or a "
    "distilled student",
    "family": "solver (diffspeed's samplers), peer (a diffusers scheduler on the same model), "
    "cache (a feature cache on the network) or student (a distilled model)",
    "NFE": "network evaluations per image (a guided evaluation batches cond and uncond and "
    "counts once)",
    "rounds": "sequential network rounds per image (lower than NFE when evaluations run in "
    "parallel)",
    "ms/img": "wall time per image of one generation call of the timing batch: median over "
    "the timing rounds / images per call",
    "CPU ms/img": _CPU_NOTE,
    "speedup": _SPEEDUP_NOTE,
    "+-%": _SPREAD_NOTE,
    "FDD": "Frechet distance to the real digits in the digits classifier's feature space "
    "(lower is better; digits models only)",
    "FDD/ref": "the row's FDD / the fidelity reference's FDD",
    "KIDx1e3": "kernel inception-style distance to the real digits in the same feature space, "
    "x 1000",
    "acc %": "the digits classifier's accuracy against the label each sample was asked for",
    "PSNR dB": "PSNR to the fidelity reference's sample from the same noise and condition "
    "(data range [-1, 1]; higher is closer)",
    "RMSE": "root-mean-square difference to the fidelity reference's samples",
    "peak MB": "peak memory above the level before the call while generating one quality "
    "batch (the method is stated under the table)",
    "size MB": "bytes of the network's weights in memory (a quantized row: its packed or "
    "fake-quant codes and scales)",
    "disk MB": "bytes of the row's weight files on disk (compress rows; blank for the others)",
}

#: What each column of a pipeline bench means (a line per column in its ``report.md``).
PIPELINE_NOTES = {
    "method": "the row: scheduler (solver, steps, schedule), cache or diffusers peer",
    "family": "solver (diffspeed's Scheduler), cache (a feature cache on the UNet) or peer "
    "(a diffusers scheduler)",
    "NFE": "UNet calls per image (a guided call batches cond and uncond and counts once)",
    "ms/img": "end-to-end latency per image of one pipeline call, text encoding and VAE decode "
    "included: median over the timing rounds / images per call",
    "CPU ms/img": _CPU_NOTE,
    "speedup": _SPEEDUP_NOTE,
    "+-%": _SPREAD_NOTE,
    "FDD": "Frechet distance to the real digits in the digits classifier's feature space, "
    "images pooled to 8x8 (embedded models only)",
    "FDD/ref": "the row's FDD / the fidelity reference's FDD",
    "acc %": "the digits classifier's accuracy against the digit each prompt asked for "
    "(embedded models only)",
    "PSNR dB": "PSNR of the decoded images to the reference's from the same latents and prompts "
    "(data range [-1, 1])",
    "RMSE": "root-mean-square difference of the decoded images to the reference's",
    "peak MB": "peak memory above the level before the call while generating one quality "
    "batch (the method is stated under the table)",
    "size MB": "bytes of the pipeline's weights (UNet, VAE, text encoder)",
}


#: Column added when a row knows the size of its weight files (compress rows).
DISK_COLUMN = ("disk MB", "disk_mb", "{:.2f}")


def columns_of(results: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The table columns for ``results`` (a pipeline bench has its own; ``disk MB`` appears
    when a row reports the bytes of its weight files)."""
    cols = PIPELINE_COLUMNS if results.get("kind") == "pipeline" else COLUMNS
    rows = results.get("rows", {}).values()
    if any(r.get("disk_size_bytes") is not None for r in rows):
        cols = (*cols, DISK_COLUMN)
    return cols


def notes_of(results: dict[str, Any]) -> dict[str, str]:
    """What each column of ``results``' table means."""
    return PIPELINE_NOTES if results.get("kind") == "pipeline" else COLUMN_NOTES


def timing_warning(results: dict[str, Any]) -> str | None:
    """The busy-machine warning of the run (None when it was quiet or not judged)."""
    return (results.get("timing") or {}).get("warning")


def speedup_basis(results: dict[str, Any]) -> str:
    """ "cpu" when the speedups come from process CPU time (a busy machine), else "wall"."""
    return (results.get("timing") or {}).get("speedup_basis", "wall")


def _derived(rec: dict[str, Any]) -> dict[str, Any]:
    d = dict(rec)
    d["latency_ms"] = rec["latency_s"] * 1e3
    d["cpu_ms"] = rec["cpu_s"] * 1e3 if rec.get("cpu_s") is not None else None
    d["spread_pct"] = rec["spread"] * 100 if rec.get("spread") is not None else None
    d["kid_e3"] = rec["kid"] * 1e3 if rec.get("kid") is not None else None
    d["accuracy_pct"] = rec["accuracy"] * 100 if rec.get("accuracy") is not None else None
    mem = rec.get("peak_mem_bytes")
    d["peak_mb"] = mem / 2**20 if mem is not None else None
    d["size_mb"] = rec["model_size_bytes"] / 2**20
    disk = rec.get("disk_size_bytes")
    d["disk_mb"] = disk / 2**20 if disk is not None else None
    return d


def ordered_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows in run order (rows not in this run's order are left out)."""
    return [_derived(results["rows"][n]) for n in results["order"] if n in results["rows"]]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def table_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the results table."""
    columns = columns_of(results)
    header = [c[0] for c in columns]
    if speedup_basis(results) == "cpu":
        header = ["speedup (CPU)" if h == "speedup" else h for h in header]
    body = [[_cell(r.get(key), fmt) for _, key, fmt in columns] for r in ordered_rows(results)]
    return header, body


def quality_key(results: dict[str, Any]) -> str:
    """The plot's quality axis: FDD when the model is a digits model, else RMSE."""
    return "fdd" if all(r.get("fdd") is not None for r in results["rows"].values()) else "rmse"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(results: dict[str, Any], path: Path) -> Path:
    """FDD (or RMSE) against latency per image (log x); the Pareto front drawn and labelled.

    Families differ in marker shape as well as colour (readable in greyscale); labels are
    placed by adjustText so they do not overlap, with a leader line when moved off the point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adjustText import adjust_text
    from matplotlib.ticker import ScalarFormatter

    rows = ordered_rows(results)
    key = quality_key(results)
    pts = [(r["latency_ms"], r[key]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(10, 6.2))
    for fam in FAMILIES:
        idx = [i for i, r in enumerate(rows) if r["family"] == fam]
        if idx:
            ax.scatter(
                [pts[i][0] for i in idx],
                [pts[i][1] for i in idx],
                s=44,
                color=FAMILY_COLORS[fam],
                marker=FAMILY_MARKERS[fam],
                label=fam,
                zorder=3,
                edgecolor="black",
                linewidth=0.5,
            )
    _draw_front(ax, [pts[i] for i in front], pts)
    base = results.get("baseline")
    texts = []
    for i, r in enumerate(rows):
        on_front = i in front
        texts.append(
            ax.text(
                pts[i][0],
                pts[i][1],
                r["name"],
                fontsize=7.5 if on_front else 6.5,
                fontweight="bold" if on_front else "normal",
                color="black" if on_front else "#555555",
                zorder=4,
            )
        )
        if r["name"] == base:
            ax.scatter([pts[i][0]], [pts[i][1]], s=170, facecolor="none", edgecolor="black")
    ref = results.get("reference", {}).get(key)
    if ref is not None and key == "fdd":
        ax.axhline(ref, color="#999999", ls="--", lw=1, label="reference sampler's FDD")
    ax.set_xscale("log")
    if key == "fdd":
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("latency per image (ms, log scale)")
    ylabel = "FDD" if key == "fdd" else "RMSE vs reference"
    ax.set_ylabel(f"{ylabel} (lower is better)")
    m = results.get("manifest", {})
    n = m.get("torch_threads", "?")
    title = f"speed vs quality — {m.get('device_name', '')}, {n} thread{'' if n == 1 else 's'}"
    if timing_warning(results):
        title += " — BUSY MACHINE, latencies inflated"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    adjust_text(
        texts,
        x=[p[0] for p in pts],
        y=[p[1] for p in pts],
        ax=ax,
        expand=(1.3, 1.7),
        force_static=(0.4, 0.8),
        arrowprops={"arrowstyle": "-", "color": "#888888", "lw": 0.5},
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from diffspeed.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _draw_front(ax: Any, front: list[tuple[float, float]], pts: list[tuple[float, float]]) -> None:
    """The Pareto front as a staircase, from above its fastest point to the right of its best
    one, so that even a one-point front draws a visible corner."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    top, right = max(ys) * 1.15, max(xs) * 1.3
    fx = [front[0][0]] + [p[0] for p in front] + [right]
    fy = [top] + [p[1] for p in front] + [front[-1][1]]
    ax.step(fx, fy, where="post", color="black", lw=1.2, alpha=0.7, label="Pareto front", zorder=2)


def plot_grid(results: dict[str, Any], out: Path, path: Path) -> Path:
    """The same noises and conditions through each method, one labelled row per method."""
    from diffspeed.eval.images import save_grid

    n = int(results.get("settings", {}).get("grid", 10))
    rows = ordered_rows(results)
    ref = results.get("reference", {})
    images = [load_weights(out / ref["samples_file"])["samples"][:n]]
    labels = [f"reference: {ref.get('solver')}-{ref.get('steps')}"]
    for r in rows:
        x = load_weights(out / r["samples_file"])["samples"][:n]
        images.append(x)
        labels.append(f"{r['name']} ({r['nfe']} NFE)")
    x = torch.cat(images)
    if x.ndim != 4 or x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    save_grid(x, path, nrow=n, row_labels=labels, scale=0.32)
    return path


def markdown_table(results: dict[str, Any]) -> str:
    """The results table in GitHub markdown."""
    header, body = table_cells(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _summary_lines(results: dict[str, Any]) -> list[str]:
    if results.get("summary"):  # the runner said how it measured
        return [f"- {line}" for line in results["summary"]]
    m = results.get("manifest", {})
    s = results.get("settings", {})
    ref = results.get("reference", {})
    rounds = (results.get("timing") or {}).get("rounds", s.get("repeats"))
    basis = "CPU time" if speedup_basis(results) == "cpu" else "time"
    v = m.get("versions", {})
    git = m.get("git", {})
    out = [
        f"- {s.get('samples')} samples per row (seed {s.get('seed')}, the model's example "
        f"conditions), guidance {s.get('guidance')}, quality batches of {s.get('batch_size')}",
        f"- latency: {s.get('warmup')} warm-up, then {rounds} round-robin rounds (each "
        "times every row once, in a shuffled order, the baseline included; median) of a batch of "
        f"{s.get('timing_batch')}, {m.get('torch_threads')} torch thread(s), "
        f"{m.get('device')} ({m.get('device_name')}), {m.get('processes')} process(es)",
        f"- speedup: median over rounds of `{results.get('baseline')}`'s {basis} in that round / "
        f"the row's {basis}",
        f"- fidelity reference: {ref.get('solver')} {ref.get('steps')} steps "
        f"{ref.get('schedule')} (digest {ref.get('digest')})"
        + (f", its FDD {ref['fdd']:.3f}" if ref.get("fdd") is not None else ""),
        f"- torch {v.get('torch')}, diffusers {v.get('diffusers')}, diffspeed "
        f"{v.get('diffspeed')}, commit {str(git.get('commit'))[:10]}"
        + (" (dirty)" if git.get("dirty") else "")
        + f", {m.get('date_utc')}",
    ]
    return out


def _method_lines(results: dict[str, Any]) -> list[str]:
    """How the timing and the peak memory were measured: load, rounds, speedup basis."""
    from diffspeed.bench.timing import PEAK_MEMORY_METHODS

    out = []
    t = results.get("timing")
    if t:
        loads = ", ".join("-" if v is None else f"{v:.2f}" for v in t["load_average"])
        basis = "process CPU time" if t["speedup_basis"] == "cpu" else "wall time"
        out.append(
            f"- timing: {t.get('rounds')} round-robin rounds; 1-minute load average {loads} "
            f"(start, end of timing) on {t['cpu_count']} cores, {t['threads']} torch "
            f"thread(s); widest per-round spread +-{100 * t['max_spread']:.0f} %; "
            f"speedups from {basis}"
        )
    kinds = sorted({r.get("peak_mem_kind") for r in results["rows"].values()} - {None})
    for kind in kinds:
        out.append(f"- peak MB: {PEAK_MEMORY_METHODS.get(kind, kind)}")
    return out


def write_markdown(results: dict[str, Any], path: Path) -> Path:
    """``report.md``: a busy-machine warning when there is one, the table, the run's settings,
    what each column means, links to the figures."""
    warning = timing_warning(results)
    head = [f"> **Warning:** {warning}", ""] if warning else []
    notes = notes_of(results)
    columns = ["Columns:", ""]
    columns += [f"- **{c[0]}**: {notes[c[0]]}" for c in columns_of(results)]
    text = "\n".join(
        [
            "# diffspeed bench report",
            "",
            *head,
            markdown_table(results),
            "",
            *_summary_lines(results),
            *_method_lines(results),
            "",
            *columns,
            "",
            "![speed vs quality](pareto.png)",
            "",
            "![same noise through each method](grid.png)",
            "",
        ]
    )
    atomic_write_bytes(path, text.encode())
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:12px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
tr.front td:first-child{font-weight:bold}
.fam{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:5px}
img{max-width:100%;border:1px solid #eee}ul{font-size:13px;color:#444}
.warning{background:#fff3cd;border:2px solid #b8860b;padding:8px 12px;font-weight:bold}
dl{font-size:13px;color:#444}dt{font-weight:bold}dd{margin:0 0 4px 16px}
"""


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, markdown `code` spans becoming <code> elements."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def write_html(results: dict[str, Any], out: Path, pareto: Path, grid: Path) -> Path:
    """``index.html``: one self-contained page (images embedded as base64), readable offline."""
    header, body = table_cells(results)
    rows = ordered_rows(results)
    key = quality_key(results)
    front = set(pareto_front([(r["latency_ms"], r[key]) for r in rows]))
    trs = []
    for i, (r, cells) in enumerate(zip(rows, body, strict=True)):
        color = FAMILY_COLORS.get(r["family"], "#000")
        dot = f'<span class="fam" style="background:{color}"></span>'
        tds = [f"<td>{dot}{html.escape(cells[0])}</td>"]
        tds += [f"<td>{html.escape(c)}</td>" for c in cells[1:]]
        trs.append(f'<tr class="{"front" if i in front else "other"}">' + "".join(tds) + "</tr>")
    lines = _summary_lines(results) + _method_lines(results)
    summary = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
    warning = timing_warning(results)
    warn = f'<p class="warning" id="warning">Warning: {_inline(warning)}</p>' if warning else ""
    notes = notes_of(results)
    dl = "".join(
        f"<dt>{html.escape(c[0])}</dt><dd>{_inline(notes[c[0]])}</dd>" for c in columns_of(results)
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>diffspeed bench report</title>
<style>{_CSS}</style></head><body>
<h1>diffspeed bench report</h1>
{warn}
<ul>{summary}</ul>
<h2>Results</h2>
<table id="results"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr></thead>
<tbody>{"".join(trs)}</tbody></table>
<p>Bold rows are on the Pareto front (no other row is both faster and better).</p>
<h2>Columns</h2>
<dl>{dl}</dl>
<h2>Speed vs quality</h2>
<img id="pareto" alt="Pareto plot: quality against latency"
 src="data:image/png;base64,{_b64(pareto)}">
<h2>Same noise and condition through each method</h2>
<img id="grid" alt="sample grid, one row per method"
 src="data:image/png;base64,{_b64(grid)}">
</body></html>
"""
    path = out / "index.html"
    atomic_write_bytes(path, page.encode())
    return path


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``pareto.png``, ``grid.png`` and ``index.html`` under ``out``."""
    out = Path(out)
    pareto = plot_pareto(results, out / "pareto.png")
    grid = plot_grid(results, out, out / "grid.png")
    return {
        "report.md": write_markdown(results, out / "report.md"),
        "pareto.png": pareto,
        "grid.png": grid,
        "index.html": write_html(results, out, pareto, grid),
    }


def rich_table(results: dict[str, Any]) -> Any:
    """The results as a ``rich.table.Table`` for the terminal."""
    from rich.table import Table

    header, body = table_cells(results)
    t = Table(title="diffspeed bench", header_style="bold")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 else "right")
    for cells in body:
        t.add_row(*cells)
    return t
