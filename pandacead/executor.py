"""Where `train` runs: in this host's worker pool ("local"), or on a Ray cluster ("ray").

The daemon stays the single control plane whatever the executor: it claims
the job, plans it, reserves its (ε, δ), signs, publishes and commits. Only
the `train` call is dispatched; it carries the same request a local worker
gets (job, plan, trainer context with the per-job secret ``noise_seed``) and
returns the same `TrainResult` fields.

On a Ray node the task runs the request in a pandacead worker process (the
same isolation as on the daemon's host: its own memory limit, killed with
the task), kept warm between tasks in the Ray worker process that started
it. Requests and replies cross Ray as JSON text.

Delivery is at least once: Ray re-runs a task whose node or worker died
(``[executor] max_retries``). A duplicate run is harmless: it trains the same
job under the same reservation with the same secret seed, and only the
daemon publishes, once per job_id (the ledger refuses a second charge). A
node that dies with no retries left is a failed training, settled like a
crashed local worker. A cluster that cannot be reached is a host problem:
the job waits in the spool with its reservation (`Deferred`), nothing ran.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pandacead.errors import ConfigError, HandedBack, JobFailed, JobRejected
from pandacead.worker import WorkerProcess

log = logging.getLogger("pandacead.executor")

KINDS = ("local", "ray")


def check_config(section: dict[str, Any], cfg: Path) -> None:
    """Fail at start-up, not at the first job, on an unusable [executor] section."""
    kind = section.get("kind", "local")
    if kind not in KINDS:
        raise ConfigError(f"executor.kind in {cfg} must be one of {', '.join(KINDS)}, not {kind!r}.")
    if kind == "ray" and not str(section.get("address") or ""):
        raise ConfigError(
            f"executor.address in {cfg} must name the Ray cluster for kind \"ray\" "
            "(\"auto\" on a cluster node, or \"HOST:PORT\" of its head)."
        )
    for key in ("num_cpus", "num_gpus", "max_retries"):
        v = section.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"executor.{key} in {cfg} must be a number >= 0, not {v!r}.")


_EXECUTORS: dict[tuple[str, str], RayExecutor] = {}
_LOCK = threading.Lock()


def remote_executor(settings: Any) -> RayExecutor:
    """The executor for `settings` ([executor] kind other than "local"), one per cluster address."""
    section = dict(settings.data.get("executor") or {})
    kind = section.get("kind", "local")
    if kind != "ray":
        raise ConfigError(f"executor.kind {kind!r} has no remote executor.")
    key = (str(settings.home), str(section.get("address")))
    with _LOCK:
        ex = _EXECUTORS.get(key)
        if ex is None:
            ex = _EXECUTORS[key] = RayExecutor(settings.home, section)
        return ex


class RayExecutor:
    """Dispatches `train` requests as Ray tasks and waits for their replies."""

    def __init__(self, home: Path, section: dict[str, Any]):
        self.home = Path(home)
        self.address = str(section.get("address"))
        self.namespace = str(section.get("namespace") or "pandacead")
        self.node_home = str(section.get("node_home") or self.home)
        self.num_cpus = float(section.get("num_cpus", 1))
        self.num_gpus = float(section.get("num_gpus", 0))
        self.max_retries = int(section.get("max_retries", 3))
        self._task: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        # Ray's C++ core would otherwise take SIGTERM from the daemon's own handler (drain, hand back)
        # and abort the process.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray  # heavy: imported at the first dispatched job, never at daemon start

        with self._lock:
            if not ray.is_initialized():
                ray.init(
                    address=self.address, namespace=self.namespace, log_to_driver=False,
                    configure_logging=False, ignore_reinit_error=True,
                )
            if self._task is None:
                self._task = ray.remote(_node_train).options(
                    num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                    retry_exceptions=False, name="pandacead.train",
                )
        return ray

    def train(
        self, request: dict[str, Any], timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        stopping: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Run one `train` request on the cluster; the worker's reply value (TrainResult fields)."""
        from pandacead.pipeline import Deferred

        job_id = (request.get("job") or {}).get("job_id")
        try:
            ray = self._connect()
        except Exception as exc:
            reason = f"the Ray cluster at {self.address} cannot be reached ({type(exc).__name__}: {exc})"
            raise Deferred(f"Job {job_id} waits: {reason}", errno.EHOSTUNREACH, reason) from None
        ref = self._task.remote(self.node_home, json.dumps(request), float(timeout))
        deadline = time.monotonic() + timeout + 60.0  # the node's worker has its own timeout
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=1.0)
                if ready:
                    break
                if stopping is not None and stopping.is_set():
                    raise HandedBack()
                if time.monotonic() > deadline:
                    raise JobFailed(f"The training of job {job_id} on the Ray cluster did not finish within {timeout:g} s.")
            reply = json.loads(ray.get(ref))
        except (HandedBack, JobFailed):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayError as exc:
            # The node or its worker died more often than max_retries allows: a crash like a local one.
            raise JobFailed(
                f"The training of job {job_id} on the Ray cluster was lost: {type(exc).__name__}.",
                [f"ray: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                 f"retries: {self.max_retries}"],
            ) from None
        for event in reply.get("progress") or []:
            if on_progress is not None:
                with contextlib.suppress(Exception):
                    on_progress(event)
        if reply.get("type") == "result":
            value = dict(reply["value"])
            value.setdefault("provenance", {})["executor"] = {"kind": "ray", "node": reply.get("node")}
            return value
        details = [str(d) for d in reply.get("details") or []]
        if reply.get("status") == "rejected":
            raise JobRejected(str(reply.get("message")), details)
        raise JobFailed(str(reply.get("message")), details)


# --------------------------------------------------------------------------- node side

_NODE_WORKER: dict[str, WorkerProcess] = {}


class _NodeWorker(WorkerProcess):
    """A worker process that dies with the Ray worker that started it (a killed node leaves no orphan)."""

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pandacead.worker", "--home", str(self.home)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        hello = self._read(timeout=120.0, on_progress=None)
        if hello.get("type") != "hello":
            raise JobFailed(f"The worker process on the Ray node did not start properly: {hello}.")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _node_train(home: str, request_json: str, timeout: float) -> str:
    """The Ray task: one `train` request in a warm pandacead worker on this node; the reply as JSON."""
    import socket

    w = _NODE_WORKER.get(home)
    if w is None:
        w = _NODE_WORKER[home] = _NodeWorker(Path(home))
    events: list[dict[str, Any]] = []
    node = socket.gethostname()
    try:
        with contextlib.suppress(Exception):
            import ray

            node = ray.get_runtime_context().get_node_id()
        value = w.call(json.loads(request_json), timeout=timeout, on_progress=events.append)
        return json.dumps({"type": "result", "value": value, "progress": events, "node": node})
    except (JobRejected, JobFailed) as exc:
        return json.dumps({"type": "error", "status": exc.status, "message": exc.message,
                           "details": exc.details, "node": node})
