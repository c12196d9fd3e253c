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
    cpu_seconds,
    drop,
    in_process_pipeline,
    job,
    make_home,
    median,
    proc_status,
    quantile,
    rm_tree,
)


def run(rounds: int = 4, burst: int = 150, serial: int = 40, workers: int = 1, keep: bool = False,
        epochs: int = 2, **daemon_env: str) -> dict[str, Any]:
    root = bench_root()
    home = make_home(root / "home", backend="mock", workers=workers)
    inbox, outbox = home / "inbox", home / "outbox"
    watch = OutboxWatch(outbox)
    d = Daemon(home, **daemon_env)
    seq = [0]

    def next_job() -> tuple[str, dict[str, Any]]:
        seq[0] += 1
        jid = f"m{seq[0]:05d}"
        return jid, job(jid, user_id=f"u{seq[0] % 50}", epsilon=0.01, epochs=epochs)

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
        burst_cpu = 0.0
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
            cpu0 = cpu_seconds([d.proc.pid])
            t0 = None
            for jid, j in batch:
                t = drop(inbox, f"{jid}.json", j)
                t0 = t if t0 is None else t0
            done = watch.wait([f"{jid}.json" for jid, _ in batch], timeout=600)
            dt = max(done.values()) - t0
            burst_cpu += cpu_seconds([d.proc.pid]) - cpu0  # the daemon's CPU (all threads, user + system)
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
        "config": {"rounds": rounds, "burst": burst, "serial": serial, "workers": workers, "epochs": epochs,
                   "backend": "mock", "home": str(home), "env": daemon_env},
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
            "cpu_ms_per_job": burst_cpu / tp_jobs * 1e3,  # during the bursts (clock ticks: ±10 ms per burst)
            "peak_rss_kb": rss["daemon_kb"],
        },
        "ratios": {
            "throughput": floor_tp / daemon_tp,
            "latency_p50": median(latencies) / median(floor_per_job),
            "latency_p99": quantile(latencies, 0.99) / quantile(floor_per_job, 0.99),
        },
        "per_round": per_round,
        "samples_ms": {
            "daemon_latency": [round(x * 1e3, 3) for x in latencies],
            "floor_per_job": [round(x * 1e3, 3) for x in floor_per_job],
        },
    }
    if not keep:
        rm_tree(root)
    return res


def _build(j: Any, tr: Any, res: Any, plan: Any) -> tuple[dict[str, Any], bytes]:
    from pandacead import artifacts

    art = artifacts.build_artifact(j, tr.name, res, plan)
    return art, artifacts.artifact_bytes(art)


def _envelope(pl: Any, j: Any, tr: Any, res: Any, plan: Any, started: str, art: dict[str, Any], data: bytes) -> bytes:
    """What `Pipeline.publish_success` does between the artifact and the first write."""
    from pandacead import artifacts, signing

    pred = artifacts.provenance(j, tr.name, res, plan, started, art["created_at"], pl.versions)
    env = pl.sign(signing.statement(f"{j.job_id}.json", data, pred))
    return (json.dumps(env, indent=2) + "\n").encode()


def stages(n: int = 150, epochs: int = 2) -> dict[str, Any]:
    """Where a mock job's time goes: the pipeline's stages called one by one, in this process.

    The same stages `Pipeline.process` runs, timed separately (wall and CPU
    of this process), on a fresh home; logging is off (the daemon's ~8 log
    lines per job cost ~0.3 ms). Medians in ms.
    """
    import logging

    from pandacead import artifacts

    root = bench_root()
    home = make_home(root / "home")
    logging.disable(logging.CRITICAL)
    try:
        s, spool, pl, led = in_process_pipeline(home)

        def claim(i: int) -> Path:
            drop(s.inbox, f"s{i}.json", job(f"s{i}", user_id=f"u{i % 50}", epsilon=0.01, epochs=epochs))
            spooled = spool.claim(s.inbox, f"s{i}.json")
            assert spooled is not None
            return spooled

        pl.process(claim(-1))  # warm-up
        files = [claim(i) for i in range(n)]
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}

        def tm(name: str, f: Any, *a: Any, **k: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            r = f(*a, **k)
            wall.setdefault(name, []).append(time.perf_counter() - w)
            cpu.setdefault(name, []).append(time.process_time() - c)
            return r

        for f in files:
            w0, c0 = time.perf_counter(), time.process_time()
            tm("look up file in ledger", led.job_by_file, f.name)
            data = tm("read", pl.read, f)
            j = tm("parse + schema", pl.parse, data)
            tr = tm("select backend", pl.select, j)
            plan = tm("plan", pl.plan, j, tr)
            tm("budget hooks", pl.check_budget, j, plan)
            if hasattr(pl, "_require_outbox"):
                tm("outbox usable?", pl._require_outbox, j.job_id)
            row = tm("reserve (durable commit)", led.reserve, j.job_id, j.user_id, plan, tr.name, owner=f.name, file=f.name)
            res = tm("mock train", pl.train, j, tr, plan, row)
            started = artifacts.utcnow()
            art, data2 = tm("artifact + RFC 8785 hash", _build, j, tr, res, plan)
            env_bytes = tm("provenance, DSSE envelope, sign", _envelope, pl, j, tr, res, plan, started, art, data2)
            tm("publish envelope", artifacts.publish, s.outbox / f"{j.job_id}.dsse.json", env_bytes, sync_dir=False)
            tm("publish artifact", artifacts.publish, s.outbox / f"{j.job_id}.json", data2, sync_dir=False)
            tm("fsync outbox/", artifacts.fsync_dir, s.outbox)
            if hasattr(pl, "flush_unsynced"):  # #20: the daemon's commit is not fsynced (docs/reliability.md)
                tm("commit (not fsynced)", led.commit, j.job_id, res.epsilon, res.delta, row_id=row,
                   progress=pl._take_final_progress(row), durable=False)
            elif hasattr(pl, "_take_final_progress"):  # the last progress row in the commit's transaction
                tm("commit (durable)", led.commit, j.job_id, res.epsilon, res.delta, row_id=row,
                   progress=pl._take_final_progress(row))
            else:
                tm("commit (durable)", led.commit, j.job_id, res.epsilon, res.delta, row_id=row)
            if hasattr(pl, "record_final_progress"):
                tm("last progress row (commit 3)", pl.record_final_progress)
            tm("clean up spool", pl.cleanup, f)
            wall.setdefault("TOTAL", []).append(time.perf_counter() - w0)
            cpu.setdefault("TOTAL", []).append(time.process_time() - c0)
        spool.release()
    finally:
        logging.disable(logging.NOTSET)
        rm_tree(root)
    return {
        "n": n,
        "epochs": epochs,
        "wall_ms": {k: median(v) * 1e3 for k, v in wall.items()},
        "cpu_ms": {k: median(v) * 1e3 for k, v in cpu.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--burst", type=int, default=150)
    ap.add_argument("--serial", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark home (its daemon.log)")
    ap.add_argument("--pythonpath", default=None, help="PYTHONPATH for the daemon (A/B runs of another tree)")
    ap.add_argument("--stages", action="store_true", help="also time the pipeline's stages in-process")
    a = ap.parse_args()
    env = {"PYTHONPATH": a.pythonpath} if a.pythonpath else {}
    out = run(a.rounds, a.burst, a.serial, a.workers, a.keep, a.epochs, **env)
    if a.stages:
        out["stages"] = stages()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
