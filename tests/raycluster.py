"""A real local Ray cluster for tests and benchmarks: a head and worker nodes, each its own `ray start --block`.

Every node runs in its own session (process group) so one can be killed
outright (`kill_node`), as a machine dies. `stop` kills every group and then
any process still naming the cluster's private temp dir: it never runs
`ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


class LocalRayCluster:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 1):
        self.nodes = nodes
        self.cpus = cpus_per_node
        # Short: Ray's unix sockets live under it (108-byte path limit).
        self.tmp = Path(tempfile.mkdtemp(prefix="pcray", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
        self.env.pop("RAY_ADDRESS", None)

    def _ray(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *args,
             "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--num-gpus=0",
             "--object-store-memory=80000000", f"--dashboard-agent-listen-port={free_port()}",
             "--disable-usage-stats", "--block"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            start_new_session=True,
        )
        out.close()
        self.procs.append(p)
        return p

    def start(self, timeout: float = 180) -> LocalRayCluster:
        self._ray("--head", f"--port={self.port}", f"--temp-dir={self.tmp}", "--include-dashboard=false",
                  f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}", log="head.log")
        self.wait_nodes(1, timeout)
        for i in range(1, self.nodes):
            self._ray(f"--address={self.address}", log=f"node{i}.log")
        self.wait_nodes(self.nodes, timeout)
        return self

    def alive_nodes(self) -> int:
        r = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={self.address}"],
            capture_output=True, env=self.env, timeout=60,
        )
        text = r.stdout.decode(errors="replace")
        if "Active:" not in text:
            return 0
        active = text.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))

    def wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Ray node exited while starting; see {self.tmp}")
            with contextlib.suppress(Exception):
                if self.alive_nodes() >= n:
                    return
            time.sleep(1.0)
        raise RuntimeError(f"the local Ray cluster did not reach {n} nodes within {timeout:g} s; see {self.tmp}")

    def kill_node(self, i: int) -> None:
        """SIGKILL node `i` (0 is the head) and everything in its process group, as a machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(timeout=30)

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(timeout=30)
        marker = str(self.tmp)
        for _ in range(3):  # whatever left its group but still names our temp dir
            left = 0
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError, ValueError):
                    if marker in cmdline.read_bytes().decode(errors="replace"):
                        left += 1
                        os.kill(int(cmdline.parent.name), signal.SIGKILL)
            if not left:
                break
            time.sleep(0.5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
