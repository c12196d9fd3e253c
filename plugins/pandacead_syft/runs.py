"""The run-once record: which jobs this host has already executed on a datasite.

syft 0.9.5 does not enforce its own single-execution output policy
(`OutputPolicyExecuteCount.is_valid` returns False instead of raising, and
`is_execution_allowed` only treats an exception as "not allowed"), so an
approved function can be called again and retrains on the private data.
pandacead therefore keeps its own record. A job is claimed with one INSERT
*before* the code is submitted; the primary key makes a second claim of the
same `job_id` (or of the same syft function name) fail, in this process or any
other process sharing the state directory. A claim is never deleted: a job
that crashed half-way may already have touched the private data, so it stays
spent and can never run again.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from pandacead.errors import JobRejected

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    job_id      TEXT PRIMARY KEY,
    code_name   TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('claimed', 'executed', 'failed')),
    claimed_at  REAL NOT NULL,
    finished_at REAL,
    detail      TEXT
)
"""


class RunRecord:
    """SQLite table of claimed job executions under the trainer's state directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0, isolation_level="IMMEDIATE")

    def claim(self, job_id: str, code_name: str, user_id: str) -> None:
        """Record that `job_id` is about to execute; JobRejected if it ever was claimed before."""
        try:
            with closing(self._connect()) as db, db:
                db.execute(
                    "INSERT INTO runs (job_id, code_name, user_id, state, claimed_at)"
                    " VALUES (?, ?, ?, 'claimed', ?)",
                    (job_id, code_name, user_id, time.time()),
                )
        except sqlite3.IntegrityError:
            self.refuse_if_claimed(job_id)
            raise JobRejected(  # same code name from another job id: never run twice either
                f"Job {job_id!r} maps to syft function {code_name!r}, which already ran.",
                [f"code_name: {code_name!r} has a run-once record"],
            ) from None

    def refuse_if_claimed(self, job_id: str) -> None:
        """JobRejected if `job_id` was ever claimed (run, failed, or died half-way)."""
        prior = self.get(job_id)
        if prior is not None:
            raise JobRejected(
                f"Job {job_id!r} was already executed on the syft datasite ({prior['state']});"
                " a job runs on the private data at most once.",
                [f"job_id: {job_id!r} has a run-once record in state {prior['state']!r}"],
            )

    def finish(self, job_id: str, state: str, detail: str | None = None) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE runs SET state = ?, finished_at = ?, detail = ? WHERE job_id = ?",
                (state, time.time(), detail, job_id),
            )

    def get(self, job_id: str) -> dict[str, object] | None:
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row else None
