"""Crash safety: a daemon SIGKILLed at every named point settles every file exactly once on restart."""

from __future__ import annotations

import json

import pytest
from conftest import cli, drop, job, ledger, outcomes, run_once

from pandacead.faults import POINTS


def check_invariants(home, expected: dict[str, str]) -> None:
    got = outcomes(home)
    assert got == expected
    led = ledger(home)
    assert led.spends(state="reserved") == []
    for jid, kind in expected.items():
        if kind == "artifact":
            assert cli(home, "verify", str(home / "outbox" / f"{jid}.json")).returncode == 0
            s = led.spend(jid)
            assert s["state"] == "committed"
            assert s["epsilon"] == json.loads((home / "outbox" / f"{jid}.json").read_text())["epsilon"]
    assert not list((home / "inbox").glob("*.json"))
    leftovers = [p for p in (home / "state" / "spool").rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


@pytest.mark.parametrize("point", [p for p in POINTS])
def test_crash_at_each_point_then_restart_keeps_every_invariant(home, point):
    drop(home, "good.json", job("good"))
    drop(home, "bad.json", job("bad", epsilon=999))  # refused: over budget
    first = run_once(home, timeout=60, PANDACEAD_CRASH_AT=point)
    second = run_once(home, timeout=60)
    assert second.returncode == 0, second.stderr.decode()
    check_invariants(home, {"good": "artifact", "bad": "error"})
    b = ledger(home).budget("alice")
    assert b.epsilon_spent == pytest.approx(1.0) and b.epsilon_reserved == 0
    assert first.returncode in (0, -9, 137)
