"""Shared helpers for the benchmarks: homes, a real daemon process, an outbox watch, RSS.

Nothing here imports torch: the orchestrator (bench/run.py) stays light, and
each heavy measurement runs in its own process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin/: python and the `pandacead` console script
PANDACEAD = BIN / "pandacead"

BENCH_CONFIG = """\
[daemon]
workers = {workers}
rescan_interval = 2.0
settle_seconds = 0.5

[budget]
default_epsilon = 1000.0
default_delta = 0.5

[trainer]
default_backend = "{backend}"
torch_threads = 1
timeout_seconds = 900
{trainer_extra}

[logging]
level = "INFO"
format = "text"
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no PANDACEAD_* or MOCK_DP leaking in, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDACEAD_") and k != "MOCK_DP"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def _fs_type(path: Path) -> str:
    """The filesystem type of `path`, from /proc/mounts (longest mount point that contains it)."""
    best, kind = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and (str(path) + "/").startswith(fields[1].rstrip("/") + "/") and len(fields[1]) >= len(best):
                best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def bench_root() -> Path:
    """A scratch directory on a disk-backed filesystem: fsync costs are the filesystem's.

    $PANDACEAD_BENCH_DIR if set; else the first of /var/tmp, the temp dir and the
    repository that is not tmpfs (a floor measured in RAM would be no floor).
    """
    base = os.environ.get("PANDACEAD_BENCH_DIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    else:
        for cand in (Path("/var/tmp"), Path(tempfile.gettempdir()), REPO):
            if cand.is_dir() and os.access(cand, os.W_OK) and _fs_type(cand.resolve()) not in ("tmpfs", "ramfs"):
                base = str(cand)
                break
    return Path(tempfile.mkdtemp(prefix="pandacead-bench-", dir=base or None))


def make_home(path: Path, *, backend: str = "mock", workers: int = 1, trainer_extra: str = "") -> Path:
    """A pandacead home with the defaults of `pandacead init`, except the backend and generous budgets."""
    from pandacead.app import ensure_home
    from pandacead.config import load_settings

    path.mkdir(parents=True, exist_ok=True)
    (path / "pandacead.toml").write_text(
        BENCH_CONFIG.format(workers=workers, backend=backend, trainer_extra=trainer_extra)
    )
    ensure_home(load_settings(path, environ={}))
    return path


def in_process_pipeline(home: Path) -> tuple[Any, Any, Any, Any]:
    """(settings, spool, pipeline, ledger) of `home`, in this process, the spool acquired (release it):
    the objects `pandacead run` builds, for timing the pipeline's pieces without a daemon."""
    from pandacead.app import App
    from pandacead.config import load_settings
    from pandacead.pipeline import Pipeline
    from pandacead.spool import Spool

    s = load_settings(home, environ={})
    app = App(s)
    spool = Spool(s.spool)
    spool.acquire()
    pl = Pipeline(s, app.plugins, app.ctx, spool.owner, public_keys=app.public_keys, noise_key=app.noise_key)
    return s, spool, pl, pl.ledger()


def job(job_id: str, *, user_id: str = "alice", epsilon: float = 1.0, epochs: int = 2,
        batch_size: int = 64, backend: str | None = None, **kw: Any) -> dict[str, Any]:
    j: dict[str, Any] = {
        "job_id": job_id, "user_id": user_id, "dataset": "synthetic", "task": "classification",
        "dp": {"enabled": True, "epsilon": epsilon, "delta": 1e-5, "clip": 1.0},
        "epochs": epochs, "batch_size": batch_size, "learning_rate": 0.05, "seed": 7,
    }
    if backend:
        j["backend"] = backend
    j.update(kw)
    return j


def drop(inbox: Path, name: str, content: dict[str, Any]) -> float:
    """Drop a job the careful way (dotfile, then rename); returns the perf_counter of the rename."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(json.dumps(content).encode())
    t = time.perf_counter()
    os.rename(tmp, inbox / name)
    return t


# --------------------------------------------------------------------------- outbox watch (inotify)

IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
_EVENT = struct.Struct("iIII")


class OutboxWatch:
    """Timestamps (perf_counter) of names renamed into a directory, from inotify: no polling.

    A published file appears by `rename`, so IN_MOVED_TO is the moment a
    reader of outbox/ can first see it.
    """

    def __init__(self, directory: Path):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(self.fd, str(directory).encode(), IN_MOVED_TO | IN_CLOSE_WRITE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = os.pipe()
        self.thread = threading.Thread(target=self._loop, name="outbox-watch", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            r, _, _ = select.select([self.fd, self._stop[0]], [], [])
            if self._stop[0] in r:
                return
            buf = os.read(self.fd, 1 << 16)
            t = time.perf_counter()
            off = 0
            names = []
            while off < len(buf):
                _wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                raw = buf[off + _EVENT.size: off + _EVENT.size + length]
                off += _EVENT.size + length
                name = raw.rstrip(b"\0").decode()
                if name.startswith("."):
                    continue
                if mask & IN_MOVED_TO or (mask & IN_CLOSE_WRITE):
                    names.append(name)
            if names:
                with self.cond:
                    for n in names:
                        self.seen.setdefault(n, t)
                    self.cond.notify_all()

    def wait(self, names: list[str] | set[str], timeout: float) -> dict[str, float]:
        want = set(names)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not want <= self.seen.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(want - self.seen.keys())[:5]
                    raise TimeoutError(f"timed out waiting for {len(want - self.seen.keys())} outputs, e.g. {missing}")
                self.cond.wait(timeout=left)
            return {n: self.seen[n] for n in want}

    def wait_any(self, names: list[str], timeout: float) -> tuple[str, float]:
        """The first of `names` to appear, and when."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for n in names:
                    if n in self.seen:
                        return n, self.seen[n]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out waiting for any of {names}")
                self.cond.wait(timeout=left)

    def close(self) -> None:
        os.write(self._stop[1], b"x")
        self.thread.join(timeout=5)
        for fd in (self.fd, *self._stop):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- a real daemon process


class Daemon:
    """`pandacead run --home H` (the venv's console script), ready when it sends READY=1 over sd_notify."""

    def __init__(self, home: Path, cmd: list[str] | None = None, **env: str):
        """`cmd` replaces the console script (e.g. another tree's code: bench_round2.py's release)."""
        self.home = home
        self.sock_path = home / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.log_path = home / "daemon.log"
        self.log = open(self.log_path, "ab")
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(
            [*(cmd or [str(PANDACEAD)]), "run", "--home", str(home)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=home,
            env=clean_env(PANDACEAD_HOME=str(home), NOTIFY_SOCKET=str(self.sock_path), **env),
        )
        self.ready_after: float | None = None
        self.ready = threading.Event()
        self.messages: list[tuple[float, str]] = []
        # Read the notify socket for the daemon's whole life, as systemd does: a
        # socket nobody reads fills up and the daemon's sends start to time out.
        self._reader = threading.Thread(target=self._read_notify, name="sd-notify", daemon=True)
        self._reader.start()

    def _read_notify(self) -> None:
        self.sock.settimeout(0.2)
        while True:
            try:
                msg = self.sock.recv(65536).decode(errors="replace")
            except TimeoutError:
                if self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            now = time.perf_counter()
            self.messages.append((now, msg))
            if "READY=1" in msg.split("\n") and self.ready_after is None:
                self.ready_after = now - self.t_start
                self.ready.set()

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from spawn to READY=1."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(timeout=0.2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the daemon did not become ready; see {self.log_path}:\n{self.tail()}")
        assert self.ready_after is not None
        return self.ready_after

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def children(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self._reader.join(timeout=5)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        return self.proc.returncode


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return sorted(set(out))


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in kB from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "VmPeak"):
                out[key] = int(rest.split()[0])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (from /proc/<pid>/stat), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


# --------------------------------------------------------------------------- statistics


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (no interpolation: p99 of 200 samples is the 198th)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def rm_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
