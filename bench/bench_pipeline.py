"""(a) The mock pipeline through a real daemon process, against the floor measured alongside.

    .venv/bin/python bench/bench_pipeline.py [--rounds 4] [--burst 150] [--serial 40] [--workers 1]

A real `pandacead run` (console script, default settings except the mock
backend) on a fresh home. Each round runs, back to back:

* the floor (bench/floor.py) for as many jobs as the round's burst;
* a closed loop of `--serial` jobs: drop one, wait for its artifact, drop the
  next: the latency from drop (the rename into inbox/) to the artifact's
  rename into outbox/, observed with inotify;
* a burst of `--burst` jobs dropped at once: throughput from the first drop
  to the last artifact.

The floor and the daemon alternate within each round, so a change in the
machine's load (fsync cost varies with other I/O) hits both alike; the
ratios compare samples pooled over all rounds.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor  # noqa: E402
from common import (  # noqa: E402
    Daemon,
    OutboxWatch,
    bench_root,
    drop,
    job,
    make_home,
    median,
    proc_status,
    quantile,
    rm_tree,
)


def run(rounds: int = 4, burst: int = 150, serial: int = 40, workers: int = 1, keep: bool = False) -> dict[str, Any]:
    root = bench_root()
    home = make_home(root / "home", backend="mock", workers=workers)
    inbox, outbox = home / "inbox", home / "outbox"
    watch = OutboxWatch(outbox)
    d = Daemon(home)
    seq = [0]

    def next_job() -> tuple[str, dict[str, Any]]:
        seq[0] += 1
        jid = f"m{seq[0]:05d}"
        return jid, job(jid, user_id=f"u{seq[0] % 50}", epsilon=0.01)

    try:
        ready = d.wait_ready()
        # Warm-up: first imports on the job path (numpy, safetensors), the page cache.
        for _ in range(10):
            jid, j = next_job()
            drop(inbox, f"{jid}.json", j)
            watch.wait([f"{jid}.json"], timeout=60)
        sizes = {
            "artifact": (outbox / f"{jid}.json").stat().st_size,
            "envelope": (outbox / f"{jid}.dsse.json").stat().st_size,
        }
        latencies: list[float] = []
        floor_per_job: list[float] = []
        floor_parts: dict[str, list[float]] = {}
        floor_total = 0.0
        floor_n = 0
        tp_time = 0.0
        tp_jobs = 0
        per_round = []
        for r in range(rounds):
            fl = floor.measure(root / f"floor-{r}", burst, sizes["artifact"], sizes["envelope"])
            floor_per_job += fl["per_job"]
            for k, v in fl["parts"].items():
                floor_parts.setdefault(k, []).extend(v)
            floor_total += fl["total_s"]
            floor_n += fl["n"]
            rm_tree(root / f"floor-{r}")

            lat = []
            for _ in range(serial):
                jid, j = next_job()
                t0 = drop(inbox, f"{jid}.json", j)
                t1 = watch.wait([f"{jid}.json"], timeout=60)[f"{jid}.json"]
                lat.append(t1 - t0)
            latencies += lat

            batch = [next_job() for _ in range(burst)]
            t0 = None
            for jid, j in batch:
                t = drop(inbox, f"{jid}.json", j)
                t0 = t if t0 is None else t0
            done = watch.wait([f"{jid}.json" for jid, _ in batch], timeout=600)
            dt = max(done.values()) - t0
            tp_time += dt
            tp_jobs += burst
            per_round.append({
                "floor_jobs_per_s": fl["n"] / fl["total_s"],
                "floor_p50_ms": median(fl["per_job"]) * 1e3,
                "daemon_jobs_per_s": burst / dt,
                "daemon_p50_ms": median(lat) * 1e3,
            })
        # Every job must have ended as an artifact (not an error report).
        errors = sorted(p.name for p in outbox.glob("*.error.json"))
        rss = {"daemon_kb": proc_status(d.proc.pid).get("VmHWM")}
    finally:
        rc = d.stop()
        watch.close()
    floor_tp = floor_n / floor_total
    daemon_tp = tp_jobs / tp_time
    res = {
        "config": {"rounds": rounds, "burst": burst, "serial": serial, "workers": workers,
                   "backend": "mock", "home": str(home)},
        "ready_s": ready,
        "output_sizes": sizes,
        "errors": errors,
        "daemon_exit": rc,
        "floor": {
            "jobs_per_s": floor_tp,
            "p50_ms": median(floor_per_job) * 1e3,
            "p99_ms": quantile(floor_per_job, 0.99) * 1e3,
            "parts_p50_ms": {k: median(v) * 1e3 for k, v in floor_parts.items()},
        },
        "daemon": {
            "jobs_per_s": daemon_tp,
            "p50_ms": median(latencies) * 1e3,
            "p99_ms": quantile(latencies, 0.99) * 1e3,
            "jobs": seq[0],
            "peak_rss_kb": rss["daemon_kb"],
        },
        "ratios": {
            "throughput": floor_tp / daemon_tp,
            "latency_p50": median(latencies) / median(floor_per_job),
            "latency_p99": quantile(latencies, 0.99) / quantile(floor_per_job, 0.99),
        },
        "per_round": per_round,
    }
    if not keep:
        rm_tree(root)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--burst", type=int, default=150)
    ap.add_argument("--serial", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark home (its daemon.log)")
    a = ap.parse_args()
    print(json.dumps(run(a.rounds, a.burst, a.serial, a.workers, a.keep), indent=2))


if __name__ == "__main__":
    main()
