"""The tuner's HTML report: the chosen configuration, the tuning -> validation shift, and every
candidate tried on a speed-vs-quality plot with its Pareto front (drawn with the bench
report's front and embedding helpers)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from diffspeed.bench.report import _CSS, _b64, pareto_front

#: Marker colours by trial status.
STATUS_COLORS = {
    "chosen": "#d62728",
    "best found": "#d62728",
    "rejected": "#9467bd",
    "met (slower)": "#1f77b4",
    "passed": "#2ca02c",
    "over budget": "#bcbd22",
    "pruned": "#bbbbbb",
}


def _color(status: str) -> str:
    return STATUS_COLORS.get(status, "#ff7f0e")  # dropped@rN


def plot_trials(result: Any, path: Path) -> Path:
    """Quality (at the deepest rung each candidate reached) against estimated latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result.tuned.quality
    higher = q.startswith("psnr")
    trials = [t for t in result.trials if t.values]
    pts = [(1e3 * t.latency_s, -t.best_value if higher else t.best_value) for t in trials]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(9, 5.6))
    picked = ("chosen", "best found")
    statuses = sorted({t.status for t in trials}, key=lambda st: (st in picked, st))
    for status in statuses:  # the chosen one last, on top
        idx = [i for i, t in enumerate(trials) if t.status == status]
        big = status in picked
        ax.scatter([pts[i][0] for i in idx], [trials[i].best_value for i in idx],
                   s=90 if big else 26, color=_color(status), label=status,
                   zorder=5 if big else 3, edgecolor="black" if big else "white",
                   linewidth=0.8 if big else 0.4)  # fmt: skip
        if big:
            for i in idx:
                ax.annotate(trials[i].candidate.label, (pts[i][0], trials[i].best_value),
                            xytext=(6, -12), textcoords="offset points", fontsize=8,
                            fontweight="bold")  # fmt: skip
    fx = [pts[i][0] for i in front]
    fy = [trials[i].best_value for i in front]
    ax.step(fx, fy, where="post", color="black", lw=1.1, alpha=0.7, label="Pareto front")
    for i in front:
        ax.annotate(trials[i].candidate.label, (pts[i][0], trials[i].best_value),
                    xytext=(4, 3), textcoords="offset points", fontsize=6.5)  # fmt: skip
    target = float(q.split("=")[-1])
    ax.axhline(target, color="#999999", ls="--", lw=1, label=f"target {q}")
    ax.set_xscale("log")
    ax.set_xlabel("estimated latency per image (ms, log scale)")
    ax.set_ylabel(q.split("<")[0].split(">")[0] + (" (higher is better)" if higher else
                                                  " (lower is better)"))  # fmt: skip
    ax.set_title("diffspeed tune: every candidate tried", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(result: Any, out: str | Path) -> Path:
    """Write ``out/pareto.png``, ``out/trials.json`` and a self-contained ``out/index.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_trials(result, out / "pareto.png")
    (out / "trials.json").write_text(
        json.dumps({"report": result.tuned.report,
                    "trials": [t.to_dict() for t in result.trials]}, indent=1, default=str)
    )  # fmt: skip
    rep = result.tuned.report
    rows = []
    for t in sorted(result.trials, key=lambda t: (t.latency_s, t.nfe)):
        vals = " / ".join(f"{t.values[r]:.4g}" for r in sorted(t.values))
        val = "-" if t.validation is None else f"{t.validation:.4g}"
        rows.append(
            f"<tr><td>{html.escape(t.candidate.label)}</td><td>{t.nfe}</td>"
            f"<td>{1e3 * t.latency_s:.2f}</td><td>{vals}</td><td>{val}</td>"
            f"<td>{html.escape(t.status)}</td></tr>"
        )
    cost = rep["search_cost"]
    summary = [
        f"constraint {result.tuned.quality}, budget {rep['budget']}, guidance {rep['guidance']}",
        f"{'chosen' if result.met else 'NOT MET - best found'}: {rep['label']} "
        f"({rep['nfe']} NFE, ~{rep['latency_ms_estimate']:.2f} ms/image estimated)",
        f"tuning value {rep['tuning']['value']:.4g} on {rep['tuning']['noises']} calibration "
        f"noises -> validation {rep['validation']['value']:.4g} on "
        f"{rep['validation']['samples']} samples (shift {rep['shift']:+.4g})",
        f"search cost: {cost['candidates']} candidates, {cost['nfe']} network calls "
        f"({cost['sample_evals']} sample evaluations), {cost['seconds']:.1f} s",
        "rejected in validation: " + (", ".join(rep["rejected_in_validation"]) or "none"),
    ]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>diffspeed tune report</title>
<style>{_CSS}</style></head><body>
<h1>diffspeed tune report</h1>
<ul>{"".join(f"<li>{html.escape(s)}</li>" for s in summary)}</ul>
<h2>Speed vs quality of every candidate tried</h2>
<img id="pareto" alt="quality against estimated latency, every candidate"
 src="data:image/png;base64,{_b64(png)}">
<h2>Candidates</h2>
<p>Values per rung (growing calibration sets), then on the validation seeds.</p>
<table id="trials"><thead><tr><th>candidate</th><th>NFE</th><th>ms/image (est.)</th>
<th>rung values</th><th>validation</th><th>status</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
