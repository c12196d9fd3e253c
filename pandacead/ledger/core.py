"""The privacy ledger: datasets' and accounts' (ε, δ) budgets, one spend per job, an audit log.

Every spend names the dataset it touched and the account that pays; one
transaction checks and charges both, under the same composition mode
(docs/accounting.md, "Who pays"). A job_id is unique within its *scope*:
the outbox namespace its files go to ('' for the admin's top-level outbox,
the account for a buyer's `outbox/<account>/`), so no buyer can squat
another's job_id or pre-create its report.

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
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pandacead.accounting import Decision, Spend, admit, job_curve
from pandacead.errors import JobRejected
from pandacead.ledger import filter_state
from pandacead.ledger.policy import BUILTIN_PUBLIC, DatasetPolicy, effective_budget, policy_for

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


SPEND_COLUMNS = (
    "job_id, user_id, state, backend, epsilon_reserved, delta_reserved, epsilon, delta, noise_multiplier,"
    " sample_rate, steps, accountant, rdp, composition, owner, reserved_at, settled_at, note"
)


@migration
def m003_datasets_and_accounts(db: sqlite_utils.Database) -> None:
    """Datasets own a budget; every spend names its dataset; job_ids are unique per scope.

    Spends written before this migration do not say which dataset they
    touched: they keep `dataset` NULL, stay charged to their accounts, and
    count against every private dataset (`datasets.count_legacy`, until the
    admin resets that dataset or runs `pandacead datasets legacy NAME
    --ignore`). Accounts that an earlier release reset keep that reset under
    `rdp` too: their spends settled before the reset are marked forgotten.
    """
    db.execute(
        """CREATE TABLE datasets (
            dataset TEXT PRIMARY KEY,
            owner TEXT,
            public INTEGER NOT NULL DEFAULT 0,
            epsilon_budget REAL NOT NULL,
            delta_budget REAL NOT NULL,
            config_epsilon REAL,
            config_delta REAL,
            count_legacy INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE spends_v3 (
            scope TEXT NOT NULL DEFAULT '',
            job_id TEXT NOT NULL,
            user_id TEXT NOT NULL REFERENCES users(user_id),
            dataset TEXT,
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
            note TEXT,
            account_forgotten INTEGER NOT NULL DEFAULT 0,
            dataset_forgotten INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, job_id)
        )"""
    )
    # rowid order is reservation order, which the Rényi filter depends on: keep it.
    db.execute(f"INSERT INTO spends_v3 ({SPEND_COLUMNS}) SELECT {SPEND_COLUMNS} FROM spends ORDER BY rowid")
    db.execute("DROP TABLE spends")
    db.execute("ALTER TABLE spends_v3 RENAME TO spends")
    db.execute("CREATE INDEX spends_user ON spends(user_id, state)")
    db.execute("CREATE INDEX spends_dataset ON spends(dataset, state)")
    db.execute(
        "UPDATE spends SET account_forgotten = 1 WHERE state = 'committed' AND settled_at <= ("
        "SELECT max(at) FROM audit WHERE audit.event = 'budget_reset' AND audit.user_id = spends.user_id)"
    )
    db.execute("ALTER TABLE jobs ADD COLUMN dataset TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN scope TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX jobs_scope ON jobs(scope, job_id)")
    db.execute("ALTER TABLE users ADD COLUMN buyer INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE users ADD COLUMN unix_uid INTEGER")
    n, eps = db.execute(
        "SELECT count(*), coalesce(sum(CASE WHEN state = 'committed' THEN epsilon ELSE epsilon_reserved END), 0)"
        " FROM spends WHERE state IN ('reserved', 'committed')"
    ).fetchone()
    if n:
        db.execute(
            "INSERT INTO audit (at, event, actor, detail) VALUES (?, 'legacy_spends', 'migration', ?)",
            (now(), json.dumps({
                "spends": n, "basic_epsilon": eps,
                "note": "written before datasets were recorded; they count against every private dataset",
            }, sort_keys=True)),
        )



@migration
def m004_audit_refuses_replace(db: sqlite_utils.Database) -> None:
    """The audit log refuses `INSERT OR REPLACE` / `REPLACE INTO` of an existing row too.

    A REPLACE deletes the row it conflicts with without firing the DELETE
    trigger (recursive triggers are off), so the UPDATE/DELETE triggers alone
    let an entry be rewritten. A BEFORE INSERT trigger sees the id first.
    Self-contained: it only needs the audit table of m001.
    """
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS audit_no_replace BEFORE INSERT ON audit "
        "WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM audit WHERE id = NEW.id) "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )


@migration
def m005_filter_state(db: sqlite_utils.Database) -> None:
    """The kept filter state (ledger/filter_state.py): per account and per dataset, the fold of the
    committed spends up to a rowid, so admission and `budget show` no longer re-read every past
    curve. Built here for the spends already recorded."""
    db.execute(
        """CREATE TABLE filter_state (
            kind TEXT NOT NULL CHECK (kind IN ('account', 'dataset')),
            name TEXT NOT NULL,
            upto INTEGER NOT NULL,
            count_legacy INTEGER NOT NULL DEFAULT 0,
            basic_epsilon REAL NOT NULL,
            basic_delta REAL NOT NULL,
            prefix_epsilon REAL NOT NULL,
            prefix_delta REAL NOT NULL,
            curve BLOB NOT NULL,
            max_divergence REAL NOT NULL,
            approx_delta REAL NOT NULL,
            jobs INTEGER NOT NULL,
            error TEXT,
            PRIMARY KEY (kind, name)
        )"""
    )
    # The tail after a checkpoint is read by (user_id, rowid) and (dataset, rowid).
    db.execute("CREATE INDEX IF NOT EXISTS spends_user_rowid ON spends(user_id)")
    db.execute("CREATE INDEX IF NOT EXISTS spends_dataset_rowid ON spends(dataset)")
    filter_state.build_all(db.conn)


@migration
def m006_audit_by_account(db: sqlite_utils.Database) -> None:
    """`budget history USER` and `Ledger.audit(user)` read the audit log by account."""
    db.execute("CREATE INDEX IF NOT EXISTS audit_user ON audit(user_id, id)")


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


_WRITER_LOCKS: dict[str, Any] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> Any:
    """The lock this process's threads take around a write transaction on the ledger at `path`.

    Re-entrant: a transaction begun inside another one of the same thread fails at once, as it did
    before this lock (SQLite's "cannot start a transaction within a transaction"), instead of
    waiting 120 s for a lock its own thread holds."""
    key = os.path.realpath(path)
    lock = _WRITER_LOCKS.get(key)
    if lock is None:
        with _WRITER_LOCKS_GUARD:
            lock = _WRITER_LOCKS.setdefault(key, threading.RLock())
    return lock


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
        datasets: dict[str, DatasetPolicy] | None = None,
        dataset_epsilon: float = 10.0,
        dataset_delta: float = 1e-3,
    ):
        self.path = Path(path)
        self.default_epsilon = float(default_epsilon)
        self.default_delta = float(default_delta)
        # What the configuration registers about datasets (policy.py); others get the defaults.
        self.dataset_epsilon = float(dataset_epsilon)
        self.dataset_delta = float(dataset_delta)
        self.datasets = dict(datasets) if datasets is not None else {
            n: policy_for(n, None, self.dataset_epsilon, self.dataset_delta) for n in BUILTIN_PUBLIC
        }
        self.composition = composition
        self.approx_delta_share = float(approx_delta_share)
        self.actor = actor
        self._writing = False  # inside `transaction()`: the kept filter state may be written
        self._writer = _writer_lock(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self.conn = conn
        self._migrate()
        conn.execute("PRAGMA synchronous = FULL")

    @classmethod
    def from_settings(cls, settings: Any, actor: str = "pandacead") -> Ledger:
        from pandacead.ledger.policy import policies_from_settings

        b = settings.budget
        policies, d_eps, d_delta = policies_from_settings(settings)
        return cls(
            settings.ledger_path,
            default_epsilon=b["default_epsilon"],
            default_delta=b["default_delta"],
            composition=b["composition"],
            approx_delta_share=b.get("approx_delta_share", 0.1),
            actor=actor,
            datasets=policies,
            dataset_epsilon=d_eps,
            dataset_delta=d_delta,
        )

    def policy(self, dataset: str) -> DatasetPolicy:
        """The dataset's registration: from the configuration, else private with the default budget."""
        got = self.datasets.get(dataset)
        if got is None:
            got = DatasetPolicy(dataset, None, False, self.dataset_epsilon, self.dataset_delta, configured=False)
        return got

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
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock before reading what we decide on.

        `durable=False` commits under `synchronous = NORMAL` (this transaction only): the WAL is
        written but not fsynced, so the transaction survives a crash of the process but not a power
        cut until the next durable commit (any connection's) or `sync()` fsyncs the WAL. Only the
        success commit uses it (docs/reliability.md, "One durable commit per job")."""
        deadline = time.monotonic() + 120
        # Threads of this process queue on a lock of their own first: SQLite's busy handler would
        # make a second writer sleep 1, 2, 5, 10 ... ms between tries, far longer than a job's
        # commit holds the write lock (with `workers` ≥ 2 one job reserves while another commits).
        # Other processes still meet SQLite's lock and its busy timeout.
        lock = self._writer
        if not lock.acquire(timeout=120):
            raise sqlite3.OperationalError("database is locked (by another thread of this process)")
        try:  # (from here on, whatever raises releases the lock: a closed connection included)
            if not durable:
                self.conn.execute("PRAGMA synchronous = NORMAL")
            while True:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._writing = True
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._writing = False
        finally:
            try:
                if not durable:
                    self.conn.execute("PRAGMA synchronous = FULL")
            finally:
                lock.release()

    def sync(self) -> None:
        """Make every transaction committed so far durable: fsync the WAL (what a durable commit does).

        In WAL mode a commit under `synchronous = NORMAL` is in the WAL file, not yet on the disk;
        checkpoints sync the WAL before copying it and the database after, so once the WAL is
        fsynced every earlier commit survives a power cut. No WAL file: nothing is pending."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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

    def account_exists(self, user_id: str) -> bool:
        return self._user_row(user_id) is not None

    def spend(self, job_id: str, scope: str = "") -> dict[str, Any] | None:
        """The spend of `job_id` in `scope` ('' = the admin's inbox, else the buyer account)."""
        rows = list(self.query("SELECT * FROM spends WHERE scope = ? AND job_id = ?", [scope, job_id]))
        return rows[0] if rows else None

    def spends(
        self, user_id: str | None = None, state: str | None = None, dataset: str | None = None
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM spends WHERE 1=1", []
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        if dataset is not None:
            sql += " AND dataset = ?"
            args.append(dataset)
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
        file: str | None = None, *, dataset: str | None = None, scope: str = "",
        create_account: bool = True, public: bool | None = None,
    ) -> int:
        """Reserve the plan's (ε, δ) for a job, or raise JobRejected (replay, over budget).

        One transaction charges the paying account (`user_id`) and the
        dataset the job touches, under the active composition mode; either
        refusing refuses the job. `scope` is where the job came from ('' for
        the admin's inbox, else the buyer account whose inbox it was dropped
        in): the replay key is (scope, job_id). An account that does not
        exist yet is created with the default allowance only when
        `create_account` (the admin's inbox); a buyer's must exist.
        `public`: what the trainer context says of the dataset (`DatasetInfo.public`);
        the dataset is treated as public only if both it and the configuration say so.
        In the same transaction a `jobs` row in state running is created; its id is returned.
        """
        eps, delta = float(plan.epsilon), float(plan.delta)
        if not (math.isfinite(eps) and eps > 0 and math.isfinite(delta) and 0 < delta < 1):
            raise JobRejected(
                f"Job {job_id}: its privacy cost (ε={eps}, δ={delta}) is not usable.",
                ["privacy cost must be finite, ε > 0 and 0 < δ < 1"],
            )
        # The curve is a pure function of the plan (memoised): computed before taking the write lock.
        curve_error: ValueError | None = None
        try:
            curve = job_curve(
                getattr(plan, "rdp", None), getattr(plan, "noise_multiplier", None),
                getattr(plan, "sample_rate", None), getattr(plan, "steps", None),
            )
        except ValueError as exc:
            curve, curve_error = None, exc
        with self.transaction() as conn:
            if self.spend(job_id, scope) is not None:
                raise JobRejected(
                    f"Job {job_id} was already submitted; a job_id is charged at most once.",
                    [f"job_id: {job_id!r} is a replay"],
                )
            if not create_account and self._user_row(user_id) is None:
                raise JobRejected(
                    f"Account {user_id} is not registered on this host; the admin creates buyer accounts"
                    " with `pandacead buyers add`.",
                    [f"account: {user_id!r} is not registered"],
                )
            user = self._ensure_user(user_id)
            if curve_error is not None:
                raise curve_error
            reason = self._admission_problem(user, eps, delta, curve)
            if reason:
                raise JobRejected(reason, [f"budget: {reason}"])
            if dataset is not None:
                ds = self._sync_dataset(self.policy(dataset))
                if public is False:
                    ds = {**ds, "public": False}  # fail closed when the two disagree
                reason = self._dataset_problem(ds, job_id, eps, delta, curve)
                if reason:
                    raise JobRejected(reason, [f"budget: dataset {dataset}'s budget does not fit this job"])
            conn.execute(
                "INSERT INTO spends (scope, job_id, user_id, dataset, state, backend, epsilon_reserved,"
                " delta_reserved, noise_multiplier, sample_rate, steps, accountant, rdp, composition, owner,"
                " reserved_at) VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    scope,
                    job_id,
                    user_id,
                    dataset,
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
            # The row as the UPDATE left it (the same float additions), without reading it back.
            after = {**user, "epsilon_reserved": user["epsilon_reserved"] + eps,
                     "delta_reserved": user["delta_reserved"] + delta}
            self._audit(
                "reserved", user_id, job_id, _budget_fields(user), _budget_fields(after),
                {"epsilon": eps, "delta": delta, "backend": backend, "dataset": dataset, "scope": scope},
            )
            ts = now()
            cur = conn.execute(
                "INSERT INTO jobs (job_id, user_id, file, status, backend, epsilon, delta, owner, dataset, scope,"
                " created_at, updated_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, user_id, file, backend, eps, delta, owner, dataset, scope, ts, ts),
            )
            return int(cur.lastrowid or 0)

    # -- the filter state: the one place that reads spends for accounting ---------

    def _accounting_spends(self, user_id: str | None = None, dataset: dict[str, Any] | None = None) -> list[Spend]:
        """The reserved and committed spends of an account (or of a dataset row), in reservation
        order, for accounting. Spends an admin reset are left out; a dataset counts the spends
        that name no dataset (written before datasets were recorded) while its `count_legacy`."""
        base = (
            "SELECT state, epsilon, delta, epsilon_reserved, delta_reserved, rdp, composition FROM spends"
            " WHERE state IN ('reserved', 'committed') AND "
        )
        if dataset is None:
            cur = self.conn.execute(base + "user_id = ? AND NOT account_forgotten ORDER BY rowid", (user_id,))
        else:
            cur = self.conn.execute(
                base + "(dataset = ? OR (? AND dataset IS NULL)) AND NOT dataset_forgotten ORDER BY rowid",
                (dataset["dataset"], int(dataset["count_legacy"])),
            )
        out = []
        for state, e, d, er, dr, rdp, mode in cur.fetchall():
            committed = state == "committed"
            out.append(Spend(
                epsilon=e if committed else er, delta=d if committed else dr, rdp=rdp,
                mode=mode or "basic", reserved=not committed,
            ))
        return out

    def _decide(
        self, spends: list[Spend] | filter_state.Fold, eps: float, delta: float, curve: dict[str, float] | None,
        eps_budget: float, delta_budget: float,
    ) -> Decision:
        """Whether a job fits on top of `spends` (a list, or their kept fold) under the active mode
        (raises ValueError if malformed)."""
        job = Spend(eps, delta, curve, self.composition)
        if isinstance(spends, filter_state.Fold):
            return filter_state.admit_kept(
                spends, job, eps_budget, delta_budget, self.composition, self.approx_delta_share
            )
        return admit(
            spends, job, eps_budget, delta_budget, mode=self.composition, approx_share=self.approx_delta_share,
        )

    def _kept(
        self, user_id: str | None = None, dataset: dict[str, Any] | None = None, *, write: bool = False
    ) -> tuple[filter_state.Fold, filter_state.Fold]:
        """(all, committed) spends of an account or a dataset row folded from the kept state
        (the same spends as `_accounting_spends`); `write` moves the checkpoint (in a transaction)."""
        if dataset is None:
            assert user_id is not None
            return filter_state.kept_state(self.conn, "account", user_id, write=write)
        return filter_state.kept_state(
            self.conn, "dataset", dataset["dataset"], bool(dataset["count_legacy"]), write=write
        )

    def _advance(self, user_id: str, dataset: str | None) -> None:
        """Inside a write transaction after a settlement: the checkpoints move over what is now final."""
        try:
            self._kept(user_id, write=True)
            if dataset is not None:
                row = self._dataset_row(dataset)
                self._kept(dataset={"dataset": dataset, "count_legacy": 1 if row is None else row["count_legacy"]},
                           write=True)
        except ValueError:
            pass  # a malformed spend stays in the tail; admission refuses on it as before

    def summary(self, user_id: str) -> dict[str, Any]:
        """`budget show` for one user: the ledger's figures under the active composition mode."""
        b = self.budget(user_id)
        out = b.to_dict()
        out["composition"] = self.composition
        if self.composition == "rdp" and b.known:
            s = filter_state.summarize_kept(
                *self._kept(user_id), b.epsilon_budget, b.delta_budget, "rdp", self.approx_delta_share,
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
        """Why the account cannot pay for the job, else None. The account's own figures only."""
        uid = user["user_id"]
        if self.composition == "rdp":
            try:
                decision = self._decide(
                    self._kept(uid, write=self._writing)[0], eps, delta, curve, user["epsilon_budget"],
                    user["delta_budget"],
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

    def _dataset_problem(
        self, ds: dict[str, Any], job_id: str, eps: float, delta: float, curve: dict[str, float] | None
    ) -> str | None:
        """Why the dataset's budget cannot take the job, else None.

        The sentence goes to the buyer: it says only that the request does not
        fit, never the dataset's remaining ε or δ (that would tell one buyer
        what the others spent).
        """
        if ds["public"]:
            return None
        name = ds["dataset"]
        refusal = (
            f"Job {job_id} does not fit the privacy budget of dataset {name} (it asks for ε={eps:.6g},"
            f" δ={delta:.3g}); the job is refused."
        )
        try:
            decision = self._decide(
                self._kept(dataset=ds, write=self._writing)[0], eps, delta, curve,
                ds["epsilon_budget"], ds["delta_budget"],
            )
        except ValueError:
            return refusal
        return None if decision.ok else refusal

    def admission_preview(
        self, account: str, dataset: str | None, plan: Any, *, scope: str = "", create_account: bool = True,
    ) -> dict[str, Any]:
        """Would `plan` be admitted for `account` on `dataset`, and what would be left? Reserves nothing.

        The same checks as `reserve` (replay aside). Returns `fits`, `refusal`
        (the sentence `reserve` would refuse with, safe to show the buyer, or
        None), `account_fits`, `dataset_fits`, `composition`, and the
        admin's figures: `account_epsilon_remaining`, `account_epsilon_remaining_after`,
        `dataset_epsilon_remaining`, `dataset_epsilon_remaining_after` (None
        for a public dataset or none given).
        """
        eps, delta = float(plan.epsilon), float(plan.delta)
        out: dict[str, Any] = {
            "account": account, "dataset": dataset, "epsilon": eps, "delta": delta,
            "composition": self.composition, "fits": False, "refusal": None,
            "account_fits": False, "dataset_fits": None,
            "account_epsilon_remaining": None, "account_epsilon_remaining_after": None,
            "dataset_epsilon_remaining": None, "dataset_epsilon_remaining_after": None,
        }
        if not (math.isfinite(eps) and eps > 0 and math.isfinite(delta) and 0 < delta < 1):
            out["refusal"] = f"The privacy cost (ε={eps}, δ={delta}) is not usable."
            return out
        curve = job_curve(
            getattr(plan, "rdp", None), getattr(plan, "noise_multiplier", None),
            getattr(plan, "sample_rate", None), getattr(plan, "steps", None),
        )
        self.conn.execute("BEGIN")  # one consistent snapshot for both checks
        try:
            row = self._user_row(account)
            if row is None and not create_account:
                out["refusal"] = f"Account {account} is not registered on this host."
                return out
            user = row or {
                "user_id": account, "epsilon_budget": self.default_epsilon, "delta_budget": self.default_delta,
                "epsilon_spent": 0.0, "delta_spent": 0.0, "epsilon_reserved": 0.0, "delta_reserved": 0.0,
            }
            spends = self._kept(account) if row is not None else (filter_state.EMPTY, filter_state.EMPTY)
            before = self._remaining(spends, user["epsilon_budget"], user["delta_budget"], user)
            reason = self._admission_problem(user, eps, delta, curve)
            out["account_fits"] = reason is None
            out["account_epsilon_remaining"] = before
            out["account_epsilon_remaining_after"] = self._remaining_after(
                spends, eps, delta, curve, user["epsilon_budget"], user["delta_budget"], before)
            out["refusal"] = reason
            if dataset is not None:
                ds = self._dataset_view(self.policy(dataset))
                if ds["public"]:
                    out["dataset_fits"] = True
                else:
                    ds_spends = self._kept(dataset=ds)
                    d_before = self._remaining(ds_spends, ds["epsilon_budget"], ds["delta_budget"])
                    problem = self._dataset_problem(ds, "(preview)", eps, delta, curve)
                    out["dataset_fits"] = problem is None
                    out["dataset_epsilon_remaining"] = d_before
                    out["dataset_epsilon_remaining_after"] = self._remaining_after(
                        ds_spends, eps, delta, curve, ds["epsilon_budget"], ds["delta_budget"], d_before)
                    if problem and out["refusal"] is None:
                        out["refusal"] = (
                            f"The request does not fit the privacy budget of dataset {dataset}"
                            f" (it asks for ε={eps:.6g}, δ={delta:.3g})."
                        )
            out["fits"] = out["refusal"] is None
            return out
        finally:
            self.conn.execute("ROLLBACK")

    def _remaining(
        self, spends: tuple[filter_state.Fold, filter_state.Fold], eps_budget: float, delta_budget: float,
        user: dict[str, Any] | None = None,
    ) -> float:
        if self.composition == "basic" and user is not None:
            return max(0.0, user["epsilon_budget"] - user["epsilon_spent"] - user["epsilon_reserved"])
        s = filter_state.summarize_kept(
            *spends, eps_budget, delta_budget, self.composition, self.approx_delta_share
        )
        return s.epsilon_remaining

    def _remaining_after(
        self, spends: tuple[filter_state.Fold, filter_state.Fold], eps: float, delta: float, curve: dict[str, float] | None,
        eps_budget: float, delta_budget: float, before: float,
    ) -> float | None:
        if self.composition == "basic":
            return max(0.0, before - eps)
        try:
            d = self._decide(spends[0], eps, delta, curve, eps_budget, delta_budget)
        except ValueError:
            return None
        return max(0.0, eps_budget - d.epsilon_after)

    # -- datasets --------------------------------------------------------------

    def _dataset_row(self, name: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT * FROM datasets WHERE dataset = ?", (name,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def _dataset_view(self, policy: DatasetPolicy, row: Any = False) -> dict[str, Any]:
        """The dataset as admission sees it, without writing: the ledger's row brought up to the config.
        `row`: the ledger's row (or None) when the caller has just read it."""
        if row is False:
            row = self._dataset_row(policy.dataset)
        eps, delta = effective_budget(row, policy)
        return {
            "dataset": policy.dataset, "owner": policy.owner if policy.owner is not None else (row or {}).get("owner"),
            "public": bool(policy.public), "epsilon_budget": eps, "delta_budget": delta,
            "count_legacy": 1 if row is None else int(row["count_legacy"]), "configured": policy.configured,
            "known": row is not None,
        }

    def _sync_dataset(self, policy: DatasetPolicy) -> dict[str, Any]:
        """Inside a transaction: the dataset's row, created or brought up to the configuration (audited)."""
        row = self._dataset_row(policy.dataset)
        view = self._dataset_view(policy, row)
        ts = now()
        fields = {k: view[k] for k in ("owner", "epsilon_budget", "delta_budget")}
        if row is None:
            self.conn.execute(
                "INSERT INTO datasets (dataset, owner, public, epsilon_budget, delta_budget, config_epsilon,"
                " config_delta, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (policy.dataset, view["owner"], int(view["public"]), view["epsilon_budget"], view["delta_budget"],
                 policy.epsilon_budget, policy.delta_budget, ts, ts),
            )
            self._audit("dataset_registered", None, None, None, {**fields, "public": view["public"]},
                        {"dataset": policy.dataset})
        elif (
            (row["owner"], bool(row["public"]), row["epsilon_budget"], row["delta_budget"], row["config_epsilon"],
             row["config_delta"])
            != (view["owner"], view["public"], view["epsilon_budget"], view["delta_budget"], policy.epsilon_budget,
                policy.delta_budget)
        ):
            self.conn.execute(
                "UPDATE datasets SET owner = ?, public = ?, epsilon_budget = ?, delta_budget = ?, config_epsilon = ?,"
                " config_delta = ?, updated_at = ? WHERE dataset = ?",
                (view["owner"], int(view["public"]), view["epsilon_budget"], view["delta_budget"],
                 policy.epsilon_budget, policy.delta_budget, ts, policy.dataset),
            )
            self._audit(
                "dataset_config", None, None,
                {k: row[k] for k in ("owner", "public", "epsilon_budget", "delta_budget")},
                {**fields, "public": view["public"]}, {"dataset": policy.dataset},
            )
        view["known"] = True
        return view

    def dataset_names(self) -> list[str]:
        """Datasets the configuration registers or the ledger knows, sorted."""
        known = {r["dataset"] for r in self.query("SELECT dataset FROM datasets")}
        used = {r["dataset"] for r in self.query("SELECT DISTINCT dataset FROM spends WHERE dataset IS NOT NULL")}
        return sorted(set(self.datasets) | known | used)

    def dataset_exists(self, name: str) -> bool:
        return name in self.datasets or self._dataset_row(name) is not None

    def dataset_summary(self, name: str) -> dict[str, Any]:
        """`datasets show` / `budget show --dataset`: budget, spent, reserved and remaining under the active mode.

        For a public dataset no budget applies: `epsilon_budget`, `delta_budget` and
        `epsilon_remaining` are None; spent and reserved are still reported (what buyers paid with their allowances).
        """
        ds = self._dataset_view(self.policy(name))
        s = filter_state.summarize_kept(
            *self._kept(dataset=ds), ds["epsilon_budget"], ds["delta_budget"], self.composition,
            self.approx_delta_share,
        )
        legacy = self.conn.execute(
            "SELECT count(*) FROM spends WHERE dataset IS NULL AND state IN ('reserved', 'committed')"
            " AND NOT dataset_forgotten"
        ).fetchone()[0]
        jobs = self.conn.execute(
            "SELECT count(*) FROM spends WHERE dataset = ? AND state IN ('reserved', 'committed')", (name,)
        ).fetchone()[0]
        accounts = self.conn.execute(
            "SELECT count(DISTINCT user_id) FROM spends WHERE dataset = ? AND state IN ('reserved', 'committed')",
            (name,),
        ).fetchone()[0]
        return {
            "dataset": name,
            "owner": ds["owner"],
            "public": ds["public"],
            "configured": ds["configured"],
            "composition": self.composition,
            "epsilon_budget": None if ds["public"] else ds["epsilon_budget"],
            "epsilon_spent": s.epsilon_spent,
            "epsilon_reserved": s.epsilon_reserved,
            "epsilon_remaining": None if ds["public"] else s.epsilon_remaining,
            "delta_budget": None if ds["public"] else ds["delta_budget"],
            "delta_spent": s.delta_spent,
            "delta_reserved": s.delta_reserved,
            "basic_epsilon_spent": s.basic_epsilon_spent,
            "basic_delta_spent": s.basic_delta_spent,
            "jobs": jobs,
            "accounts": accounts,
            "legacy_spends": legacy if ds["count_legacy"] and not ds["public"] else 0,
            "best_order": s.best_order,
        }

    def set_dataset_budget(
        self, name: str, epsilon: float, delta: float | None = None, *, create: bool = False
    ) -> dict[str, Any]:
        """Set a dataset's (ε, δ) budget in the ledger (audited); ValueError if it does not exist and not `create`."""
        _check_amount("ε", epsilon)
        if delta is not None:
            _check_amount("δ", delta)
            if delta >= 1:
                raise ValueError("δ budget must be below 1")
        if not create and not self.dataset_exists(name):
            raise ValueError(f"dataset {name} is not registered on this host (pass --create to add it to the ledger)")
        if self.policy(name).public:
            raise ValueError(f"dataset {name} is public: no dataset budget applies to it")
        with self.transaction() as conn:
            before = self._sync_dataset(self.policy(name))
            conn.execute(
                "UPDATE datasets SET epsilon_budget = ?, delta_budget = ?, updated_at = ? WHERE dataset = ?",
                (float(epsilon), float(before["delta_budget"] if delta is None else delta), now(), name),
            )
            self._audit(
                "dataset_budget_set", None, None,
                {k: before[k] for k in ("epsilon_budget", "delta_budget")},
                {"epsilon_budget": float(epsilon), "delta_budget": float(before["delta_budget"] if delta is None else delta)},
                {"dataset": name},
            )
        return self.dataset_summary(name)

    def reset_dataset(self, name: str, *, create: bool = False) -> dict[str, Any]:
        """Forget what has been spent on a dataset, legacy spends included (the admin's decision; audited).

        Reservations of running jobs stay. The accounts keep their charges.
        """
        if not create and not self.dataset_exists(name):
            raise ValueError(f"dataset {name} is not registered on this host (pass --create to add it to the ledger)")
        with self.transaction() as conn:
            self._sync_dataset(self.policy(name))
            before = self.dataset_summary(name)
            conn.execute(
                "UPDATE spends SET dataset_forgotten = 1 WHERE dataset = ? AND state = 'committed'", (name,)
            )
            conn.execute("UPDATE datasets SET count_legacy = 0, updated_at = ? WHERE dataset = ?", (now(), name))
            filter_state.forget(conn, "dataset", name, False)
            after = self.dataset_summary(name)
            keys = ("epsilon_spent", "delta_spent", "epsilon_reserved", "legacy_spends")
            self._audit("dataset_reset", None, None, {k: before[k] for k in keys}, {k: after[k] for k in keys},
                        {"dataset": name})
        return after

    def set_legacy(self, name: str, count: bool) -> dict[str, Any]:
        """Whether spends that name no dataset (from before the migration) count against this dataset."""
        with self.transaction() as conn:
            self._sync_dataset(self.policy(name))
            conn.execute(
                "UPDATE datasets SET count_legacy = ?, updated_at = ? WHERE dataset = ?", (int(count), now(), name)
            )
            self._audit("dataset_legacy", None, None, None, {"count_legacy": count}, {"dataset": name})
        return self.dataset_summary(name)

    # -- accounts --------------------------------------------------------------

    def add_account(
        self, user_id: str, epsilon: float | None = None, delta: float | None = None, *,
        buyer: bool = True, unix_uid: int | None = None,
    ) -> Budget:
        """Create (or mark as a buyer) an account with an allowance; an existing one keeps its spend."""
        with self.transaction() as conn:
            before = self._user_row(user_id)
            row = self._ensure_user(user_id)
            conn.execute(
                "UPDATE users SET buyer = ?, unix_uid = ?, epsilon_budget = ?, delta_budget = ?, updated_at = ?"
                " WHERE user_id = ?",
                (int(buyer), unix_uid, float(row["epsilon_budget"] if epsilon is None else epsilon),
                 float(row["delta_budget"] if delta is None else delta), now(), user_id),
            )
            after = self._user_row(user_id)
            self._audit("account_added" if before is None or not before.get("buyer") else "account_updated",
                        user_id, None, _budget_fields(before), _budget_fields(after),
                        {"buyer": buyer, "unix_uid": unix_uid})
        assert after is not None
        return _budget(after)

    def remove_account(self, user_id: str) -> bool:
        """A buyer account stops being one (its spends and allowance stay on record). False if unknown."""
        with self.transaction() as conn:
            row = self._user_row(user_id)
            if row is None:
                return False
            conn.execute("UPDATE users SET buyer = 0, updated_at = ? WHERE user_id = ?", (now(), user_id))
            self._audit("account_removed", user_id, None, _budget_fields(row), _budget_fields(row))
        return True

    def accounts(self) -> list[dict[str, Any]]:
        return self.query("SELECT user_id, buyer, unix_uid, epsilon_budget, delta_budget, created_at FROM users"
                          " ORDER BY user_id")

    def commit(
        self, job_id: str, epsilon: float, delta: float, row_id: int | None = None, scope: str = "",
        progress: dict[str, Any] | None = None, *, durable: bool = True,
    ) -> None:
        """Charge the actual spend (never above the reservation) and free the rest.

        `progress`: the job's last progress report (`jobs show`), written to its status row in
        the same transaction, so a finished job costs one commit after training, not two.
        `durable=False`: the commit is not fsynced (see `transaction`); the caller keeps whatever
        depends on it (the spool file) until the next durable commit or `sync()`."""
        progress_json = None if progress is None else json.dumps(progress)  # raises before the transaction
        with self.transaction(durable) as conn:
            if row_id is not None and progress_json is not None:
                conn.execute(
                    "UPDATE jobs SET status = 'succeeded', epsilon = ?, delta = ?, progress = ?, updated_at = ?"
                    " WHERE id = ?",
                    (epsilon, delta, progress_json, now(), row_id),
                )
            elif row_id is not None:
                conn.execute(
                    "UPDATE jobs SET status = 'succeeded', epsilon = ?, delta = ?, updated_at = ? WHERE id = ?",
                    (epsilon, delta, now(), row_id),
                )
            row = self.spend(job_id, scope)
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
            # One UPDATE with `_zero_dust`'s rounding folded in; `after` is what it leaves (the same
            # float operations), not read back.
            conn.execute(
                "UPDATE users SET"
                " epsilon_reserved = CASE WHEN abs(epsilon_reserved - ?) < 1e-12 THEN 0 ELSE epsilon_reserved - ? END,"
                " delta_reserved = CASE WHEN abs(delta_reserved - ?) < 1e-18 THEN 0 ELSE delta_reserved - ? END,"
                " epsilon_spent = epsilon_spent + ?, delta_spent = delta_spent + ?, updated_at = ?"
                " WHERE user_id = ?",
                (row["epsilon_reserved"], row["epsilon_reserved"], row["delta_reserved"], row["delta_reserved"],
                 epsilon, delta, ts, uid),
            )
            after = None
            if before is not None:
                e_res = before["epsilon_reserved"] - row["epsilon_reserved"]
                d_res = before["delta_reserved"] - row["delta_reserved"]
                after = {**before, "epsilon_reserved": 0.0 if abs(e_res) < 1e-12 else e_res,
                         "delta_reserved": 0.0 if abs(d_res) < 1e-18 else d_res,
                         "epsilon_spent": before["epsilon_spent"] + epsilon, "delta_spent": before["delta_spent"] + delta}
            conn.execute(
                "UPDATE spends SET state = 'committed', epsilon = ?, delta = ?, settled_at = ?"
                " WHERE scope = ? AND job_id = ?",
                (epsilon, delta, ts, scope, job_id),
            )
            self._audit(
                "committed", uid, job_id, _budget_fields(before), _budget_fields(after),
                {"epsilon": epsilon, "delta": delta},
            )
            self._advance(uid, row["dataset"])

    def release(self, job_id: str, reason: str, owner: str | None = None, scope: str = "") -> bool:
        """Free a reservation whose job published nothing. False if there was nothing to release.

        With `owner`, only a reservation made by that owner is released (a replay of a
        job_id must never release the original job's reservation).
        """
        with self.transaction():
            return self._release(job_id, reason, owner, scope)

    def _release(self, job_id: str, reason: str, owner: str | None, scope: str = "") -> bool:
        conn = self.conn
        row = self.spend(job_id, scope)
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
            "UPDATE spends SET state = 'released', settled_at = ?, note = ? WHERE scope = ? AND job_id = ?",
            (ts, reason[:500], scope, job_id),
        )
        self._audit(
            "released", uid, job_id, _budget_fields(before), _budget_fields(self._user_row(uid)),
            {"reason": reason[:500]},
        )
        self._advance(uid, row["dataset"])
        return True

    def _charge_reserved(self, job_id: str, reason: str, owner: str | None, scope: str = "") -> bool:
        """Commit a failed job's whole reservation (its trainer read the data); inside a transaction."""
        conn = self.conn
        row = self.spend(job_id, scope)
        if row is None or row["state"] != "reserved" or (owner is not None and row["owner"] != owner):
            return False
        uid = row["user_id"]
        before = self._user_row(uid)
        eps, delta = row["epsilon_reserved"], row["delta_reserved"]
        ts = now()
        conn.execute(
            "UPDATE users SET epsilon_reserved = epsilon_reserved - ?, delta_reserved = delta_reserved - ?,"
            " epsilon_spent = epsilon_spent + ?, delta_spent = delta_spent + ?, updated_at = ? WHERE user_id = ?",
            (eps, delta, eps, delta, ts, uid),
        )
        _zero_dust(conn, uid)
        conn.execute(
            "UPDATE spends SET state = 'committed', epsilon = ?, delta = ?, settled_at = ?, note = ?"
            " WHERE scope = ? AND job_id = ?",
            (eps, delta, ts, f"failed after reading the data: {reason}"[:500], scope, job_id),
        )
        self._audit(
            "committed", uid, job_id, _budget_fields(before), _budget_fields(self._user_row(uid)),
            {"epsilon": eps, "delta": delta, "failed": True},
        )
        self._advance(uid, row["dataset"])
        return True

    def set_budget(
        self, user_id: str, epsilon: float, delta: float | None = None, *, create: bool = True
    ) -> Budget:
        """Set an account's allowance (audited). With `create=False` an unknown account is a ValueError."""
        _check_amount("ε", epsilon)
        if delta is not None:
            _check_amount("δ", delta)
            if delta >= 1:
                raise ValueError("δ budget must be below 1")
        with self.transaction() as conn:
            if not create and self._user_row(user_id) is None:
                raise ValueError(f"account {user_id} does not exist (pass --create to create it)")
            before = self._ensure_user(user_id)
            conn.execute(
                "UPDATE users SET epsilon_budget = ?, delta_budget = ?, updated_at = ? WHERE user_id = ?",
                (float(epsilon), float(before["delta_budget"] if delta is None else delta), now(), user_id),
            )
            after = self._user_row(user_id)
            assert after is not None
            self._audit("budget_set", user_id, None, _budget_fields(before), _budget_fields(after))
        return _budget(after)

    def reset(self, user_id: str, *, create: bool = True) -> Budget:
        """Forget what a user has spent (the admin's decision; audited). Reservations stay.

        Under both modes: the counters go to 0 and the committed spends are
        marked forgotten for the account, so the Rényi filter starts afresh
        too. The datasets those jobs touched stay charged.
        """
        with self.transaction() as conn:
            if not create and self._user_row(user_id) is None:
                raise ValueError(f"account {user_id} does not exist (pass --create to create it)")
            before = self._ensure_user(user_id)
            conn.execute(
                "UPDATE users SET epsilon_spent = 0, delta_spent = 0, updated_at = ? WHERE user_id = ?",
                (now(), user_id),
            )
            conn.execute(
                "UPDATE spends SET account_forgotten = 1 WHERE user_id = ? AND state = 'committed'", (user_id,)
            )
            filter_state.forget(conn, "account", user_id)
            after = self._user_row(user_id)
            assert after is not None
            self._audit("budget_reset", user_id, None, _budget_fields(before), _budget_fields(after))
        return _budget(after)

    def settle_failure(
        self, job_id: str, user_id: str | None, status: str, error: str, details: list[str],
        *, owner: str, file: str, backend: str | None = None, row_id: int | None = None,
        scope: str = "", dataset: str | None = None, charge: bool = False,
    ) -> tuple[int, str]:
        """One transaction: release this file's reservation (if any) and record the job's end.

        With `charge` (the trainer read private data) the reservation is committed
        at its reserved (ε, δ) instead of released: what touched data is paid for.

        Returns the job row's id and the name its error report takes in outbox/
        (without `.error.json`): `<job_id>`, or `<job_id>~N` when an earlier file
        already reported under that job_id (a replay, or several bad files with
        one job_id) — a report never overwrites another file's outcome. Names are
        unique within `scope` (each buyer's outbox is its own namespace).
        """
        with self.transaction() as conn:
            if charge:
                self._charge_reserved(job_id, error, owner, scope)
            else:
                self._release(job_id, error, owner, scope)
            ts = now()
            det = json.dumps(details)
            report = None
            if row_id is not None:
                got = conn.execute("SELECT report FROM jobs WHERE id = ?", (row_id,)).fetchone()
                report = got[0] if got else None
            if report is None:
                report, n = job_id, 1
                while conn.execute(
                    "SELECT 1 FROM jobs WHERE report = ? AND scope = ? LIMIT 1", (report, scope)
                ).fetchone():
                    report, n = f"{job_id}~{n}", n + 1
            if row_id is None:
                cur = conn.execute(
                    "INSERT INTO jobs (job_id, user_id, file, status, backend, error, details, owner, report,"
                    " scope, dataset, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, user_id, file, status, backend, error, det, owner, report, scope, dataset, ts, ts),
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

    def job(self, job_id: str, scope: str | None = None) -> dict[str, Any] | None:
        if scope is not None:
            rows = list(self.query(
                "SELECT * FROM jobs WHERE job_id = ? AND scope = ? ORDER BY id DESC LIMIT 1", [job_id, scope]))
            return _job_row(rows[0]) if rows else None
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
