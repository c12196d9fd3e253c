"""The floor: the per-job work a durable, signed, accounted publish cannot avoid.

Per job, on the filesystem of the benchmark home:

* two output files (the artifact and its envelope, at their real sizes):
  write a temp file, fsync it, rename it into place;
* one fsync of the output directory;
* one Ed25519 signature over a payload the size of a real envelope's;
* one SQLite commit in WAL mode with synchronous=FULL (BEGIN IMMEDIATE, one
  INSERT, COMMIT).

Written with plain os/sqlite3/cryptography calls, not pandacead's own
functions, so that the floor does not move when pandacead changes.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _write_fsync_rename(directory: Path, name: str, data: bytes) -> None:
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(workdir: Path, n: int = 300, artifact_bytes: int = 2500, envelope_bytes: int = 3500) -> dict[str, Any]:
    """Run the floor `n` times; per-part and per-job timings in seconds."""
    out = workdir / "floor-out"
    out.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(workdir / "floor.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS spends (job_id TEXT PRIMARY KEY, epsilon REAL, at REAL)")
    key = Ed25519PrivateKey.generate()
    art = os.urandom(artifact_bytes // 2).hex().encode()[:artifact_bytes]
    env = os.urandom(envelope_bytes // 2).hex().encode()[:envelope_bytes]
    payload = os.urandom(max(64, envelope_bytes * 3 // 4))
    parts: dict[str, list[float]] = {"files": [], "dir_fsync": [], "sign": [], "sqlite_commit": []}
    per_job: list[float] = []
    pc = time.perf_counter
    t_all = pc()
    for i in range(n):
        t0 = pc()
        key.sign(payload)
        t1 = pc()
        _write_fsync_rename(out, f"j{i}.dsse.json", env)
        _write_fsync_rename(out, f"j{i}.json", art)
        t2 = pc()
        _fsync_dir(out)
        t3 = pc()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO spends VALUES (?, ?, ?)", (f"j{i}", 0.01, time.time()))
        db.execute("COMMIT")
        t4 = pc()
        parts["sign"].append(t1 - t0)
        parts["files"].append(t2 - t1)
        parts["dir_fsync"].append(t3 - t2)
        parts["sqlite_commit"].append(t4 - t3)
        per_job.append(t4 - t0)
    total = pc() - t_all
    db.close()
    return {"n": n, "total_s": total, "per_job": per_job, "parts": parts,
            "artifact_bytes": artifact_bytes, "envelope_bytes": envelope_bytes}
