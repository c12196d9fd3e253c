"""Trainer worker processes: isolation for trainers that import heavy libraries.

The daemon talks to a worker over its stdin/stdout in JSON lines (never
pickle). A worker stays warm across jobs: torch/opacus (and a syft datasite)
are imported once. A worker that crashes, hangs past the job's timeout or is
killed by its memory limit fails that one job and is replaced.

Request:  {"op": "plan"|"train"|"ping", "trainer": name, "job": {...}, "ctx": {...}, "plan": {...}}
Replies:  {"type": "progress", ...}*  then  {"type": "result", "value": {...}}
          or {"type": "error", "status": "rejected"|"failed", "message": str, "details": [str]}
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pandacead.errors import Diverged, HandedBack, JobFailed, JobRejected

log = logging.getLogger("pandacead.worker")

MAX_LINE = 256 * 1024 * 1024


# --------------------------------------------------------------------------- worker side


def _serve(home: str) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the protocol
    sys.stdout = sys.stderr
    from pandacead.config import load_settings
    from pandacead.errors import JobError
    from pandacead.jobs import Job
    from pandacead.logs import setup_logging
    from pandacead.plugins import load_plugins
    from pandacead.trainers import PrivacyPlan, TrainerContext

    settings = load_settings(home)
    setup_logging(settings.data["logging"].get("level", "INFO"), settings.data["logging"].get("format", "auto"))
    limit = int(settings.trainer.get("memory_limit_mb", 0) or 0)
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit * 1024 * 1024, limit * 1024 * 1024))
    plugins = load_plugins(settings)

    def send(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg, allow_nan=False) + "\n")
        proto.flush()

    send({"type": "hello", "pid": os.getpid(), "trainers": sorted(plugins.trainers)})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        if op == "ping":
            send({"type": "result", "value": "pong"})
            continue
        if op == "warm":
            send({"type": "result", "value": _warm(plugins, settings, req)})
            continue
        try:
            trainer = plugins.trainers.get(req.get("trainer"))
            if trainer is None:
                raise JobRejected(f"Backend {req.get('trainer')!r} is not available in the worker.")
            ctx = TrainerContext.from_dict(req["ctx"])
            job = Job.from_dict(req["job"])
            if op == "plan":
                value = trainer.plan(job, ctx).to_dict()
            elif op == "train":
                plan = PrivacyPlan.from_dict(req["plan"])
                if os.environ.get("PANDACEAD_FAULT") == "worker_crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                value = trainer.train(
                    job, plan, ctx, lambda p: send({"type": "progress", **_jsonable(p)})
                ).to_dict()
            else:
                raise ValueError(f"unknown op {op!r}")
            send({"type": "result", "value": value})
        except JobError as exc:
            send({"type": "error", "status": exc.status, "message": exc.message, "details": exc.details,
                  "kind": getattr(exc, "kind", None)})
        except MemoryError:
            send({"type": "error", "status": "failed",
                  "message": f"The training ran out of memory (limit {limit} MB).", "details": []})
        except Exception as exc:
            # The traceback and the exception's text may quote data: they go to the admin's
            # log (stderr), the report gets the exception's type only.
            log.error("the trainer failed:\n%s", traceback.format_exc())
            send({"type": "error", "status": "failed",
                  "message": f"The trainer failed ({type(exc).__name__}).", "details": []})
    return 0


def _warm(plugins: Any, settings: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Pay a trainer's start-up costs before its first job: heavy imports, services.

    For each trainer named: its optional ``warm(ctx)`` method (a trainer that
    has one can run a tiny training so its first real job finds everything
    initialised, or start its syft datasite), then the modules in
    ``[trainer] preload`` (default: torch and opacus, when installed). Never
    fails: a warm-up that goes wrong only means a slower first job.
    """
    import importlib
    import importlib.util

    from pandacead.trainers import TrainerContext

    t0 = time.monotonic()
    done: dict[str, Any] = {"trainers": [], "modules": [], "errors": []}
    ctx = TrainerContext.from_dict(req["ctx"]) if req.get("ctx") else None
    for name in req.get("trainers") or []:
        trainer = plugins.trainers.get(name)
        warm = getattr(trainer, "warm", None)
        if not callable(warm):
            continue
        try:
            warm(ctx)
            done["trainers"].append(name)
        except Exception as exc:
            done["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
    preload = settings.trainer.get("preload", ["torch", "opacus"])
    for module in preload if isinstance(preload, list) else []:
        try:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
                done["modules"].append(module)
        except Exception as exc:
            done["errors"].append(f"{module}: {type(exc).__name__}: {exc}")
    if "torch" in sys.modules and ctx is not None:
        with contextlib.suppress(Exception):
            sys.modules["torch"].set_num_threads(max(1, int(ctx.torch_threads)))
    done["seconds"] = round(time.monotonic() - t0, 3)
    return done


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in obj.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None  # a diverging loss must never break the protocol
        out[k] = v
    return out


# --------------------------------------------------------------------------- daemon side


class WorkerProcess:
    """One warm worker process."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, stopping: threading.Event | None = None):
        self.home = home
        self.env = env
        self.stopping = stopping or threading.Event()
        self.jobs_done = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)  # only the daemon's main loop talks to systemd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pandacead.worker", "--home", str(self.home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a SIGINT at the terminal goes to the daemon, which decides
        )
        hello = self._read(timeout=120.0, on_progress=None)
        if hello.get("type") != "hello":
            raise JobFailed(f"The worker process did not start properly: {hello}.")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                if stream:
                    stream.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        self.kill()

    def _death(self) -> str:
        assert self.proc is not None
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        rc = self.proc.returncode
        if rc is not None and rc < 0:
            name = signal.Signals(-rc).name
            if -rc == signal.SIGKILL:
                return f"the worker process was killed ({name}; out of memory?)"
            return f"the worker process died of {name}"
        return f"the worker process exited unexpectedly (exit code {rc})"

    def _read(self, timeout: float, on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                nl = self._buf.find(b"\n")
                if nl >= 0:
                    line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                    msg = json.loads(line)
                    if msg.get("type") == "progress":
                        if on_progress is not None:
                            with contextlib.suppress(Exception):
                                on_progress({k: v for k, v in msg.items() if k != "type"})
                        continue
                    return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                if not sel.select(timeout=min(remaining, 1.0)):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError
                self._buf += chunk
                if len(self._buf) > MAX_LINE:
                    raise JobFailed("The worker sent an oversized reply.")
        finally:
            sel.close()

    def warm(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Start the process if needed and run the warm-up; returns what the worker reported."""
        return dict(self.call({"op": "warm", **request}, timeout=timeout) or {})

    def call(
        self, request: dict[str, Any], timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        if not self.alive:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
            msg = self._read(timeout, on_progress)
        except TimeoutError:
            self.kill()
            if self.stopping.is_set():
                raise HandedBack() from None
            lost = JobFailed(f"The training did not finish within {timeout:g} s and was stopped.")
            lost.worker_lost = True  # type: ignore[attr-defined]  # see Pipeline.train
            raise lost from None
        except (EOFError, BrokenPipeError, OSError, ValueError):
            if self.stopping.is_set():
                self.kill()
                raise HandedBack() from None
            why = self._death()
            self.kill()
            lost = JobFailed(f"The training stopped because {why}.")
            lost.worker_lost = True  # type: ignore[attr-defined]
            raise lost from None
        if msg.get("type") == "result":
            return msg.get("value")
        details = [str(d) for d in msg.get("details") or []]
        if msg.get("status") == "rejected":
            raise JobRejected(str(msg.get("message")), details)
        if msg.get("kind") == "diverged":
            raise Diverged(str(msg.get("message")), details)
        raise JobFailed(str(msg.get("message")), details)


class WorkerPool:
    """Warm workers handed out one job at a time; replaced after a failure or N jobs.

    With `warm` (a request: trainer names and their context), `prewarm()`
    starts every worker and runs its warm-up in the background, and a worker
    that is replaced (crash, timeout, N jobs) is started and warmed again right
    away rather than at the next job, which would otherwise pay the imports
    (seconds for torch and opacus, more for a syft datasite). A worker is only
    handed to a job once its warm-up has finished.
    """

    def __init__(
        self, home: Path, size: int, max_jobs: int = 50, env: dict[str, str] | None = None,
        warm: dict[str, Any] | None = None, warm_timeout: float = 300.0,
    ):
        self.home = home
        self.max_jobs = max_jobs
        self.env = env
        self.warm_request = warm
        self.warm_timeout = warm_timeout
        self._idle: queue.LifoQueue[WorkerProcess] = queue.LifoQueue()
        self._all: list[WorkerProcess] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.closed = False
        for _ in range(size):
            w = WorkerProcess(home, env, self.stopping)
            self._all.append(w)
            self._idle.put(w)

    @contextlib.contextmanager
    def worker(self) -> Any:
        w = self._idle.get()
        try:
            yield w
        finally:
            w.jobs_done += 1
            if w.alive and self.max_jobs and w.jobs_done >= self.max_jobs * 2:
                # plan + train count as two calls
                w.stop()
                w.jobs_done = 0
            if self.warm_request is not None and not w.alive:
                self._warm_in_background(w)  # back in the idle queue once warm
            else:
                self._idle.put(w)

    def _warm_in_background(self, w: WorkerProcess) -> None:
        def run() -> None:
            try:
                if not (self.closed or self.stopping.is_set()):
                    info = w.warm(self.warm_request or {}, timeout=self.warm_timeout)
                    log.info("worker %s warm in %ss (%s)", w.proc.pid if w.proc else "?", info.get("seconds"),
                             ", ".join(info.get("trainers", []) + info.get("modules", [])) or "nothing to load")
                    for err in info.get("errors", []):
                        log.warning("worker warm-up: %s", err)
            except Exception as exc:  # the next job starts it again, cold
                log.warning("warming a worker failed: %s", exc)
            finally:
                with self._lock:
                    if self.closed:
                        w.kill()
                self._idle.put(w)

        t = threading.Thread(target=run, name="worker-warm", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def prewarm(self) -> None:
        """Start (and, with a warm request, warm up) every idle worker, in the background."""
        taken: list[WorkerProcess] = []
        while True:
            try:
                taken.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for w in taken:
            if self.warm_request is not None:
                self._warm_in_background(w)
                continue
            with contextlib.suppress(Exception):
                if not w.alive:
                    w.start()
            self._idle.put(w)

    def hand_back(self) -> None:
        """Stop the running trainings; their jobs stay spooled and resume at the next start."""
        self.stopping.set()
        for w in self._all:
            w.kill()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            threads = list(self._threads)
        for w in self._all:
            if any(t.is_alive() for t in threads):
                w.kill()  # a warm-up in progress: nothing to finish
        for t in threads:
            t.join(timeout=10)
        for w in self._all:
            w.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pandacead.worker")
    parser.add_argument("--home", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _serve(args.home)
    except BrokenPipeError:
        # The daemon went away (killed, or it killed us mid-reply): nobody to answer to.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
