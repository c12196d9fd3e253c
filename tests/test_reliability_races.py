"""Races: several daemons and admin CLI processes on one home at once (DESIGN.md invariant 5).

No overspend (with a fixed budget exactly floor(budget/ε) jobs are admitted),
no file processed twice, no job_id charged twice, no lost update (the audit
log's before/after chain is unbroken and replays to the ledger's figures).
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import cli, drop, job, ledger, make_home, wait_for
from fuzz.invariants import check_audit, check_settled_home, read_outbox, spool_files

FAST = {"PANDACEAD_DAEMON__RETRY_SECONDS": "0.2"}


def _claims(logs: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in re.findall(r"claimed (\S+\.json)", logs):
        counts[name] = counts.get(name, 0) + 1
    return counts


def _admin_loop(home: Path, stop: threading.Event, commands: list[list[str]], log: list[tuple[list[str], int, str]]) -> None:
    i = 0
    while not stop.is_set():
        args = commands[i % len(commands)]
        r = cli(home, "budget", *args, "--home", str(home), timeout=120)
        log.append((args, r.returncode, r.stderr.decode()[-500:]))
        i += 1


def _total_rows(home: Path) -> int:
    led = ledger(home)
    try:
        return len([r for r in led.jobs() if r["status"] in ("succeeded", "rejected", "failed")])
    finally:
        led.close()


def test_three_daemons_and_admin_cli_on_a_fixed_budget_admit_exactly_floor(tmp_path, daemon_factory):
    home = make_home(tmp_path / "h", workers=2, extra="\n[trainer.options]\nmock_delay = 0.05\n")
    assert cli(home, "budget", "set", "eve", "7.5", "--create").returncode == 0
    daemons = [daemon_factory(home, **FAST) for _ in range(3)]
    wait_for(lambda: all(" started: " in d.output() for d in daemons), timeout=60)
    stop = threading.Event()
    admin_log: list[tuple[list[str], int, str]] = []
    admins = [
        threading.Thread(target=_admin_loop, args=(home, stop, cmds, admin_log), daemon=True)
        for cmds in (
            [["set", "eve", "7.5"], ["show", "eve", "--json"]],  # writes eve's row, changes nothing
            [["set", "xavier", "3", "--create"], ["reset", "xavier", "--yes"], ["set", "xavier", "5", "--delta", "0.001"]],
            [["show", "--json"], ["reset", "yolanda", "--yes", "--create"], ["history", "eve", "--json"]],
        )
    ]
    def hammer() -> None:  # in-process admin writes on eve's row, ~100 transactions a second
        led = ledger(home)
        while not stop.is_set():
            led.set_budget("eve", 7.5)
            led.reset("xavier")
            time.sleep(0.01)
        led.close()

    admins.append(threading.Thread(target=hammer, daemon=True))
    for t in admins:
        t.start()
    wait_for(lambda: len(admin_log) >= 3, timeout=60)
    n = 45
    for i in range(n):
        drop(home, f"e{i}.json", job(f"e{i}", "eve", epsilon=0.5, seed=i))
        time.sleep(0.1)
    # Ten job_ids submitted twice at the same moment under different file names.
    for i in range(10):
        drop(home, f"dup{i}-a.json", job(f"dup{i}", "zoe", epsilon=0.5))
        drop(home, f"dup{i}-b.json", job(f"dup{i}", "zoe", epsilon=0.5))
    wait_for(lambda: _total_rows(home) == n + 20, timeout=180, interval=0.2)
    stop.set()
    for t in admins:
        t.join(timeout=120)
    assert [a for a in admin_log if a[1] != 0] == []
    for d in daemons:
        assert d.stop() == 0
    logs = "".join(d.output() for d in daemons)

    figures = check_settled_home(home)
    got = read_outbox(home).outcomes
    eve = {k: v for k, v in got.items() if k.startswith("e")}
    assert len(eve) == n
    assert list(eve.values()).count("artifact") == math.floor(7.5 / 0.5) == 15
    assert list(eve.values()).count("error") == n - 15
    for i in range(10):
        assert got[f"dup{i}"] == "artifacterror"  # one ran, the other was refused as a replay
        rep = json.loads((home / "outbox" / f"dup{i}.error.json").read_text())
        assert "already submitted" in rep["error"]
    led = ledger(home)
    try:
        assert led.budget("eve").epsilon_spent == pytest.approx(7.5)
        assert led.budget("zoe").epsilon_spent == pytest.approx(5.0)
        assert len(led.spends("zoe")) == 10
    finally:
        led.close()
    claims = _claims(logs)
    assert len(claims) == n + 20 and set(claims.values()) == {1}, "a file was claimed twice"
    assert sum(1 for d in daemons if "claimed " in d.output()) >= 2, "the daemons did not share the work"
    print("FIGURES races-fixed", json.dumps({
        "daemons": 3, "job_files": n + 20, "admin_commands": len(admin_log), **figures}))


def test_budget_set_and_reset_while_jobs_reserve_lose_no_update(tmp_path, daemon_factory):
    home = make_home(tmp_path / "h", workers=2)
    assert cli(home, "budget", "set", "ray", "3", "--create").returncode == 0
    daemons = [daemon_factory(home, **FAST) for _ in range(2)]
    wait_for(lambda: all(" started: " in d.output() for d in daemons), timeout=60)
    stop = threading.Event()
    admin_log: list[tuple[list[str], int, str]] = []
    admins = [
        threading.Thread(target=_admin_loop, args=(home, stop, cmds, admin_log), daemon=True)
        for cmds in (
            [["reset", "ray", "--yes"], ["show", "ray", "--json"]],
            [["set", "ray", "4"], ["set", "ray", "2.5"], ["set", "ray", "3", "--delta", "0.002"]],
        )
    ]
    for t in admins:
        t.start()

    # In-process writers too: many small transactions interleaving with the daemons'.
    def hammer() -> None:
        led = ledger(home)
        k = 0
        while not stop.is_set():
            led.set_budget("ray", [3.0, 3.5, 2.0][k % 3])
            if k % 40 == 0:
                led.reset("ray")
            k += 1
            time.sleep(0.01)
        led.close()

    hammers = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for t in hammers:
        t.start()
    wait_for(lambda: len(admin_log) >= 2, timeout=60)
    n = 60
    for i in range(n):
        drop(home, f"r{i}.json", job(f"r{i}", "ray", epsilon=0.25, seed=i))
        time.sleep(0.08)
    wait_for(lambda: _total_rows(home) == n and len(admin_log) >= 6, timeout=180, interval=0.2)
    stop.set()
    for t in admins + hammers:
        t.join(timeout=120)
    assert [a for a in admin_log if a[1] != 0] == []
    for d in daemons:
        assert d.stop(signal.SIGTERM) == 0

    figures = check_settled_home(home)  # includes check_audit: chain, no overspend, replay
    assert figures["audit"].get("budget_reset", 0) >= 3
    assert figures["audit"].get("budget_set", 0) >= 3
    got = read_outbox(home).outcomes
    assert len(got) == n and set(got.values()) <= {"artifact", "error"}
    for jid, kind in got.items():
        if kind == "error":
            rep = json.loads((home / "outbox" / f"{jid}.error.json").read_text())
            assert rep["status"] == "rejected" and "ray" in rep["error"], rep
    print("FIGURES races-reset", json.dumps({"daemons": 2, "job_files": n, "admin_commands": len(admin_log), **figures}))


def test_daemons_started_together_adopt_a_dead_daemons_spool_exactly_once(tmp_path, daemon_factory):
    home = make_home(tmp_path / "h", workers=2, extra="\n[trainer.options]\nmock_delay = 0.1\n")
    for i in range(8):
        drop(home, f"o{i}.json", job(f"o{i}", "olga", epsilon=0.5, seed=i))
    first = daemon_factory(home, **FAST)
    wait_for(lambda: len(spool_files(home)) >= 2, timeout=60, interval=0.01)
    first.proc.send_signal(signal.SIGKILL)  # leaves an orphaned spool with jobs mid-training
    first.proc.wait()
    orphans = {p.name for p in spool_files(home)}
    assert orphans
    rounds = 2
    for _ in range(rounds):  # several daemons starting at the same instant, repeatedly
        ds = [daemon_factory(home, **FAST) for _ in range(4)]
        wait_for(lambda ds=ds: all(" started: " in d.output() or d.proc.poll() is not None for d in ds), timeout=60)
        time.sleep(0.3)
        for d in ds:
            assert d.proc.poll() is None, d.output()[-2000:]
            assert d.stop() == 0
    last = daemon_factory(home, **FAST)
    wait_for(lambda: " started: " in last.output(), timeout=60)
    wait_for(lambda: _total_rows(home) == 8, timeout=120, interval=0.2)
    assert last.stop() == 0
    check_settled_home(home)
    assert read_outbox(home).outcomes == {f"o{i}": "artifact" for i in range(8)}
    assert check_audit(home)["committed"] == 8
