"""Jobs per minute on 1 vs 2 local Ray worker nodes (one CPU each), one daemon as the only admission authority.

    .venv/bin/python bench/bench_ray.py [--jobs 12] [--json OUT.json]

For each cluster size: start a local Ray cluster (tests/raycluster.py), a
daemon with ``[executor] kind = "ray"`` and ``[daemon] workers = 2``, warm
every node with one job each, then drop `--jobs` opacus jobs at once and time
the first drop to the last artifact. Checks that every job is charged once.
Prints one line per size and the speed-up, with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import clean_env, drop, job, make_home  # noqa: E402
from raycluster import LocalRayCluster  # noqa: E402


def _job(job_id: str) -> dict:
    return job(job_id, epsilon=5.0, epochs=2, batch_size=64,
               dp={"enabled": True, "epsilon": 5.0, "delta": 1e-5, "clip": 1.0, "noise_multiplier": 1.0,
                   "accountant": "rdp"})


def _artifacts(outbox: Path) -> set[str]:
    return {p.stem for p in outbox.glob("*.json") if not p.name.endswith((".dsse.json", ".error.json"))
            and not p.name.startswith(".")}


def _wait(outbox: Path, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not names <= _artifacts(outbox):
        if list(outbox.glob("*.error.json")):
            raise RuntimeError(f"a job failed: {sorted(p.name for p in outbox.glob('*.error.json'))}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; have {len(_artifacts(outbox) & names)}/{len(names)}")
        time.sleep(0.2)


def measure(root: Path, nodes: int, n_jobs: int) -> dict:
    with LocalRayCluster(nodes=nodes, cpus_per_node=1) as cluster:
        home = make_home(root / f"home{nodes}", backend="opacus", workers=2)
        with open(home / "pandacead.toml", "a") as f:
            f.write(f'\n[executor]\nkind = "ray"\naddress = "{cluster.address}"\n')
        log = open(home / "daemon.log", "wb")
        d = subprocess.Popen([sys.executable, "-m", "pandacead.cli", "run", "--home", str(home)],
                             stdout=log, stderr=subprocess.STDOUT, env=clean_env(PANDACEAD_HOME=str(home)))
        try:
            warm = {f"warm{i}" for i in range(2 * nodes)}
            for name in sorted(warm):
                drop(home / "inbox", f"{name}.json", _job(name))
            _wait(home / "outbox", warm, 600)
            names = {f"j{i:02d}" for i in range(n_jobs)}
            t0 = time.monotonic()
            for name in sorted(names):
                drop(home / "inbox", f"{name}.json", _job(name))
            _wait(home / "outbox", names, 1200)
            wall = time.monotonic() - t0
        finally:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=120)
            log.close()
        from pandacead.config import load_settings
        from pandacead.ledger import Ledger

        spends = Ledger.from_settings(load_settings(home, environ={}), actor="bench").spends()
        ids = [s["job_id"] for s in spends]
        once = len(ids) == len(set(ids)) == n_jobs + len(warm) and all(s["state"] == "committed" for s in spends)
        return {"nodes": nodes, "jobs": n_jobs, "wall_s": round(wall, 2),
                "jobs_per_min": round(60 * n_jobs / wall, 2), "charged_once": once}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import tempfile

    os.environ.update(clean_env())
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pandacead-raybench-") as tmp:
        for nodes in (1, 2):
            r = measure(Path(tmp), nodes, args.jobs)
            r["loadavg_1m"] = round(os.getloadavg()[0], 2)
            results.append(r)
            print(f"ray nodes={nodes}: {r['jobs_per_min']} jobs/min ({r['jobs']} jobs in {r['wall_s']} s), "
                  f"charged once: {r['charged_once']}, load average {r['loadavg_1m']}", flush=True)
    speedup = results[1]["jobs_per_min"] / results[0]["jobs_per_min"]
    print(f"speed-up 2 vs 1 node: {speedup:.2f}x (load average before {load_before[0]:.2f}, "
          f"{os.cpu_count()} cores)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "speedup": round(speedup, 3),
                                         "loadavg_before": load_before, "cores": os.cpu_count()}, indent=2) + "\n")
    return 0 if all(r["charged_once"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
