"""Crash safety: `kill -9` of real daemons at random moments and at every named crash point.

After the last restart every job file has exactly one outcome, every artifact
verifies, each job is charged exactly once, nothing stays reserved and the
spool is empty (DESIGN.md invariants 3 and 4).

The long run is `slow`; its size follows PANDACEAD_TEST_KILLS (default 30
kills) and PANDACEAD_TEST_SEED. It prints a `FIGURES` line (run with -s).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import DaemonProc, drop, job, ledger, make_home, run_once, wait_for
from fuzz.invariants import check_settled_home, processes_mentioning, read_outbox, spool_files

from pandacead.faults import POINTS

FAST = {
    "PANDACEAD_DAEMON__RETRY_SECONDS": "0.2",
    "PANDACEAD_DAEMON__RETRY_MAX_SECONDS": "1",
}
SLOW_TRAINING = "\n[trainer.options]\nmock_delay = 0.02\n"


def _budget(home: Path, user: str, eps: float) -> None:
    led = ledger(home)
    led.set_budget(user, eps)
    led.close()


def _invalid_jobs(n: int) -> list[tuple[str, bytes, str]]:
    """(name, content, needle) for jobs that must end as rejections."""
    kinds = [
        (b"{not json", "not valid JSON"),
        (b'{"job_id": "@ID", "user_id": "alice", "dp": {"epsilon": NaN}}', "NaN"),
        (json.dumps(job("@ID", epsilon=-1)).encode(), "dp.epsilon"),
        (json.dumps(job("@ID", backend="quantum")).encode(), "quantum"),
        (json.dumps(job("@ID", dataset="nosuch")).encode(), "nosuch"),
        (json.dumps(job("@ID", dp={"epsilon": 1.0, "delta": 0.009})).encode(), "1/n"),
        (json.dumps(job("@ID", epsilon=500)).encode(), "dp.epsilon"),
        (json.dumps({**job("@ID"), "dp": {"enabled": False}}).encode(), "disabled"),
        (b"", "not valid JSON"),
        ("\ufeff".encode("utf-16-le") + json.dumps(job("@ID")).encode("utf-16-le"), "UTF-8"),
    ]
    out = []
    for i in range(n):
        content, needle = kinds[i % len(kinds)]
        jid = f"bad-{i}"
        out.append((f"{jid}.json", content.replace(b"@ID", jid.encode()), needle))
    return out


@pytest.mark.slow
def test_kill_9_at_random_moments_during_a_long_run_keeps_every_invariant(tmp_path):
    seed = int(os.environ.get("PANDACEAD_TEST_SEED", "20261128"))
    min_kills = int(os.environ.get("PANDACEAD_TEST_KILLS", "30"))
    rng = random.Random(seed)
    home = make_home(tmp_path / "h", workers=2, extra=SLOW_TRAINING)
    env = {**FAST, "PANDACEAD_DAEMON__MAX_ATTEMPTS": "1000"}
    budgets = {"alice": 1000.0, "bob": 1000.0, "carol": 6.0, "dave": 2.0, "erin": 0.0}
    for u, b in budgets.items():
        _budget(home, u, b)

    files: dict[str, bytes] = {}
    expect: dict[str, str] = {}  # job_id -> artifact | error
    limited: dict[str, list[str]] = {"carol": [], "dave": []}
    for i in range(90):
        jid = f"a-{i}"
        files[f"{jid}.json"] = json.dumps(job(jid, "alice", epsilon=0.1, seed=i)).encode()
        expect[jid] = "artifact"
    for i in range(60):
        jid = f"b-{i}"
        backend = "isolated-mock" if i % 10 == 0 else "mock"
        files[f"{jid}.json"] = json.dumps(job(jid, "bob", epsilon=0.2, backend=backend)).encode()
        expect[jid] = "artifact"
    for user, n, eps in (("carol", 40, 0.5), ("dave", 30, 0.25)):
        for i in range(n):
            jid = f"{user[0]}-{i}"
            files[f"{jid}.json"] = json.dumps(job(jid, user, epsilon=eps)).encode()
            limited[user].append(jid)
    for i in range(10):
        jid = f"e-{i}"
        files[f"{jid}.json"] = json.dumps(job(jid, "erin", epsilon=0.1)).encode()
        expect[jid] = "error"
    needles = {}
    for name, content, needle in _invalid_jobs(40):
        files[name] = content
        expect[name[:-5]] = "error"
        needles[name[:-5]] = needle
    replay_of = {f"a-{i}": f"a-{i}-replay.json" for i in range(0, 90, 9)}  # 10 replays
    replay_pending = dict(replay_of)
    original_bytes: dict[str, bytes] = {}

    order = list(files)
    rng.shuffle(order)
    dropped = 0
    kills = self_kills = lives = busy_kills = 0
    crash_points_hit: dict[str, int] = {}
    started = time.monotonic()
    while order or replay_pending or kills < min_kills:
        lives += 1
        point = rng.choice(POINTS) if rng.random() < 0.25 else None
        d = DaemonProc(home, **env, **({"PANDACEAD_CRASH_AT": point} if point else {}))
        # The kill comes at a random moment after start-up (imports take most of a second).
        wait_for(lambda d=d: d.proc.poll() is not None or " started: " in d.output(), timeout=30, interval=0.02)
        # Mostly short lives; every few a longer one, so that slow jobs (a worker
        # process takes over a second to start) also get through between kills.
        end = time.monotonic() + (rng.uniform(0.05, 1.2) if rng.random() < 0.75 else rng.uniform(2.0, 4.0))
        # Spread the files over the lives still to come, so that every kill lands on work.
        quota = -(-len(order) // max(1, min_kills - kills))
        while time.monotonic() < end and d.proc.poll() is None:
            for _ in range(min(quota, rng.randint(1, 6))):
                quota -= 1
                if order:
                    name = order.pop()
                    if rng.random() < 0.3:
                        (home / "inbox" / name).write_bytes(files[name])  # a plain `cp`-style write
                    else:
                        drop(home, name, files[name])
                    dropped += 1
            for orig, rname in list(replay_pending.items()):
                art = home / "outbox" / f"{orig}.json"
                if art.exists() and (home / "outbox" / f"{orig}.dsse.json").exists():
                    original_bytes[orig] = art.read_bytes()
                    drop(home, rname, files[f"{orig}.json"])
                    del replay_pending[orig]
                    dropped += 1
            time.sleep(0.05)
        if d.proc.poll() is None:
            busy_kills += bool(spool_files(home))  # killed with claimed jobs in its spool
            d.proc.send_signal(signal.SIGKILL)
            kills += 1
        else:
            assert d.proc.returncode == -signal.SIGKILL, d.output()[-3000:]
            self_kills += 1
            crash_points_hit[point or "?"] = crash_points_hit.get(point or "?", 0) + 1
        d.stop()
        assert time.monotonic() - started < 60 + 6 * min_kills, "the kill loop takes too long"

    total_files = len(files) + len(replay_of)
    final = DaemonProc(home, **FAST)

    def settled() -> bool:
        led = ledger(home)
        try:
            rows = led.jobs()
        finally:
            led.close()
        done = [r for r in rows if r["status"] in ("succeeded", "rejected", "failed")]
        return len(done) == total_files and not list((home / "inbox").glob("*.json"))

    wait_for(lambda: " started: " in final.output(), timeout=30)
    wait_for(settled, timeout=120, interval=0.2)
    assert final.stop(signal.SIGTERM) == 0
    elapsed = time.monotonic() - started

    figures = check_settled_home(home)
    ob = read_outbox(home)
    for jid, kind in expect.items():
        if jid in replay_of:
            continue  # checked below
        got = ob.outcomes.get(jid)
        assert got == kind, f"{jid}: expected {kind}, got {got}"
    for jid, needle in needles.items():
        rep = json.loads((home / "outbox" / f"{jid}.error.json").read_text())
        assert rep["status"] == "rejected" and needle in rep["error"] + " ".join(rep["details"]), rep
    for user, ids in limited.items():
        admitted = [j for j in ids if ob.outcomes.get(j) == "artifact"]
        refused = [j for j in ids if ob.outcomes.get(j) == "error"]
        assert len(admitted) + len(refused) == len(ids), [j for j in ids if j not in admitted + refused]
        eps = 0.5 if user == "carol" else 0.25
        assert len(admitted) == math.floor(budgets[user] / eps + 1e-9), (user, len(admitted))
    for orig in replay_of:
        assert ob.outcomes[orig] == "artifacterror"  # the original's artifact, the replay's refusal
        rep = json.loads((home / "outbox" / f"{orig}.error.json").read_text())
        assert "already submitted" in rep["error"]
        assert (home / "outbox" / f"{orig}.json").read_bytes() == original_bytes[orig]
    led = ledger(home)
    try:
        for user in budgets:
            b = led.budget(user)
            want = figures["ledger"]["spent"].get(user, 0.0)
            assert b.epsilon_spent == pytest.approx(want, abs=1e-12) and b.epsilon_reserved == 0
        assert led.budget("carol").epsilon_spent == pytest.approx(6.0)
        assert led.budget("dave").epsilon_spent == pytest.approx(2.0)
        assert led.budget("erin").epsilon_spent == 0
    finally:
        led.close()
    wait_for(lambda: not processes_mentioning(str(home)), timeout=30)
    print("FIGURES crash-harness", json.dumps({
        "seed": seed, "job_files": total_files, "dropped_during_kills": dropped, "daemon_lives": lives + 1,
        "kill_9_from_outside": kills, "kills_with_jobs_in_spool": busy_kills, "self_kill_at_crash_point": self_kills, "points": crash_points_hit,
        "artifacts": len(ob.artifacts), "error_reports": len(ob.errors), "seconds": round(elapsed, 1),
        **figures,
    }, default=str))


def _crash_point_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    home = make_home(tmp_path / "h", workers=2, extra=SLOW_TRAINING)
    _budget(home, "frank", 2.0)
    jobs = {
        "m1": job("m1", "alice", epsilon=0.5),
        "m2": job("m2", "alice", epsilon=0.5, seed=3),
        "i1": job("i1", "bob", epsilon=0.5, backend="isolated-mock"),
        "i2": job("i2", "bob", epsilon=0.5, backend="isolated-mock", seed=9),
        "f1": job("f1", "frank", epsilon=1.0),
        "f2": job("f2", "frank", epsilon=1.0, seed=2),
        "f3": job("f3", "frank", epsilon=1.0, seed=4),
        "over": job("over", "alice", epsilon=50),
    }
    for jid, j in jobs.items():
        drop(home, f"{jid}.json", j)
    drop(home, "junk.json", b"[1, 2")
    return home, {**{j: "artifact" for j in ("m1", "m2", "i1", "i2")}, "over": "error", "junk": "error"}


def _check_crash_point_outcome(home: Path, expected: dict[str, str]) -> None:
    check_settled_home(home)
    got = read_outbox(home).outcomes
    frank = {k: got.pop(k) for k in ("f1", "f2", "f3")}
    assert got == expected
    assert sorted(frank.values()) == ["artifact", "artifact", "error"]  # budget 2.0, three jobs of 1.0
    led = ledger(home)
    try:
        assert led.budget("frank").epsilon_spent == pytest.approx(2.0)
        assert led.budget("alice").epsilon_spent == pytest.approx(1.0)
        assert led.budget("bob").epsilon_spent == pytest.approx(1.0)
    finally:
        led.close()


@pytest.mark.parametrize("point", POINTS)
def test_crash_point_with_two_jobs_in_flight_and_isolated_trainers(tmp_path, point):
    """workers=2: when one job reaches the point the whole daemon dies, the other job mid-way."""
    home, expected = _crash_point_home(tmp_path)
    first = run_once(home, timeout=120, PANDACEAD_CRASH_AT=point, **FAST)
    assert first.returncode in (0, -9), first.stderr.decode()[-2000:]
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    _check_crash_point_outcome(home, expected)
    wait_for(lambda: not processes_mentioning(str(home)), timeout=30)


def test_crashes_during_recovery_itself(tmp_path):
    """Each restart dies again at a later point while it resumes the previous run's jobs."""
    home, expected = _crash_point_home(tmp_path)
    env = {**FAST, "PANDACEAD_DAEMON__MAX_ATTEMPTS": "20"}
    rcs = []
    for point in ("reserved", "trained", "envelope_published", "artifact_published", "error_recorded", "committed"):
        rcs.append(run_once(home, timeout=120, PANDACEAD_CRASH_AT=point, **env).returncode)
    assert rcs.count(-9) >= 4, rcs
    last = run_once(home, timeout=120, **env)
    assert last.returncode == 0, last.stderr.decode()[-3000:]
    _check_crash_point_outcome(home, expected)
    led = ledger(home)
    try:
        assert max(r["attempts"] for r in led.jobs()) >= 1  # some job was resumed, and it was counted
    finally:
        led.close()
