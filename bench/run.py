"""pandacead's benchmarks: one command (`make bench`), every figure a ratio against a baseline of the same run.

    .venv/bin/python bench/run.py [--quick] [--only a,b,c,d] [--json results.json] [--render results.json]

Runs, in this order (about 10 minutes on 2 cores, more under load):

  (d) bench_startup.py   `pandacead --help` / `budget show` start-up vs `python -c pass`
  (a) bench_pipeline.py  mock jobs through a real daemon vs the floor of unavoidable per-job work
  (b, e, f) bench_backends.py  an opacus job through the daemon vs in-process; syft vs opacus; peak RSS
  (r) bench_round2.py    #20: start-up, DP-SGD vs the fastest non-private loop, repeated opacus
                         jobs, backlog drain and schema check, side by side with today's release
  (c) bench_dpsgd.py     Opacus's grad-sample modes with DataLoaders, and their peak RSS
                         (not in the default run: (r) has the fair DP-SGD baseline; `--only c`)

and writes docs/benchmarks.md and docs/benchmarks.png. A step that fails is
reported as failed in the document; the others still run. Torch uses one
thread everywhere (OMP_NUM_THREADS=1, `torch_threads = 1`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_backends  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_round2  # noqa: E402
import bench_startup  # noqa: E402
import report  # noqa: E402
import writeup  # noqa: E402
from common import REPO, bench_root, clean_env, rm_tree  # noqa: E402


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    scratch = bench_root()
    fs = subprocess.run(["df", "-T", str(scratch)], capture_output=True, text=True).stdout.splitlines()[-1:]
    rm_tree(scratch)
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "loadavg_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "scratch_fs": " ".join(fs[0].split()[:2]) if fs else "",
        "versions": {d: _version(d) for d in ("pandacead", "torch", "opacus", "syft", "watchdog", "sqlite-utils")},
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() or None,
    }


def _default_setting() -> str:
    from pandacead.config import DEFAULTS

    return str(DEFAULTS["trainer"].get("grad_sample_mode", "hooks"))


def default_grad_sample_mode(batch: int) -> str:
    """The grad-sample mode a job with this batch size gets under the default settings."""
    mode = _default_setting()
    if mode != "auto":
        return mode
    try:
        from pandacead_opacus.trainer import AUTO_GHOST_MIN_BATCH  # light: no torch
    except ImportError:
        return "hooks"
    return "ghost" if batch >= AUTO_GHOST_MIN_BATCH else "hooks"


def dpsgd(quick: bool) -> dict[str, Any]:
    """The Opacus backend's bench/bench_dpsgd.py, as a subprocess; its JSON plus a summary."""
    script = HERE / "bench_dpsgd.py"
    if not script.exists():
        return {"error": "bench/bench_dpsgd.py is not there (it comes with the Opacus backend)"}
    cmd = [sys.executable, str(script), "--threads", "1"]
    if quick:
        cmd += ["--rounds", "2", "--batch", "256"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=1200)
    if out.returncode != 0:
        return {"error": f"bench_dpsgd.py exited {out.returncode}: {out.stderr.strip()[-2000:]}"}
    text = out.stdout
    res = json.loads(text[text.index("{"):])
    res["default_modes"] = {}
    for row in res.get("results", []):
        res["default_modes"][str(row["batch_size"])] = default_grad_sample_mode(int(row["batch_size"]))
    res["default_setting"] = _default_setting()
    best: dict[str, Any] = {}
    for row in res.get("results", []):
        if "slowdown_x" not in row:
            continue
        key = str(row["batch_size"])
        if key not in best or row["slowdown_x"] < best[key]["slowdown_x"]:
            best[key] = row
    res["best"] = best
    return res


#: A section another benchmark (bench_audit.py, bench_ledger.py) or an earlier round of work wrote
#: into docs/benchmarks.md between markers: `<!-- name:begin -->` ... `<!-- name:end -->`.
SECTION = re.compile(r"<!-- (\w+): ?begin -->.*?<!-- \1: ?end -->\n?", re.S)


def keep_sections(new: str, old: str) -> str:
    """`new` with every marked section of `old` that `new` lacks appended (a regeneration used to drop them)."""
    names = {m.group(1) for m in SECTION.finditer(new)}
    kept = [m.group(0).rstrip("\n") for m in SECTION.finditer(old) if m.group(1) not in names]
    return new.rstrip("\n") + "\n\n" + "\n\n".join(kept) + "\n" if kept else new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test, not for the docs)")
    ap.add_argument("--only", default="d,a,b,r", help="steps to run, from d,a,b,r,c")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--render", default=None, help="do not measure: render the docs from this results file")
    ap.add_argument("--out", default=str(REPO / "docs"), help="where benchmarks.md and benchmarks.png go")
    args = ap.parse_args()
    out = Path(args.out)

    if args.render:
        results = json.loads(Path(args.render).read_text())
    else:
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        steps = [s.strip() for s in args.only.split(",") if s.strip()]
        q = args.quick
        results = {"env": environment(), "quick": q}
        t_all = time.monotonic()
        plan = {
            "d": ("startup", lambda: bench_startup.run(runs=5 if q else 15)),
            "a": ("pipeline", lambda: {**bench_pipeline.run(rounds=2 if q else 6, burst=60 if q else 100,
                                                            serial=20 if q else 30),
                                       "stages": bench_pipeline.stages(60 if q else 150)}),
            "b": ("backends", lambda: bench_backends.run(jobs=2 if q else 7, syft=True)),
            "c": ("dpsgd", lambda: dpsgd(q)),
            "r": ("round2", lambda: bench_round2.run(quick=q)),
        }
        for step in steps:
            name, fn = plan[step]
            print(f"[bench] {name} …", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                results[name] = fn()
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                print(f"[bench] {name} failed: {exc}", file=sys.stderr, flush=True)
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
            print(f"[bench] {name} done in {results[name]['seconds']} s", file=sys.stderr, flush=True)
        results["env"]["loadavg_end"] = round(os.getloadavg()[0], 2)
        results["env"]["total_seconds"] = round(time.monotonic() - t_all, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    report.plot(results, out / "benchmarks.png")
    doc = out / "benchmarks.md"
    doc.write_text(keep_sections(writeup.markdown(results), doc.read_text() if doc.exists() else ""))
    for row in report.summary_rows(results):
        verdict = "" if row["target"] is None else (" ok" if row["ratio"] <= row["target"] else " MISSES")
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        ratio += "" if row["target"] is None else f" (target <= {row['target']:g})"
        print(f"{row['label'].replace('`', ''):70s} {row['value']:>22s}  {ratio}{verdict}")
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}")


if __name__ == "__main__":
    main()
