"""(b) a real opacus job through the daemon vs in-process, (e) syft vs opacus per job, (f) peak RSS.

    .venv/bin/python bench/bench_backends.py [--jobs 5] [--no-syft] [--epochs 10] [--batch 32]

Three processes run side by side and take turns, so that the machine's load
hits all of them alike:

* a daemon with the opacus backend (`pandacead run`, default settings:
  one warm worker, `prewarm = "auto"`), fed through inbox/, timed from the
  drop (rename into inbox/) to the artifact's rename into outbox/;
* the same job in-process: a Python process that imported the backend and
  calls `OpacusTrainer.plan` then `.train` directly, timed around the two
  calls (the floor for a job on this backend: no daemon, no worker, no
  ledger, no signing);
* a daemon with the syft backend, timed like the opacus one.

Each process first runs one warm-up job (not timed, but the daemon's first
job after start is reported: how warm "warm" is). The job is the README's
example (examples/alice-logreg.json: synthetic data, logistic regression,
10 epochs, batch 32, ε = 1); every repetition has its own job_id.

Peak RSS is VmHWM from /proc/<pid>/status after the jobs: the daemon, and
its worker process (for syft, also the worker's own children, if any).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO,
    Daemon,
    OutboxWatch,
    bench_root,
    children,
    clean_env,
    cpu_seconds,
    drop,
    job,
    make_home,
    median,
    proc_status,
    rm_tree,
)

WARM_RE = re.compile(r"worker (\d+) warm in ([0-9.]+)s")


def _job(job_id: str, epochs: int, batch: int, backend: str | None = None) -> dict[str, Any]:
    return job(job_id, user_id="alice", epsilon=1.0, epochs=epochs, batch_size=batch, backend=backend,
               learning_rate=0.1, seed=42)


# --------------------------------------------------------------------------- in-process runner


def serve_inproc(home: str) -> None:
    """Child: read job JSON lines, run OpacusTrainer.plan + .train in this process, print timings."""
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead.app import build_context
    from pandacead.config import load_settings
    from pandacead.jobs import parse_job

    settings = load_settings(home)
    ctx = build_context(settings)
    trainer = OpacusTrainer()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        j = parse_job(line.encode())
        c0, t0 = time.process_time(), time.perf_counter()
        plan = trainer.plan(j, ctx)
        t1 = time.perf_counter()
        result = trainer.train(j, plan, ctx, lambda p: None)
        t2 = time.perf_counter()
        print(json.dumps({"plan_s": t1 - t0, "train_s": t2 - t1, "total_s": t2 - t0,
                          "cpu_s": time.process_time() - c0, "epsilon": result.epsilon}), flush=True)


class InProc:
    def __init__(self, home: Path):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--_inproc", str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=clean_env(), cwd=REPO,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def run(self, j: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(j) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the in-process runner died")
        return json.loads(line)

    def close(self) -> dict[str, int]:
        rss = proc_status(self.proc.pid)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        return rss


# --------------------------------------------------------------------------- a daemon per backend


class Backend:
    def __init__(self, root: Path, backend: str, name: str | None = None, **env: str):
        self.backend = backend
        self.home = make_home(root / (name or backend), backend=backend)
        self.watch = OutboxWatch(self.home / "outbox")
        self.daemon = Daemon(self.home, **env)
        try:
            self.ready_s = self.daemon.wait_ready(timeout=180)
        except BaseException:
            self.stop()
            raise
        self.warm_s: float | None = None
        self.cpu: list[float] = []

    def wait_warm(self, timeout: float = 300) -> float | None:
        """Seconds the worker's warm-up took (from the daemon's log), once it is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = WARM_RE.search(self.daemon.log_path.read_text(errors="replace"))
            if m:
                self.warm_s = float(m.group(2))
                return self.warm_s
            if self.daemon.proc.poll() is not None:
                raise RuntimeError(f"{self.backend} daemon died:\n{self.daemon.tail()}")
            time.sleep(0.1)
        return None

    def run(self, j: dict[str, Any], timeout: float = 600) -> float:
        """Seconds from drop to artifact; the CPU seconds of daemon + workers go to self.cpu."""
        name = f"{j['job_id']}.json"
        pids = [self.daemon.proc.pid, *self.daemon.children()]
        c0 = cpu_seconds(pids)
        t0 = drop(self.home / "inbox", name, j)
        err = f"{j['job_id']}.error.json"
        try:
            got, t1 = self.watch.wait_any([name, err], timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.backend} job {j['job_id']} had no outcome:\n{self.daemon.tail()}") from None
        if got == err:
            raise RuntimeError(f"{self.backend} job {j['job_id']} failed: {(self.home / 'outbox' / err).read_text()}")
        time.sleep(0.05)  # the commit and clean-up after the artifact, before counting CPU
        self.cpu.append(cpu_seconds(pids) - c0)
        return t1 - t0

    def rss(self) -> dict[str, Any]:
        out: dict[str, Any] = {"daemon_kb": proc_status(self.daemon.proc.pid).get("VmHWM")}
        workers = self.daemon.children()
        out["workers_kb"] = [proc_status(p).get("VmHWM") for p in workers]
        out["worker_children_kb"] = [proc_status(c).get("VmHWM") for p in workers for c in children(p)]
        return out

    def stop(self) -> int:
        rc = self.daemon.stop(timeout=120)
        self.watch.close()
        return rc


def syft_available() -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("syft", "pandacead_syft"))
    except (ImportError, ValueError):
        return False


def run(jobs: int = 5, syft: bool = True, epochs: int = 10, batch: int = 32, keep: bool = False) -> dict[str, Any]:
    root = bench_root()
    res: dict[str, Any] = {"config": {"jobs": jobs, "epochs": epochs, "batch_size": batch, "model": "linear",
                                      "dataset": "synthetic (800 training rows)", "torch_threads": 1}}
    # Without the warm-up: the first job pays the worker's start and torch/opacus imports.
    cold = Backend(root, "opacus", name="opacus-cold", PANDACEAD_TRAINER__PREWARM="false")
    try:
        res["cold_first_job_s"] = cold.run(_job("cold-first", epochs, batch))
        res["cold_second_job_s"] = cold.run(_job("cold-second", epochs, batch))
    finally:
        cold.stop()
    opacus = Backend(root, "opacus")
    backends = {"opacus": opacus}
    syft_error = None
    if syft and syft_available():
        try:
            backends["syft"] = Backend(root, "syft")
        except Exception as exc:
            syft_error = f"the syft daemon did not start: {exc}"
    elif syft:
        syft_error = "syft or pandacead_syft is not installed"
    inproc = None
    try:
        for b in backends.values():
            b.wait_warm()
        inproc = InProc(opacus.home)
        # First job after start (the worker is warm: torch/opacus imported), then the steady state.
        first = {}
        for name, b in list(backends.items()):
            try:
                first[name] = b.run(_job(f"{name}-first", epochs, batch))
            except Exception as exc:
                if name != "syft":
                    raise
                syft_error = f"the syft backend failed its first job: {exc}"
                backends.pop("syft").stop()
        inproc_first = inproc.run(_job("inproc-first", epochs, batch))
        times: dict[str, list[float]] = {name: [] for name in backends}
        for b in backends.values():
            b.cpu = []
        inproc_times: list[dict[str, Any]] = []
        for i in range(jobs):
            for name, b in backends.items():
                times[name].append(b.run(_job(f"{name}-{i}", epochs, batch)))
            inproc_times.append(inproc.run(_job(f"inproc-{i}", epochs, batch)))
        rss = {name: b.rss() for name, b in backends.items()}
        rss["inproc_kb"] = None
    finally:
        if inproc is not None:
            rss_inproc = inproc.close()
        rcs = {name: b.stop() for name, b in backends.items()}
    rss["inproc_kb"] = rss_inproc.get("VmHWM")
    in_total = [t["total_s"] for t in inproc_times]
    res.update({
        "ready_s": {name: b.ready_s for name, b in backends.items()},
        "warm_s": {name: b.warm_s for name, b in backends.items()},
        "first_job_s": {**first, "inproc": inproc_first["total_s"]},
        "job_s": {name: median(v) for name, v in times.items()},
        "job_s_all": times,
        "inproc_s": median(in_total),
        "inproc_plan_s": median([t["plan_s"] for t in inproc_times]),
        "inproc_train_s": median([t["train_s"] for t in inproc_times]),
        "inproc_all": in_total,
        "rss": rss,
        "daemon_exit": rcs,
        "syft_error": syft_error,
        "cpu_s": {name: median(b.cpu) for name, b in backends.items() if b.cpu},
        "inproc_cpu_s": median([t["cpu_s"] for t in inproc_times]),
        "ratios": {
            "daemon_vs_inproc": median(times["opacus"]) / median(in_total),
            "daemon_vs_inproc_paired": median([d / p for d, p in zip(times["opacus"], in_total)]),
            "daemon_vs_inproc_cpu": median(opacus.cpu) / median([t["cpu_s"] for t in inproc_times]),
        },
    })
    if "syft" in times:
        res["ratios"]["syft_vs_opacus"] = median(times["syft"]) / median(times["opacus"])
    if not keep:
        rm_tree(root)
    else:
        res["root"] = str(root)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-syft", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--_inproc", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._inproc:
        serve_inproc(a._inproc)
        return
    print(json.dumps(run(a.jobs, not a.no_syft, a.epochs, a.batch, a.keep), indent=2))


if __name__ == "__main__":
    main()
