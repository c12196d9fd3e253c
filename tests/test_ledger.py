"""The ledger: exact arithmetic, replays, reservations, the audit log, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import types
from pathlib import Path

import pytest

from pandacead.errors import JobRejected
from pandacead.ledger import Ledger


def plan(eps: float = 1.0, delta: float = 1e-5, **kw):
    return types.SimpleNamespace(epsilon=eps, delta=delta, **kw)


@pytest.fixture
def led(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.db", default_epsilon=10.0, default_delta=1e-4)


def test_new_user_gets_default_budget_and_exact_arithmetic(led):
    for i in range(10):
        led.reserve(f"j{i}", "alice", plan(1.0, 1e-5), "mock", owner="f")
        led.commit(f"j{i}", 0.9, 1e-5)
    b = led.budget("alice")
    assert b.epsilon_spent == pytest.approx(9.0) and b.epsilon_reserved == 0
    # ten δ of 1e-5 fill a δ budget of 1e-4 exactly, despite float rounding
    assert b.delta_remaining == pytest.approx(0, abs=1e-18)
    with pytest.raises(JobRejected, match="δ"):
        led.reserve("j10", "alice", plan(0.5, 1e-5), "mock")


def test_over_budget_refusal_charges_nothing(led):
    led.set_budget("bob", 2.5)
    led.reserve("a", "bob", plan(1.0), "mock")
    led.reserve("b", "bob", plan(1.0), "mock")
    with pytest.raises(JobRejected, match="left of 2.5"):
        led.reserve("c", "bob", plan(1.0), "mock")
    b = led.budget("bob")
    assert b.epsilon_reserved == 2.0 and b.epsilon_spent == 0
    assert led.spend("c") is None


def test_replayed_job_id_is_rejected_even_after_release(led):
    led.reserve("x", "alice", plan(), "mock", owner="f1")
    with pytest.raises(JobRejected, match="already submitted"):
        led.reserve("x", "alice", plan(), "mock", owner="f2")
    assert led.release("x", "failed", owner="f2") is False  # a replay cannot free the original
    assert led.release("x", "failed", owner="f1") is True
    with pytest.raises(JobRejected, match="already submitted"):
        led.reserve("x", "alice", plan(), "mock", owner="f3")
    assert led.budget("alice").epsilon_reserved == 0


def test_commit_never_exceeds_reservation(led):
    led.reserve("x", "alice", plan(1.0), "mock")
    with pytest.raises(RuntimeError, match="more than its reservation"):
        led.commit("x", 1.5, 1e-5)
    led.commit("x", 0.7, 1e-5)
    assert led.budget("alice").epsilon_spent == pytest.approx(0.7)


def test_audit_log_is_append_only(led):
    led.reserve("x", "alice", plan(), "mock")
    led.commit("x", 1.0, 1e-5)
    events = [a["event"] for a in led.audit("alice")]
    assert events == ["user_created", "reserved", "committed"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        led.conn.execute("UPDATE audit SET event = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        led.conn.execute("DELETE FROM audit")


def test_zero_default_budget_admits_only_configured_users(tmp_path):
    led = Ledger(tmp_path / "l.db", default_epsilon=0.0)
    with pytest.raises(JobRejected):
        led.reserve("x", "stranger", plan(), "mock")
    led.set_budget("friend", 3.0)
    led.reserve("y", "friend", plan(), "mock")


def _hammer(path: str, worker: int, n: int, q: mp.Queue) -> None:
    led = Ledger(path, default_epsilon=5.0, default_delta=1.0 - 1e-9)
    ok = 0
    for i in range(n):
        try:
            led.reserve(f"w{worker}-{i}", "shared", plan(0.25, 1e-9), "mock")
            led.commit(f"w{worker}-{i}", 0.25, 1e-9)
            ok += 1
        except JobRejected:
            pass
        if worker == 0 and i % 5 == 0:
            led.set_budget("shared", 5.0)  # an admin racing the workers
    q.put(ok)


def test_concurrent_writers_never_overspend(tmp_path):
    path = str(tmp_path / "race.db")
    Ledger(path).close()
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_hammer, args=(path, w, 15, q)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    admitted = sum(q.get() for _ in procs)
    led = Ledger(path)
    b = led.budget("shared")
    assert admitted == 20  # 5.0 / 0.25 exactly
    assert b.epsilon_spent == pytest.approx(5.0) and b.epsilon_spent <= 5.0 + 1e-9
    assert len(led.spends("shared", "committed")) == 20
