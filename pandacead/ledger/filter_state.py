"""The kept filter state: an account's or a dataset's accounting without re-reading its history.

`RenyiFilter.from_spends` folds a sequence of spends (reserved and committed,
in reservation order) from the left: the basic sums (Σε, Σδ), the prefix
charged by basic composition (everything up to the last spend reserved under
another mode than ``rdp``) and the sums of the rdp phase (order-wise curve
sums, the pure-DP sum at order ∞, the approximate-δ bucket). `Fold` is that
fold, one spend at a time, with the same float operations in the same order,
so a state built here gives bit-for-bit the decision `accounting.admit` and
the figures `accounting.summarize` give for the same spends.

The ledger keeps, per account and per dataset, a *checkpoint*: the fold of
the spends up to a rowid (`upto`) that were all committed when folded.
Committed spends are final (only an admin reset, which clears the
checkpoint, forgets them), released ones drop out, and every other change
(a reservation, a commit, a release) happens after `upto`: so the live state
is the checkpoint folded with the *tail* (the spends after `upto`), and the
checkpoint moves forward over the tail's leading committed run in the same
transaction as each reserve/commit/release. Its cost is the number of spends
since the oldest reservation still open, not the length of the history.
"""

from __future__ import annotations

import functools
import sqlite3
import struct
from dataclasses import dataclass
from typing import Any

from pandacead.accounting import (
    MODES,
    RDP_ORDERS,
    Charge,
    Decision,
    RenyiFilter,
    Spend,
    Summary,
    _check_budget,
    _check_eps_delta,
    admit_basic,
    charge_for,
    curve_from_json,
)

_N = len(RDP_ORDERS)


@functools.lru_cache(maxsize=4096)
def _stored_curve(rdp: str) -> tuple[float, ...]:
    """`curve_from_json` of a stored curve; jobs of one shape store the same text."""
    curve = curve_from_json(rdp)
    assert curve is not None
    return curve


_ZERO = (0.0,) * _N
_PACK = struct.Struct(f"<{_N}d")


@dataclass(frozen=True)
class Fold:
    """The left fold of `RenyiFilter.from_spends` and `basic_spent` over a spend sequence."""

    basic_epsilon: float = 0.0  # Σε, Σδ over every spend (basic_spent)
    basic_delta: float = 0.0
    prefix_epsilon: float = 0.0  # the same sums up to the last non-rdp spend
    prefix_delta: float = 0.0
    curve: tuple[float, ...] = _ZERO  # the rdp phase: RenyiFilter.add, charge by charge
    max_divergence: float = 0.0
    approx_delta: float = 0.0
    jobs: int = 0
    # A stored curve of the rdp phase that cannot be parsed: from_spends raises on it,
    # unless a later non-rdp spend moves it into the prefix (where its curve is not read).
    error: str | None = None

    def add(self, epsilon: float, delta: float, rdp: Any, mode: str) -> Fold:
        """The fold with one more spend; ValueError where `from_spends` would raise whatever follows."""
        if mode not in MODES:
            raise ValueError(f"unknown accounting mode {mode!r} on a spend")
        _check_eps_delta(epsilon, delta, "recorded")
        b_eps = self.basic_epsilon + epsilon
        b_delta = self.basic_delta + delta
        if mode != "rdp":
            return Fold(b_eps, b_delta, b_eps, b_delta)
        if self.error is not None:
            return Fold(b_eps, b_delta, self.prefix_epsilon, self.prefix_delta, self.curve,
                        self.max_divergence, self.approx_delta, self.jobs + 1, self.error)
        try:
            if isinstance(rdp, str):  # a stored curve: the charge is its parse (memoised), as charge_for
                charge = Charge(curve=_stored_curve(rdp), kind="rdp")
            else:
                charge = charge_for(epsilon, delta, rdp)
        except ValueError as exc:
            return Fold(b_eps, b_delta, self.prefix_epsilon, self.prefix_delta, self.curve,
                        self.max_divergence, self.approx_delta, self.jobs + 1, str(exc))
        return Fold(
            b_eps, b_delta, self.prefix_epsilon, self.prefix_delta,
            tuple(s + c for s, c in zip(self.curve, charge.curve)),
            self.max_divergence + charge.max_divergence,
            self.approx_delta + charge.approx_delta,
            self.jobs + 1,
        )

    def add_spend(self, s: Spend) -> Fold:
        return self.add(s.epsilon, s.delta, s.rdp, s.mode)

    def renyi(self, approx_share: float) -> RenyiFilter:
        """The `RenyiFilter` `from_spends` would build (raises ValueError where it would)."""
        if not (0 <= approx_share < 1):
            raise ValueError(f"approximate-DP δ share {approx_share!r} is not in [0, 1)")
        if self.error is not None:
            raise ValueError(self.error)
        return RenyiFilter(
            prefix_epsilon=self.prefix_epsilon, prefix_delta=self.prefix_delta, curve=self.curve,
            max_divergence=self.max_divergence, approx_delta=self.approx_delta, jobs=self.jobs,
            approx_share=approx_share,
        )

    # -- storage --------------------------------------------------------------

    def to_row(self) -> tuple[Any, ...]:
        return (self.basic_epsilon, self.basic_delta, self.prefix_epsilon, self.prefix_delta,
                _PACK.pack(*self.curve), self.max_divergence, self.approx_delta, self.jobs, self.error)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Fold:
        b_e, b_d, p_e, p_d, curve, md, ad, jobs, error = row
        return cls(float(b_e), float(b_d), float(p_e), float(p_d), _PACK.unpack(curve), float(md), float(ad),
                   int(jobs), error)


EMPTY = Fold()


def fold(spends: list[Spend]) -> Fold:
    state = EMPTY
    for s in spends:
        state = state.add_spend(s)
    return state


def admit_kept(
    state: Fold, job: Spend, eps_budget: float, delta_budget: float, mode: str, approx_share: float
) -> Decision:
    """`accounting.admit(spends, job, ...)` for the spends folded into `state`."""
    _check_budget(eps_budget, delta_budget)
    _check_eps_delta(job.epsilon, job.delta, "job")
    if mode == "basic":
        return admit_basic(
            state.basic_epsilon + job.epsilon, state.basic_delta + job.delta, job, eps_budget, delta_budget
        )
    if mode == "rdp":
        return state.renyi(approx_share).admit(charge_for(job.epsilon, job.delta, job.rdp), eps_budget, delta_budget)
    raise ValueError(f"unknown accounting mode {mode!r} (expected 'basic' or 'rdp')")


def _spent(state: Fold, eps_budget: float, delta_budget: float, mode: str, approx_share: float
           ) -> tuple[float, float, float | None]:
    if mode == "basic":
        return state.basic_epsilon, state.basic_delta, None
    if mode == "rdp":
        return state.renyi(approx_share).spent(eps_budget, delta_budget)
    raise ValueError(f"unknown accounting mode {mode!r} (expected 'basic' or 'rdp')")


def summarize_kept(
    every: Fold, committed: Fold, eps_budget: float, delta_budget: float, mode: str, approx_share: float
) -> Summary:
    """`accounting.summarize(spends, ...)`: `every` folds all the spends, `committed` the committed ones."""
    _check_budget(eps_budget, delta_budget)
    eps, delta, order = _spent(every, eps_budget, delta_budget, mode, approx_share)
    c_eps, c_delta, _ = _spent(committed, eps_budget, delta_budget, mode, approx_share)
    return Summary(
        mode=mode,
        epsilon_spent=c_eps,
        epsilon_reserved=max(0.0, eps - c_eps),
        epsilon_remaining=max(0.0, eps_budget - max(eps, c_eps)),
        delta_spent=c_delta,
        delta_reserved=max(0.0, delta - c_delta),
        basic_epsilon_spent=committed.basic_epsilon,
        basic_epsilon_reserved=every.basic_epsilon - committed.basic_epsilon,
        basic_delta_spent=committed.basic_delta,
        basic_delta_reserved=every.basic_delta - committed.basic_delta,
        best_order=order,
    )


# -- the checkpoint table -------------------------------------------------------

STATE_COLUMNS = (
    "basic_epsilon, basic_delta, prefix_epsilon, prefix_delta, curve, max_divergence, approx_delta, jobs, error"
)

_TAIL = "SELECT rowid, state, epsilon, delta, epsilon_reserved, delta_reserved, rdp, composition FROM spends"


def _tail_rows(
    conn: sqlite3.Connection, kind: str, name: str, count_legacy: bool, upto: int
) -> list[tuple[Any, ...]]:
    """The non-released, not forgotten spends after `upto` (the selector of `Ledger._accounting_spends`)."""
    if kind == "account":
        return conn.execute(
            _TAIL + " WHERE user_id = ? AND rowid > ? AND state IN ('reserved', 'committed')"
            " AND NOT account_forgotten ORDER BY rowid", (name, upto),
        ).fetchall()
    rows = conn.execute(
        _TAIL + " WHERE dataset = ? AND rowid > ? AND state IN ('reserved', 'committed')"
        " AND NOT dataset_forgotten ORDER BY rowid", (name, upto),
    ).fetchall()
    if count_legacy:
        legacy = conn.execute(
            _TAIL + " WHERE dataset IS NULL AND rowid > ? AND state IN ('reserved', 'committed')"
            " AND NOT dataset_forgotten ORDER BY rowid", (upto,),
        ).fetchall()
        if legacy:
            rows = sorted(rows + legacy)
    return rows


def kept_state(
    conn: sqlite3.Connection, kind: str, name: str, count_legacy: bool = False, *, write: bool = False
) -> tuple[Fold, Fold]:
    """(every spend, committed spends) folded for an account or a dataset; with `write`
    (inside a write transaction) the checkpoint moves over the tail's leading committed run.
    Outside a transaction the checkpoint and the tail are read in one snapshot."""
    if not conn.in_transaction:
        conn.execute("BEGIN")
        try:
            return kept_state(conn, kind, name, count_legacy, write=False)
        finally:
            conn.execute("COMMIT")
    row = conn.execute(
        f"SELECT upto, count_legacy, {STATE_COLUMNS} FROM filter_state WHERE kind = ? AND name = ?", (kind, name)
    ).fetchone()
    if row is None or (kind == "dataset" and bool(row[1]) != bool(count_legacy)):
        base, upto, stale = EMPTY, 0, True
    else:
        base, upto, stale = Fold.from_row(row[2:]), int(row[0]), False
    every = committed = checkpoint = base
    new_upto, absorbing = upto, True
    for rowid, state, e, d, er, dr, rdp, mode in _tail_rows(conn, kind, name, count_legacy, upto):
        mode = mode or "basic"
        if state == "committed":
            every = every.add(e, d, rdp, mode)
            if absorbing:  # all committed so far: the checkpoint moves on
                committed = checkpoint = every
                new_upto = rowid
            else:
                committed = committed.add(e, d, rdp, mode)
        else:
            absorbing = False
            every = every.add(er, dr, rdp, mode)
    if write and (stale or new_upto != upto):
        store(conn, kind, name, checkpoint, new_upto, count_legacy)
    return every, committed


def store(conn: sqlite3.Connection, kind: str, name: str, state: Fold, upto: int, count_legacy: bool) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO filter_state (kind, name, upto, count_legacy, {STATE_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, name, upto, int(bool(count_legacy)), *state.to_row()),
    )


def forget(conn: sqlite3.Connection, kind: str, name: str, count_legacy: bool = False) -> None:
    """After an admin reset: every committed spend up to the checkpoint is forgotten, so the
    checkpoint is the empty fold (the tail's reserved spends still count)."""
    row = conn.execute("SELECT upto FROM filter_state WHERE kind = ? AND name = ?", (kind, name)).fetchone()
    if row is not None:
        store(conn, kind, name, EMPTY, int(row[0]), count_legacy)


def build_all(conn: sqlite3.Connection) -> None:
    """Checkpoints for every account and dataset (the migration for existing ledgers)."""
    for (uid,) in conn.execute("SELECT user_id FROM users").fetchall():
        _build(conn, "account", uid, False)
    names = {r[0] for r in conn.execute("SELECT dataset FROM datasets")}
    names |= {r[0] for r in conn.execute("SELECT DISTINCT dataset FROM spends WHERE dataset IS NOT NULL")}
    legacy = dict(conn.execute("SELECT dataset, count_legacy FROM datasets").fetchall())
    for name in sorted(names):
        _build(conn, "dataset", name, bool(legacy.get(name, 1)))


def _build(conn: sqlite3.Connection, kind: str, name: str, count_legacy: bool) -> None:
    try:
        kept_state(conn, kind, name, count_legacy, write=True)
    except ValueError:
        pass  # a malformed spend: no checkpoint past it; admission refuses as before

