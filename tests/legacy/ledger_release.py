"""The privacy ledger: users' (ε, δ) budgets, one spend per job, an append-only audit log.

SQLite in WAL mode. Every budget decision runs in one `BEGIN IMMEDIATE`
transaction, so concurrent daemons, workers and admin commands serialise on
SQLite's write lock and can never overspend. Writes use plain SQL on the
connection (sqlite-utils' helpers commit on their own, which would end our
transaction early); sqlite-utils' `Migrations` applies the schema migrations.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pandacead.accounting import Spend, admit, job_curve, summarize
from pandacead.errors import JobRejected

# Relative slack for float comparisons: 10 jobs of 1e-5 add up to
# 1.0000000000000002e-4, which must still fit a budget of 1e-4.
SLACK = 1e-9

if TYPE_CHECKING:
    import sqlite_utils

MIGRATION_SET = "pandacead.ledger"
# Applied in order by sqlite-utils' Migrations, each in its own transaction with
# its record. Kept as plain functions so that a ledger that is up to date opens
# without importing sqlite-utils (which pulls in numpy and pandas when present):
# `pandacead budget show` starts in a fraction of the time.
MIGRATIONS: list[Any] = []


def migration(fn: Any) -> Any:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            epsilon_budget REAL NOT NULL,
            delta_budget REAL NOT NULL,
            epsilon_spent REAL NOT NULL DEFAULT 0,
            delta_spent REAL NOT NULL DEFAULT 0,
            epsilon_reserved REAL NOT NULL DEFAULT 0,
            delta_reserved REAL NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CHECK (epsilon_spent >= 0 AND delta_spent >= 0
                   AND epsilon_reserved >= -1e-9 AND delta_reserved >= -1e-12)
        )"""
    )
    db.execute(
        """CREATE TABLE spends (
            job_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(user_id),
            state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
            backend TEXT,
            epsilon_reserved REAL NOT NULL,
            delta_reserved REAL NOT NULL,
            epsilon REAL,
            delta REAL,
            noise_multiplier REAL,
            sample_rate REAL,
            steps INTEGER,
            accountant TEXT,
            rdp TEXT,
            composition TEXT NOT NULL DEFAULT 'basic',
            owner TEXT,
            reserved_at TEXT NOT NULL,
            settled_at TEXT,
            note TEXT
        )"""
    )
    db.execute("CREATE INDEX spends_user ON spends(user_id, state)")
    db.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            user_id TEXT,
            job_id TEXT,
            actor TEXT,
            before TEXT,
            after TEXT,
            detail TEXT
        )"""
    )
    db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )
    db.execute(
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            user_id TEXT,
            file TEXT,
            status TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','rejected','failed')),
            backend TEXT,
            epsilon REAL,
            delta REAL,
            error TEXT,
            details TEXT,
            progress TEXT,
            owner TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX jobs_job_id ON jobs(job_id)")
    db.execute("CREATE INDEX jobs_file ON jobs(file)")


@migration
def m002_report_names(db: sqlite_utils.Database) -> None:
    """Each error report gets its own file name, so no report ever overwrites another."""
    db.execute("ALTER TABLE jobs ADD COLUMN report TEXT")
    db.execute("UPDATE jobs SET report = job_id WHERE status IN ('rejected', 'failed')")
    db.execute("CREATE INDEX jobs_report ON jobs(report)")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fits(used: float, cost: float, budget: float) -> bool:
    return used + cost <= budget * (1 + SLACK) + 1e-300


@dataclass(frozen=True)
class Budget:
    user_id: str
    epsilon_budget: float
    delta_budget: float
    epsilon_spent: float
    delta_spent: float
    epsilon_reserved: float
    delta_reserved: float
    known: bool = True

    @property
    def epsilon_remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.epsilon_spent - self.epsilon_reserved)

    @property
    def delta_remaining(self) -> float:
        return max(0.0, self.delta_budget - self.delta_spent - self.delta_reserved)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "epsilon_budget": self.epsilon_budget,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_reserved": self.epsilon_reserved,
            "epsilon_remaining": self.epsilon_remaining,
            "delta_budget": self.delta_budget,
            "delta_spent": self.delta_spent,
            "delta_reserved": self.delta_reserved,
            "delta_remaining": self.delta_remaining,
            "known": self.known,
        }


class Ledger:
    """One connection to the ledger database. Not shared between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        default_epsilon: float = 10.0,
        default_delta: float = 1e-3,
        composition: str = "basic",
        approx_delta_share: float = 0.1,
        actor: str = "pandacead",
        busy_timeout: float = 60.0,
    ):
        self.path = Path(path)
        self.default_epsilon = float(default_epsilon)
        self.default_delta = float(default_delta)
        self.composition = composition
        self.approx_delta_share = float(approx_delta_share)
        self.actor = actor
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self.conn = conn
        self._migrate()
        conn.execute("PRAGMA synchronous = FULL")

    @classmethod
    def from_settings(cls, settings: Any, actor: str = "pandacead") -> Ledger:
        b = settings.budget
        return cls(
            settings.ledger_path,
            default_epsilon=b["default_epsilon"],
            default_delta=b["default_delta"],
            composition=b["composition"],
            approx_delta_share=b.get("approx_delta_share", 0.1),
            actor=actor,
        )

    def _migrate(self) -> None:
        # Two processes opening a new ledger at once would both see the
        # migrations as pending; a lock file serialises them.
        lock_path = self.path.with_name(self.path.name + ".migrate.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":  # pragma: no cover - e.g. some network filesystems
                    raise RuntimeError(f"the ledger {self.path} cannot use WAL mode ({mode})")
                if self._pending_migrations():
                    from sqlite_utils import Database, Migrations

                    ms = Migrations(MIGRATION_SET)
                    for fn in MIGRATIONS:
                        ms(name=fn.__name__)(fn)
                    ms.apply(Database(self.conn))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _pending_migrations(self) -> bool:
        try:
            applied = {
                r[0] for r in self.conn.execute(
                    "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,)
                )
            }
        except sqlite3.OperationalError:  # no migrations table yet
            return True
        return any(fn.__name__ not in applied for fn in MIGRATIONS)

    def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        """Rows as dicts."""
        cur = self.conn.execute(sql, tuple(args))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()

    # -- transactions --------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock before reading what we decide on."""
        deadline = time.monotonic() + 120
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _audit(
        self,
        event: str,
        user_id: str | None,
        job_id: str | None = None,
        before: Any = None,
        after: Any = None,
        detail: Any = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO audit (at, event, user_id, job_id, actor, before, after, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now(),
                event,
                user_id,
                job_id,
                self.actor,
                None if before is None else json.dumps(before, sort_keys=True),
                None if after is None else json.dumps(after, sort_keys=True),
                None if detail is None else json.dumps(detail, sort_keys=True),
            ),
        )

    def _user_row(self, user_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT * FROM users WHERE user_id = ?", (user_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cur.description], row))

    def _ensure_user(self, user_id: str) -> dict[str, Any]:
        row = self._user_row(user_id)
        if row is None:
            ts = now()
            self.conn.execute(
                "INSERT INTO users (user_id, epsilon_budget, delta_budget, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, self.default_epsilon, self.default_delta, ts, ts),
            )
            row = self._user_row(user_id)
            assert row is not None
            self._audit("user_created", user_id, after=_budget_fields(row))
        return row

    # -- queries ---------------------------------------------------------------

    def budget(self, user_id: str) -> Budget:
        row = self._user_row(user_id)
        if row is None:
            return Budget(user_id, self.default_epsilon, self.default_delta, 0.0, 0.0, 0.0, 0.0, known=False)
        return _budget(row)

    def budgets(self) -> list[Budget]:
        return [_budget(r) for r in self.query("SELECT * FROM users ORDER BY user_id")]

    def spend(self, job_id: str) -> dict[str, Any] | None:
        rows = list(self.query("SELECT * FROM spends WHERE job_id = ?", [job_id]))
        return rows[0] if rows else None

    def spends(self, user_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM spends WHERE 1=1", []
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return list(self.query(sql + " ORDER BY reserved_at, job_id", args))

    def audit(self, user_id: str | None = None) -> list[dict[str, Any]]:
        if user_id is None:
            return list(self.query("SELECT * FROM audit ORDER BY id"))
        return list(self.query("SELECT * FROM audit WHERE user_id = ? ORDER BY id", [user_id]))

    # -- budget decisions ------------------------------------------------------

    def reserve(
        self, job_id: str, user_id: str, plan: Any, backend: str, owner: str | None = None,
        file: str | None = None,
    ) -> int:
        """Reserve the plan's (ε, δ) for a job, or raise JobRejected (replay, over budget).

        In the same transaction a `jobs` row in state running is created; its id is returned.
        """
        eps, delta = float(plan.epsilon), float(plan.delta)
        if not (math.isfinite(eps) and eps > 0 and math.isfinite(delta) and 0 < delta < 1):
            raise JobRejected(
                f"Job {job_id}: its privacy cost (ε={eps}, δ={delta}) is not usable.",
                ["privacy cost must be finite, ε > 0 and 0 < δ < 1"],
            )
        with self.transaction() as conn:
            if self.spend(job_id) is not None:
                raise JobRejected(
                    f"Job {job_id} was already submitted; a job_id is charged at most once.",
                    [f"job_id: {job_id!r} is a replay"],
                )
            user = self._ensure_user(user_id)
            curve = job_curve(
                getattr(plan, "rdp", None), getattr(plan, "noise_multiplier", None),
                getattr(plan, "sample_rate", None), getattr(plan, "steps", None),
            )
            reason = self._admission_problem(user, eps, delta, curve)
            if reason:
                raise JobRejected(reason, [f"budget: {reason}"])
            conn.execute(
                "INSERT INTO spends (job_id, user_id, state, backend, epsilon_reserved, delta_reserved,"
                " noise_multiplier, sample_rate, steps, accountant, rdp, composition, owner, reserved_at)"
                " VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    user_id,
                    backend,
                    eps,
                    delta,
                    getattr(plan, "noise_multiplier", None),
                    getattr(plan, "sample_rate", None),
                    getattr(plan, "steps", None),
                    getattr(plan, "accountant", None),
                    json.dumps(curve) if curve else None,
                    self.composition,
                    owner,
                    now(),
                ),
            )
            conn.execute(
                "UPDATE users SET epsilon_reserved = epsilon_reserved + ?,"
                " delta_reserved = delta_reserved + ?, updated_at = ? WHERE user_id = ?",
                (eps, delta, now(), user_id),
            )
            after = self._user_row(user_id)
            self._audit(
                "reserved", user_id, job_id, _budget_fields(user), _budget_fields(after),
                {"epsilon": eps, "delta": delta, "backend": backend},
            )
            ts = now()
            cur = conn.execute(
                "INSERT INTO jobs (job_id, user_id, file, status, backend, epsilon, delta, owner,"
                " created_at, updated_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (job_id, user_id, file, backend, eps, delta, owner, ts, ts),
            )
            return int(cur.lastrowid or 0)

    def _accounting_spends(self, user_id: str) -> list[Spend]:
        """The user's reserved and committed spends, in reservation order, for accounting."""
        cur = self.conn.execute(
            "SELECT state, epsilon, delta, epsilon_reserved, delta_reserved, rdp, composition"
            " FROM spends WHERE user_id = ? AND state IN ('reserved', 'committed') ORDER BY rowid",
            (user_id,),
        )
        out = []
        for state, e, d, er, dr, rdp, mode in cur.fetchall():
            committed = state == "committed"
            out.append(Spend(
                epsilon=e if committed else er, delta=d if committed else dr, rdp=rdp,
                mode=mode or "basic", reserved=not committed,
            ))
        return out

    def summary(self, user_id: str) -> dict[str, Any]:
        """`budget show` for one user: the ledger's figures under the active composition mode."""
        b = self.budget(user_id)
        out = b.to_dict()
        out["composition"] = self.composition
        if self.composition == "rdp" and b.known:
            s = summarize(
                self._accounting_spends(user_id), b.epsilon_budget, b.delta_budget, "rdp",
                self.approx_delta_share,
            )
            out.update(
                epsilon_spent=s.epsilon_spent, epsilon_reserved=s.epsilon_reserved,
                epsilon_remaining=s.epsilon_remaining, delta_spent=s.delta_spent,
                delta_reserved=s.delta_reserved, best_order=s.best_order,
            )
        out["basic_epsilon_spent"] = b.epsilon_spent
        out["basic_delta_spent"] = b.delta_spent
        return out

    def _admission_problem(
        self, user: dict[str, Any], eps: float, delta: float, curve: dict[str, float] | None = None
    ) -> str | None:
        uid = user["user_id"]
        if self.composition == "rdp":
            try:
                decision = admit(
                    self._accounting_spends(uid), Spend(eps, delta, curve, "rdp"),
                    user["epsilon_budget"], user["delta_budget"], mode="rdp",
                    approx_share=self.approx_delta_share,
                )
            except ValueError as exc:
                return f"User {uid}'s privacy spend cannot be computed ({exc}); the job is refused."
            if not decision.ok:
                return f"User {uid} cannot afford this job under rdp accounting: {decision.reason}."
            return None
        used_e = user["epsilon_spent"] + user["epsilon_reserved"]
        used_d = user["delta_spent"] + user["delta_reserved"]
        if not _fits(used_e, eps, user["epsilon_budget"]):
            left = max(0.0, user["epsilon_budget"] - used_e)
            return (
                f"User {uid} has ε {left:.6g} left of {user['epsilon_budget']:.6g}"
                f" and this job needs ε {eps:.6g}."
            )
        if not _fits(used_d, delta, user["delta_budget"]):
            left = max(0.0, user["delta_budget"] - used_d)
            return (
                f"User {uid} has δ {left:.3g} left of {user['delta_budget']:.3g}"
                f" and this job needs δ {delta:.3g}."
            )
        return None

    def commit(self, job_id: str, epsilon: float, delta: float, row_id: int | None = None) -> None:
        """Charge the actual spend (never above the reservation) and free the rest."""
        with self.transaction() as conn:
            if row_id is not None:
                conn.execute(
                    "UPDATE jobs SET status = 'succeeded', epsilon = ?, delta = ?, updated_at = ? WHERE id = ?",
                    (epsilon, delta, now(), row_id),
                )
            row = self.spend(job_id)
            if row is None:
                raise RuntimeError(f"job {job_id} has no reservation to commit")
            if row["state"] == "committed":
                return
            if row["state"] != "reserved":
                raise RuntimeError(f"job {job_id} is {row['state']}, it cannot be committed")
            if not (math.isfinite(epsilon) and 0 < epsilon <= row["epsilon_reserved"] * (1 + SLACK)):
                raise RuntimeError(
                    f"job {job_id} spent ε={epsilon}, more than its reservation {row['epsilon_reserved']}"
                )
            if not (math.isfinite(delta) and 0 < delta <= row["delta_reserved"] * (1 + SLACK)):
                raise RuntimeError(
                    f"job {job_id} spent δ={delta}, more than its reservation {row['delta_reserved']}"
                )
            uid = row["user_id"]
            before = self._user_row(uid)
            ts = now()
            conn.execute(
                "UPDATE users SET epsilon_reserved = epsilon_reserved - ?, delta_reserved = delta_reserved - ?,"
                " epsilon_spent = epsilon_spent + ?, delta_spent = delta_spent + ?, updated_at = ?"
                " WHERE user_id = ?",
                (row["epsilon_reserved"], row["delta_reserved"], epsilon, delta, ts, uid),
            )
            _zero_dust(conn, uid)
            conn.execute(
                "UPDATE spends SET state = 'committed', epsilon = ?, delta = ?, settled_at = ? WHERE job_id = ?",
                (epsilon, delta, ts, job_id),
            )
            self._audit(
                "committed", uid, job_id, _budget_fields(before), _budget_fields(self._user_row(uid)),
                {"epsilon": epsilon, "delta": delta},
            )

    def release(self, job_id: str, reason: str, owner: str | None = None) -> bool:
        """Free a reservation whose job published nothing. False if there was nothing to release.

        With `owner`, only a reservation made by that owner is released (a replay of a
        job_id must never release the original job's reservation).
        """
        with self.transaction():
            return self._release(job_id, reason, owner)

    def _release(self, job_id: str, reason: str, owner: str | None) -> bool:
        conn = self.conn
        row = self.spend(job_id)
        if row is None or row["state"] != "reserved":
            return False
        if owner is not None and row["owner"] != owner:
            return False
        uid = row["user_id"]
        before = self._user_row(uid)
        ts = now()
        conn.execute(
            "UPDATE users SET epsilon_reserved = epsilon_reserved - ?, delta_reserved = delta_reserved - ?,"
            " updated_at = ? WHERE user_id = ?",
            (row["epsilon_reserved"], row["delta_reserved"], ts, uid),
        )
        _zero_dust(conn, uid)
        conn.execute(
            "UPDATE spends SET state = 'released', settled_at = ?, note = ? WHERE job_id = ?",
            (ts, reason[:500], job_id),
        )
        self._audit(
            "released", uid, job_id, _budget_fields(before), _budget_fields(self._user_row(uid)),
            {"reason": reason[:500]},
        )
        return True

    def set_budget(self, user_id: str, epsilon: float, delta: float | None = None) -> Budget:
        _check_amount("ε", epsilon)
        if delta is not None:
            _check_amount("δ", delta)
            if delta >= 1:
                raise ValueError("δ budget must be below 1")
        with self.transaction() as conn:
            before = self._ensure_user(user_id)
            conn.execute(
                "UPDATE users SET epsilon_budget = ?, delta_budget = ?, updated_at = ? WHERE user_id = ?",
                (float(epsilon), float(before["delta_budget"] if delta is None else delta), now(), user_id),
            )
            after = self._user_row(user_id)
            assert after is not None
            self._audit("budget_set", user_id, None, _budget_fields(before), _budget_fields(after))
        return _budget(after)

    def reset(self, user_id: str) -> Budget:
        """Forget what a user has spent (the admin's decision; audited). Reservations stay."""
        with self.transaction() as conn:
            before = self._ensure_user(user_id)
            conn.execute(
                "UPDATE users SET epsilon_spent = 0, delta_spent = 0, updated_at = ? WHERE user_id = ?",
                (now(), user_id),
            )
            after = self._user_row(user_id)
            assert after is not None
            self._audit("budget_reset", user_id, None, _budget_fields(before), _budget_fields(after))
        return _budget(after)

    def settle_failure(
        self, job_id: str, user_id: str | None, status: str, error: str, details: list[str],
        *, owner: str, file: str, backend: str | None = None, row_id: int | None = None,
    ) -> tuple[int, str]:
        """One transaction: release this file's reservation (if any) and record the job's end.

        Returns the job row's id and the name its error report takes in outbox/
        (without `.error.json`): `<job_id>`, or `<job_id>~N` when an earlier file
        already reported under that job_id (a replay, or several bad files with
        one job_id) — a report never overwrites another file's outcome.
        """
        with self.transaction() as conn:
            self._release(job_id, error, owner)
            ts = now()
            det = json.dumps(details)
            report = None
            if row_id is not None:
                got = conn.execute("SELECT report FROM jobs WHERE id = ?", (row_id,)).fetchone()
                report = got[0] if got else None
            if report is None:
                report, n = job_id, 1
                while conn.execute("SELECT 1 FROM jobs WHERE report = ? LIMIT 1", (report,)).fetchone():
                    report, n = f"{job_id}~{n}", n + 1
            if row_id is None:
                cur = conn.execute(
                    "INSERT INTO jobs (job_id, user_id, file, status, backend, error, details, owner, report,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, user_id, file, status, backend, error, det, owner, report, ts, ts),
                )
                return int(cur.lastrowid or 0), report
            conn.execute(
                "UPDATE jobs SET status = ?, error = ?, details = ?, report = ?, updated_at = ? WHERE id = ?",
                (status, error, det, report, ts, row_id),
            )
            return row_id, report

    def job_by_file(self, file: str) -> dict[str, Any] | None:
        rows = list(self.query("SELECT * FROM jobs WHERE file = ? ORDER BY id DESC LIMIT 1", [file]))
        return _job_row(rows[0]) if rows else None

    def bump_attempts(self, row_id: int) -> int:
        with self.transaction() as conn:
            conn.execute("UPDATE jobs SET attempts = attempts + 1, updated_at = ? WHERE id = ?", (now(), row_id))
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (row_id,)).fetchone()
        return int(row[0])

    # -- job status (for `pandacead jobs`) -------------------------------------

    def job_event(
        self,
        job_id: str,
        status: str,
        *,
        row_id: int | None = None,
        **fields: Any,
    ) -> int:
        """Create (row_id None) or update a job status row; returns its id."""
        ts = now()
        if "progress" in fields and not isinstance(fields["progress"], (str, type(None))):
            fields["progress"] = json.dumps(fields["progress"])
        if row_id is None:
            cols = {"job_id": job_id, "status": status, "created_at": ts, "updated_at": ts, **fields}
            with self.transaction() as conn:
                cur = conn.execute(
                    f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    list(cols.values()),
                )
                return int(cur.lastrowid or 0)
        cols = {"status": status, "updated_at": ts, **fields}
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?",
                [*cols.values(), row_id],
            )
        return row_id

    def job_progress(self, row_id: int, progress: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ?",
                (json.dumps(progress), now(), row_id),
            )

    def jobs(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM jobs ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_job_row(r) for r in self.query(sql)]

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = list(self.query("SELECT * FROM jobs WHERE job_id = ? ORDER BY id DESC LIMIT 1", [job_id]))
        return _job_row(rows[0]) if rows else None


def _job_row(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for key in ("progress", "details"):
        if row.get(key):
            try:
                row[key] = json.loads(row[key])
            except ValueError:
                pass
    return row


def _zero_dust(conn: sqlite3.Connection, user_id: str) -> None:
    # Subtracting the same floats that were added can leave 1e-17 behind.
    conn.execute(
        "UPDATE users SET epsilon_reserved = CASE WHEN abs(epsilon_reserved) < 1e-12 THEN 0 ELSE epsilon_reserved END,"
        " delta_reserved = CASE WHEN abs(delta_reserved) < 1e-18 THEN 0 ELSE delta_reserved END WHERE user_id = ?",
        (user_id,),
    )


def _check_amount(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} budget must be a finite number >= 0, not {value!r}")


def _budget_fields(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in (
        "epsilon_budget", "delta_budget", "epsilon_spent", "delta_spent", "epsilon_reserved", "delta_reserved"
    )}


def _budget(row: dict[str, Any]) -> Budget:
    return Budget(
        row["user_id"], row["epsilon_budget"], row["delta_budget"], row["epsilon_spent"],
        row["delta_spent"], row["epsilon_reserved"], row["delta_reserved"],
    )
