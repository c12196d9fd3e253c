"""Render the benchmark results (bench/run.py's JSON) as docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TARGETS = {
    "a_throughput": 3.0,
    "a_p50": 3.0,
    "a_p99": 3.0,
    "b_daemon": 1.2,
    "c_dpsgd": 2.0,
    "d_help": 1.5,  # #20: with byte-compiled code, as any real install has
    "d_budget": 3.0,
}


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{nd}f}"
    return str(x)


def _ok(ratio: float | None, target: float | None) -> str:
    if ratio is None or target is None:
        return ""
    return "yes" if ratio <= target else "**no**"


def summary_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: label, measured, baseline, ratio, target."""
    rows: list[dict[str, Any]] = []
    a = r.get("pipeline") or {}
    if "ratios" in a:
        rows += [
            {"key": "a_throughput", "label": "(a) mock pipeline throughput, daemon",
             "value": f"{_f(a['daemon']['jobs_per_s'], 1)} jobs/s",
             "baseline": f"floor {_f(a['floor']['jobs_per_s'], 1)} jobs/s", "ratio": a["ratios"]["throughput"]},
            {"key": "a_p50", "label": "(a) drop → artifact latency p50",
             "value": f"{_f(a['daemon']['p50_ms'])} ms",
             "baseline": f"floor p50 {_f(a['floor']['p50_ms'])} ms/job", "ratio": a["ratios"]["latency_p50"]},
            {"key": "a_p99", "label": "(a) drop → artifact latency p99",
             "value": f"{_f(a['daemon']['p99_ms'])} ms",
             "baseline": f"floor p99 {_f(a['floor']['p99_ms'])} ms/job", "ratio": a["ratios"]["latency_p99"]},
        ]
    b = r.get("backends") or {}
    if "ratios" in b:
        rows.append({"key": "b_daemon", "label": "(b) opacus job end to end, daemon + warm worker",
                     "value": f"{_f(b['job_s']['opacus'])} s",
                     "baseline": f"in-process plan+train {_f(b['inproc_s'])} s",
                     "ratio": b["ratios"]["daemon_vs_inproc"]})
    c = r.get("dpsgd") or {}
    defaults = c.get("default_modes") or {}
    for row in c.get("results", []):
        if row.get("mode") == defaults.get(str(row.get("batch_size")), "hooks") and "slowdown_x" in row:
            rows.append({"key": "c_dpsgd", "label": f"(c) DP-SGD, default mode ({row['mode']}) vs non-private, batch {row['batch_size']}",
                         "value": f"{_f(float(row.get('samples_per_cpu_s', 0)), 0)} samples/s",
                         "baseline": "non-private, same run", "ratio": float(row["slowdown_x"])})
    for batch, best in (c.get("best") or {}).items():
        rows.append({"key": "c_dpsgd", "label": f"(c) DP-SGD, fastest mode ({best['mode']}), batch {batch}",
                     "value": f"{_f(float(best.get('samples_per_cpu_s', 0)), 0)} samples/s",
                     "baseline": "non-private, same run", "ratio": float(best["slowdown_x"])})
    d = r.get("startup") or {}
    if "ratios" in d:
        m = d["median_s"]
        rows += [
            {"key": "d_help", "label": "(d) `pandacead --help` start-up", "value": f"{_f(m['pandacead --help'] * 1e3, 1)} ms",
             "baseline": f"`python -c pass` {_f(m['python -c pass'] * 1e3, 1)} ms", "ratio": d["ratios"]["help"]},
            {"key": "d_budget", "label": "(d) `pandacead budget show` start-up",
             "value": f"{_f(m['pandacead budget show'] * 1e3, 1)} ms",
             "baseline": f"`python -c pass` {_f(m['python -c pass'] * 1e3, 1)} ms", "ratio": d["ratios"]["budget_show"]},
        ]
    if "ratios" in b and "syft_vs_opacus" in b["ratios"]:
        rows.append({"key": "e_syft", "label": "(e) syft backend per job, warm", "value": f"{_f(b['job_s']['syft'])} s",
                     "baseline": f"opacus backend {_f(b['job_s']['opacus'])} s", "ratio": b["ratios"]["syft_vs_opacus"]})
    rss = b.get("rss") or {}
    if rss.get("opacus"):
        o = rss["opacus"]
        w = max(o.get("workers_kb") or [0]) / 1024
        rows.append({"key": "f_rss", "label": "(f) peak RSS during an opacus job: daemon / worker",
                     "value": f"{_f((o.get('daemon_kb') or 0) / 1024, 0)} MB / {_f(w, 0)} MB",
                     "baseline": f"in-process runner {_f((rss.get('inproc_kb') or 0) / 1024, 0)} MB", "ratio": None})
    if rss.get("syft"):
        sy = rss["syft"]
        w = (max(sy.get("workers_kb") or [0]) + sum(sy.get("worker_children_kb") or [])) / 1024
        rows.append({"key": "f_rss", "label": "(f) peak RSS during a syft job: daemon / worker",
                     "value": f"{_f((sy.get('daemon_kb') or 0) / 1024, 0)} MB / {_f(w, 0)} MB",
                     "baseline": "", "ratio": None})
    rows += round2_rows(r.get("round2") or {})
    for row in rows:
        row.setdefault("target", TARGETS.get(row["key"]))
    return rows


DPSGD_TARGETS = {0: 1.5, 2: 1.5, 4: 1.8}  # by hidden layers: linear and 2 layers ≤ 1.5×, 4×1024 ≤ 1.8× (#20)


def round2_rows(g: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows of bench_round2.py: this tree, and today's release beside it (no target)."""
    rows: list[dict[str, Any]] = []
    st = g.get("startup") or {}
    if "ratios" in st:
        m, q = st["median_s"], st["ratios"]
        base = f"`python -c pass` {_f(m['python -c pass'] * 1e3, 1)} ms"
        for cmd, target in (("--help", 1.5), ("budget show", 3.0)):
            rows.append({"key": "r_startup", "label": f"(r) `pandacead {cmd}` start-up (release: {q[f'release: {cmd}']:.2f}×"
                         + (f"; `import re` alone: {q[ctx]:.2f}×)" if (ctx := "python -c 'import re'") in q and cmd == "--help" else ")"),
                         "value": f"{_f(m[f'this: {cmd}'] * 1e3, 1)} ms", "baseline": base,
                         "ratio": q[f"this: {cmd}"], "target": target})
    for sh in (g.get("dpsgd") or {}).get("shapes", []):
        h = sh["hidden"]
        name = "linear" if not h else "MLP " + "-".join(map(str, h))
        v = sh["vs_nonprivate"]
        rows.append({"key": "r_dpsgd", "label": f"(r) DP-SGD {name}, batch {sh['batch']} (release: {v['opacus_dataloader']:.2f}×)",
                     "value": f"{_f(1e6 / sh['us_per_sample']['dp_this'], 0)} samples/s",
                     "baseline": "non-private, direct indexing, same run", "ratio": v["dp_this"],
                     "target": DPSGD_TARGETS.get(len(h), 1.5)})
    for shape, jr in (g.get("jobs") or {}).items():
        if shape == "first_s" or not isinstance(jr, dict) or "median_s" not in jr:
            continue
        rows.append({"key": "r_jobs", "label": f"(r) opacus job, repeated shape ({shape}): this / release",
                     "value": f"{_f(jr['median_s']['this'])} s", "baseline": f"release {_f(jr['median_s']['release'])} s",
                     "ratio": jr["this_vs_release"], "target": 0.5})
    bl = g.get("backlog") or {}
    if "this" in bl:
        for tree, target in (("this", 1.3), ("release", None)):
            b = bl[tree]
            small, large = b["sizes"]
            rows.append({"key": "r_backlog", "label": f"(r) backlog drain per job, {large} vs {small} files ({tree})",
                         "value": f"{_f(b['per_job_ms'][str(large)])} ms/job",
                         "baseline": f"{_f(b['per_job_ms'][str(small)])} ms/job at {small}",
                         "ratio": b["large_vs_small"], "target": target})
    sc = g.get("schema") or {}
    if "fast_us" in sc:
        rows.append({"key": "r_schema", "label": "(r) validating a valid job: fast check vs jsonschema",
                     "value": f"{_f(sc['fast_us'], 1)} µs", "baseline": f"jsonschema {_f(sc['jsonschema_us'], 0)} µs",
                     "ratio": sc["fast_vs_jsonschema"], "target": None})
    return rows


# --------------------------------------------------------------------------- plot


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"pandacead benchmarks — {r.get('env', {}).get('when', '')}, "
                 f"{r.get('env', {}).get('cpus', '?')} CPUs, each figure a ratio against a baseline of the same run",
                 fontsize=10)

    # 1. every ratio against its target
    ax = axes[0][0]
    rows = [row for row in summary_rows(r) if row["ratio"] is not None]
    labels = [row["label"].replace("`", "") for row in rows]
    ratios = [row["ratio"] for row in rows]
    colors = ["#999999" if row["target"] is None else ("#2e8b57" if row["ratio"] <= row["target"] else "#d2691e")
              for row in rows]
    y = list(range(len(rows)))[::-1]
    ax.barh(y, ratios, color=colors)
    for yi, row in zip(y, rows):
        if row["target"]:
            ax.plot([row["target"]] * 2, [yi - 0.4, yi + 0.4], color="black", lw=2)
        ax.text(row["ratio"] * 1.05, yi, f"{row['ratio']:.2f}×", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([lab if len(lab) < 58 else lab[:55] + "…" for lab in labels], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ratio to the baseline (log); black tick = target; green holds, orange misses")
    ax.set_title("Ratios against their targets", fontsize=9)

    # 2. mock pipeline: latency distribution vs the floor
    ax = axes[0][1]
    a = r.get("pipeline") or {}
    samples = a.get("samples_ms") or {}
    for key, label, color in (("floor_per_job", "floor: outputs + fsyncs + signature + 1 commit", "#4682b4"),
                              ("daemon_latency", "daemon: drop → artifact in outbox/", "#d2691e")):
        v = sorted(samples.get(key) or [])
        if v:
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=label, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("ms per job (log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("(a) mock pipeline, one job at a time", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)

    # 3. opacus / syft per job
    ax = axes[1][0]
    b = r.get("backends") or {}
    bars: list[tuple[str, float, list[float]]] = []
    if "inproc_s" in b:
        bars.append(("opacus in-process\n(plan+train)", b["inproc_s"], b.get("inproc_all") or []))
        bars.append(("opacus daemon\n(warm worker)", b["job_s"]["opacus"], b["job_s_all"]["opacus"]))
        if "syft" in b.get("job_s", {}):
            bars.append(("syft daemon\n(warm worker)", b["job_s"]["syft"], b["job_s_all"]["syft"]))
        if b.get("first_job_s", {}).get("opacus") is not None:
            bars.append(("opacus daemon,\n1st job, prewarmed", b["first_job_s"]["opacus"], []))
        if b.get("cold_first_job_s") is not None:
            bars.append(("opacus daemon,\n1st job, no prewarm", b["cold_first_job_s"], []))
        if b.get("first_job_s", {}).get("syft") is not None:
            bars.append(("syft daemon,\n1st job (datasite)", b["first_job_s"]["syft"], []))
    if bars:
        ys = list(range(len(bars)))[::-1]
        ax.barh(ys, [v for _, v, _ in bars], color="#8fbc8f")
        for yi, (_, v, pts) in zip(ys, bars):
            ax.scatter(pts, [yi] * len(pts), color="black", s=8, zorder=3)
            ax.text(max([v, *pts]) * 1.03, yi, f"{v:.2f} s", va="center", fontsize=7)
        ax.set_yticks(ys)
        ax.set_yticklabels([n.replace("\n", " ") for n, _, _ in bars], fontsize=7)
    ax.set_xlabel("seconds per job (median; dots: each job)")
    ax.set_title("(b, e) a real DP-SGD job (examples/alice-logreg.json)", fontsize=9)

    # 4. DP-SGD slowdown per grad-sample mode
    ax = axes[1][1]
    c = r.get("dpsgd") or {}
    res = [row for row in c.get("results", []) if "slowdown_x" in row]
    batches = sorted({row["batch_size"] for row in res})
    modes = [m for m in ("hooks", "functorch", "ew", "ghost") if any(row["mode"] == m for row in res)]
    modes += sorted({row["mode"] for row in res} - set(modes))
    width = 0.8 / max(1, len(batches))
    for i, batch in enumerate(batches):
        vals = [next((row["slowdown_x"] for row in res if row["mode"] == m and row["batch_size"] == batch), 0)
                for m in modes]
        ax.bar([j + i * width for j in range(len(modes))], vals, width=width, label=f"batch {batch}")
    if modes:
        ax.axhline(2.0, color="black", lw=1, ls="--", label="target 2×")
        ax.set_xticks([j + width * (len(batches) - 1) / 2 for j in range(len(modes))])
        ax.set_xticklabels(modes, fontsize=8)
        ax.legend(fontsize=7)
    ax.set_ylabel("DP-SGD time / non-private time (CPU)")
    ax.set_title("(c) DP-SGD slowdown per Opacus grad-sample mode (MLP 10-64-64-1)", fontsize=9)

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
