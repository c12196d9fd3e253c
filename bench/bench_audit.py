"""Audit cost and tightness: opacus at ε ∈ {1, 4}, many-runs vs one-run (docs/audit.md).

    .venv/bin/python bench/bench_audit.py [--runs 200] [--canaries 1000] [--no-write]

Runs the real opacus backend in this process (one torch thread, the default
PRV accountant, one full-batch DP-SGD step per run) on the audit's public
synthetic data, and writes its table between the `bench_audit` markers of
docs/benchmarks.md (appended when absent; bench/run.py rewrites that file,
so run this after it). A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench_audit:begin -->"
END = "<!-- bench_audit:end -->"


def measure(runs: int, canaries: int, epsilons: list[float]) -> list[dict]:
    import torch
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead.audit import AuditSettings, run_audit

    torch.set_num_threads(1)
    rows = []
    cases = [("many-runs", "loss", runs), ("one-run", "loss", 1), ("one-run", "weight", 1)]
    for eps in epsilons:
        for method, statistic, n in cases:
            settings = AuditSettings(epsilon=eps, method=method, statistic=statistic, runs=max(n, 8),
                                     canaries=canaries, seed=int(eps * 1000) + len(rows))
            t0 = time.monotonic()
            r = run_audit(OpacusTrainer(), settings)
            rows.append({
                "epsilon": eps, "method": method, "statistic": statistic, "runs": r.runs,
                "canaries": canaries if method == "one-run" else 1,
                "seconds": round(time.monotonic() - t0, 1), "epsilon_claimed": r.epsilon_claimed,
                "epsilon_lower": r.epsilon_lower, "epsilon_max": r.epsilon_max,
                "tightness": r.epsilon_lower / r.epsilon_claimed, "violated": r.violated,
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def section(rows: list[dict], seconds: float) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Privacy audit: cost and tightness (bench/bench_audit.py)",
        "",
        "`pandacead.audit` on the opacus backend, in process, one torch thread, PRV accountant, one",
        f"full-batch DP-SGD step per run, δ = 1e-5, 95 % confidence; measured {when} in {seconds:.0f} s",
        f"(load average {os.getloadavg()[0]:.2f} at the end; the machine is shared, so seconds are indicative).",
        "Tightness is ε̂ / claimed ε: a sound trainer stays below 1; what is reachable is capped by the",
        "trial count (\"max ε̂\"). See docs/audit.md for the estimators.",
        "",
        "| claimed ε | method | statistic | runs | canaries | seconds | ε̂ (lower bound) | ε̂ / ε | max ε̂ for these trials |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['epsilon_claimed']:.3f} | {r['method']} | {r['statistic']} | {r['runs']} | {r['canaries']} | "
            f"{r['seconds']:.1f} | {r['epsilon_lower']:.3f} | {r['tightness']:.2f} | {r['epsilon_max']:.2f} |"
        )
    lines += ["", END, ""]
    return "\n".join(lines)


def write(text: str, path: Path) -> None:
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        doc = head + text + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="training runs of each many-runs audit")
    ap.add_argument("--canaries", type=int, default=1000, help="canaries of each one-run audit")
    ap.add_argument("--epsilon", type=float, action="append", help="claimed ε (repeatable; default 1 and 4)")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = ap.parse_args()
    t0 = time.monotonic()
    rows = measure(args.runs, args.canaries, args.epsilon or [1.0, 4.0])
    text = section(rows, time.monotonic() - t0)
    if args.no_write:
        print(text)
    else:
        write(text, REPO / "docs" / "benchmarks.md")
        print(f"wrote {REPO / 'docs' / 'benchmarks.md'}")
    sys.exit(1 if any(r["violated"] for r in rows) else 0)


if __name__ == "__main__":
    main()
