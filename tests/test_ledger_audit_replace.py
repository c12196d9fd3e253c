"""The audit log is append-only against REPLACE too (INSERT OR REPLACE, REPLACE INTO, upserts)."""

from __future__ import annotations

import sqlite3

import pytest

from pandacead.ledger import Ledger
from pandacead.trainers import PrivacyPlan


def _plan() -> PrivacyPlan:
    return PrivacyPlan(epsilon=1.0, delta=1e-5, noise_multiplier=1.0, sample_rate=0.1, steps=10,
                       accountant="rdp", n_train=100)


@pytest.mark.parametrize("sql", [
    "INSERT OR REPLACE INTO audit (id, at, event, user_id) VALUES (?, 'then', 'forged', 'alice')",
    "REPLACE INTO audit (id, at, event, user_id) VALUES (?, 'then', 'forged', 'alice')",
    "INSERT INTO audit (id, at, event, user_id) VALUES (?, 'then', 'forged', 'alice')"
    " ON CONFLICT(id) DO UPDATE SET event = 'forged'",
])
def test_an_audit_entry_cannot_be_rewritten_by_replace(tmp_path, sql):
    led = Ledger(tmp_path / "l.db")
    led.reserve("x", "alice", _plan(), "mock")
    before = led.audit("alice")
    total = len(led.audit())
    victim = before[-1]["id"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with led.conn:
            led.conn.execute(sql, (victim,))
    assert led.audit("alice") == before
    # Appending stays possible, with or without an explicit new id.
    led.conn.execute("INSERT INTO audit (at, event) VALUES ('now', 'note')")
    led.conn.execute("INSERT OR REPLACE INTO audit (id, at, event) VALUES (?, 'now', 'note')", (victim + 1000,))
    led.conn.commit()
    assert len(led.audit()) == total + 2
    led.close()


def test_an_existing_ledger_gets_the_trigger_when_it_is_opened(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_replace")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm004_audit_refuses_replace'")
    conn.commit()
    conn.close()
    led = Ledger(path)
    names = {r["name"] for r in led.query("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert "audit_no_replace" in names
    led.close()
