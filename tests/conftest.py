"""Shared fixtures: real homes in tmp dirs, real daemon processes, real SQLite and keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"

FAST_CONFIG = """
[daemon]
workers = {workers}
rescan_interval = 0.2
settle_seconds = 0.05
drain_timeout = 20

[budget]
default_epsilon = {default_epsilon}
default_delta = 1e-3

[trainer]
default_backend = "{backend}"
timeout_seconds = {timeout}
torch_threads = 1

[plugins]
dirs = [{plugin_dirs}]

[logging]
level = "INFO"
format = "text"
"""


def make_home(
    path: Path, *, backend: str = "mock", workers: int = 1, default_epsilon: float = 10.0,
    timeout: float = 120, extra: str = "", plugin_dirs: tuple[Path, ...] = (),
) -> Path:
    """A fresh home with a fast config; `plugin_dirs` are loaded before tests/plugins."""
    from pandacead.app import ensure_home
    from pandacead.config import load_settings

    path.mkdir(parents=True, exist_ok=True)
    (path / "pandacead.toml").write_text(
        FAST_CONFIG.format(
            workers=workers, default_epsilon=default_epsilon, backend=backend, timeout=timeout,
            plugin_dirs=", ".join(f'"{d}"' for d in (*plugin_dirs, TEST_PLUGINS)),
        ) + extra
    )
    ensure_home(load_settings(path, environ={}))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_home(tmp_path / "home")


def job(job_id: str, user_id: str = "alice", epsilon: float = 1.0, **kw: Any) -> dict[str, Any]:
    j: dict[str, Any] = {
        "job_id": job_id, "user_id": user_id, "dataset": "synthetic", "task": "classification",
        "dp": {"enabled": True, "epsilon": epsilon, "delta": 1e-5, "clip": 1.0},
        "epochs": 2, "batch_size": 64, "learning_rate": 0.05, "seed": 7,
    }
    j.update(kw)
    return j


def drop(home: Path, name: str, content: Any) -> Path:
    """Drop a job the careful way: dotfile, then rename."""
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    tmp = home / "inbox" / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, home / "inbox" / name)
    return home / "inbox" / name


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDACEAD_") and k != "MOCK_DP"}
    env["PANDACEAD_HOME"] = str(home)
    env.update(extra)
    return env


def cli(home: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pandacead.cli", *args], input=input, capture_output=True,
        env=env or env_for(home), timeout=timeout, cwd=home,
    )


def run_once(home: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[bytes]:
    return cli(home, "run", "--once", "--home", str(home), env=env_for(home, **env), timeout=timeout)


class DaemonProc:
    def __init__(self, home: Path, **env: str):
        self.home = home
        self.log = open(home / f"daemon-{time.time_ns()}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pandacead.cli", "run", "--home", str(home)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env_for(home, **env), cwd=home,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.log.close()
        return rc

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


@pytest.fixture
def daemon_factory() -> Iterator[Any]:
    procs: list[DaemonProc] = []

    def start(home: Path, **env: str) -> DaemonProc:
        d = DaemonProc(home, **env)
        procs.append(d)
        return d

    yield start
    for d in procs:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def outcomes(home: Path) -> dict[str, str]:
    """job_id → 'artifact' | 'error' for everything in outbox/."""
    out: dict[str, str] = {}
    for p in (home / "outbox").iterdir():
        if p.name.startswith("."):
            continue
        if p.name.endswith(".error.json"):
            out.setdefault(p.name[: -len(".error.json")], "")
            out[p.name[: -len(".error.json")]] += "error"
        elif p.name.endswith(".dsse.json"):
            continue
        elif p.name.endswith(".json"):
            out.setdefault(p.name[:-5], "")
            out[p.name[:-5]] = "artifact" + out[p.name[:-5]]
    return out


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def ledger(home: Path) -> Any:
    from pandacead.config import load_settings
    from pandacead.ledger import Ledger

    return Ledger.from_settings(load_settings(home, environ={}), actor="test")


def start_daemon_thread(home: Path) -> tuple[Any, Any, list[int]]:
    """A real `Daemon` running in a thread (not the main one: no signal handlers), once its first
    turn of the loop is done; stop it with `stop_daemon_thread`."""
    import threading

    from pandacead import daemon as daemon_mod
    from pandacead.config import load_settings

    d = daemon_mod.Daemon(load_settings(home, environ={}))
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(d.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not hasattr(d, "events") or d._last_status[0] == "":
        assert time.monotonic() < deadline, "the daemon did not start"
        assert t.is_alive(), "the daemon thread died at start-up"
        time.sleep(0.02)
    return d, t, rc


def stop_daemon_thread(d: Any, t: Any, rc: list[int]) -> None:
    d.stop_requested = True
    d.wake.set()
    t.join(timeout=60)
    assert not t.is_alive() and rc == [0]


def slow_rescans(home: Path) -> None:
    """Only an event can wake the daemon in time: its periodic scan comes once an hour."""
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace("rescan_interval = 0.2", "rescan_interval = 3600"))
