"""The audit report as files a person reads: audit.json, audit.txt and (with matplotlib) audit.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .runner import AuditReport

__all__ = ["write_report", "plot"]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(report: AuditReport, out_dir: str | Path) -> dict[str, str]:
    """Write the report into `out_dir`; returns {"json", "text", "png"?: path}. The PNG needs matplotlib."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    png = out / "audit.png"
    try:
        plot(report, png)
        files["png"] = str(png)
    except ImportError:
        pass  # matplotlib is optional (the dev extra): the numbers are in audit.json and audit.txt
    files["json"] = str(out / "audit.json")
    files["text"] = str(out / "audit.txt")
    report.files = dict(files)
    _atomic_write(out / "audit.txt", (report.summary() + "\n\n" + _details(report) + "\n").encode("utf-8"))
    _atomic_write(out / "audit.json", (json.dumps(report.to_dict(with_scores=True), indent=2) + "\n").encode("utf-8"))
    return files


def _details(report: AuditReport) -> str:
    lines = ["test:"]
    lines += [f"  {k}: {v}" for k, v in report.test.items() if k != "details"]
    lines.append("parameters:")
    lines += [f"  {k}: {json.dumps(v, sort_keys=True)}" for k, v in report.parameters.items()]
    return "\n".join(lines)


def plot(report: AuditReport, path: str | Path) -> None:
    """A PNG of the test statistic under both hypotheses, the chosen threshold and the numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if report.method == "many-runs":
        a, b = report.scores.get("without", []), report.scores.get("with", [])
        labels = ("H0: trained without the canary", "H1: trained with the canary")
    else:
        a, b = report.scores.get("excluded", []), report.scores.get("included", [])
        labels = ("canaries left out", "canaries trained on")
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    both = np.concatenate([np.asarray(a, float), np.asarray(b, float)]) if (a or b) else np.zeros(1)
    lo, hi = float(both.min()), float(both.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    ax.hist(a, bins=bins, alpha=0.55, label=f"{labels[0]} ({len(a)})", color="tab:blue")
    ax.hist(b, bins=bins, alpha=0.55, label=f"{labels[1]} ({len(b)})", color="tab:red")
    t: Any = report.test.get("threshold")
    if t is not None and lo <= t <= hi:
        ax.axvline(t, color="black", linestyle="--", linewidth=1, label=f"threshold ({report.test.get('direction')})")
    stat = "canary's weight (white-box)" if report.statistic == "weight" else "canary's margin (−loss, black-box)"
    ax.set_xlabel(f"test statistic: {stat}")
    ax.set_ylabel("runs" if report.method == "many-runs" else "canaries")
    hi_b = report.epsilon_interval[1]
    ax.set_title(
        f"{report.backend}: claimed ε = {report.epsilon_claimed:.3f}, "
        f"ε̂ ≥ {report.epsilon_lower:.3f} ({report.confidence:.0%}), "
        + ("VIOLATION" if report.violated else "consistent")
    )
    text = (
        f"method {report.method}, {report.runs} run(s), δ = {report.delta:g}\n"
        f"interval [{report.epsilon_lower:.3f}, {'∞' if hi_b is None else f'{hi_b:.3f}'}]\n"
        f"max certifiable ε̂ {report.epsilon_max:.3f}"
    )
    ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", ha="left", fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
