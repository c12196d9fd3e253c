"""The inbox watch: watchdog's inotify wrapper read by one thread of ours (#20, round five)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    job,
    make_home,
    outcomes,
    slow_rescans,
    start_daemon_thread,
    stop_daemon_thread,
    wait_for,
)

from pandacead import daemon as daemon_mod


def _wait_outcome(home: Path, job_id: str) -> str:
    """The job's outcome within 20 s: long before the hourly rescan (`slow_rescans`) would find it."""
    return str(wait_for(lambda: outcomes(home).get(job_id), timeout=20, interval=0.02))


def test_events_wake_the_daemon_for_every_way_a_job_arrives(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    slow_rescans(home)
    d, t, rc = start_daemon_thread(home)
    try:
        inbox = home / "inbox"
        assert isinstance(d._observer, daemon_mod._InboxWatch)
        # Renamed in (the careful way: a dotfile, then a rename).
        tmp = inbox / ".a.json.tmp"
        tmp.write_text(json.dumps(job("ev-rename", epsilon=0.1)))
        os.rename(tmp, inbox / "ev-rename.json")
        assert _wait_outcome(home, "ev-rename") == "artifact"
        # Written in place and closed.
        (inbox / "ev-write.json").write_text(json.dumps(job("ev-write", epsilon=0.1)))
        assert _wait_outcome(home, "ev-write") == "artifact"
        # A hard link (IN_CREATE only: no close, no rename): claimed once it has settled.
        src = tmp_path / "outside.json"
        src.write_text(json.dumps(job("ev-link", epsilon=0.1)))
        os.link(src, inbox / "ev-link.json")
        assert _wait_outcome(home, "ev-link") == "artifact"
        # Nothing else wakes it: a dotfile alone is never claimed.
        (inbox / ".half-written.json").write_text("{")
        time.sleep(0.3)
        assert (inbox / ".half-written.json").exists()
    finally:
        stop_daemon_thread(d, t, rc)
    names = {th.name for th in threading.enumerate()}
    assert "inbox-watch" not in names  # stopped with the daemon


def test_the_watch_runs_one_thread_not_watchdogs_three(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    before = {th.ident for th in threading.enumerate()}
    d, t, rc = start_daemon_thread(home)
    try:
        new = [th for th in threading.enumerate() if th.ident not in before and th is not t]
        watch = [th for th in new if th.name == "inbox-watch"]
        assert len(watch) == 1
        # watchdog's Observer threads (emitter, dispatcher, its shared inotify reader) are not there.
        kinds = {type(th).__module__ for th in new}
        assert not any(k.startswith("watchdog") for k in kinds), kinds
    finally:
        stop_daemon_thread(d, t, rc)


def test_without_watchdogs_inotify_wrapper_the_observer_watches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another platform (or a watchdog without `InotifyFD`): watchdog's Observer, as before."""

    def unavailable(*a: object, **k: object) -> None:
        raise ImportError("no InotifyFD here")

    monkeypatch.setattr(daemon_mod._InboxWatch, "__init__", unavailable)
    home = make_home(tmp_path / "h")
    slow_rescans(home)
    d, t, rc = start_daemon_thread(home)
    try:
        assert not isinstance(d._observer, daemon_mod._InboxWatch)
        tmp = home / "inbox" / ".b.json.tmp"
        tmp.write_text(json.dumps(job("ev-observer", epsilon=0.1)))
        os.rename(tmp, home / "inbox" / "ev-observer.json")
        assert _wait_outcome(home, "ev-observer") == "artifact"
    finally:
        stop_daemon_thread(d, t, rc)


def test_a_stream_of_jobs_each_settles_once_with_one_training_at_a_time(tmp_path: Path) -> None:
    """30 jobs dropped at once into a daemon woken by its watch: every one succeeds and is charged
    once, one job at a time (`workers = 1`: the jobs' history files do not overlap)."""
    home = make_home(tmp_path / "h")
    d, t, rc = start_daemon_thread(home)
    try:
        inbox = home / "inbox"
        for i in range(30):
            tmp = inbox / f".s{i}.tmp"
            tmp.write_text(json.dumps(job(f"s{i:02d}", epsilon=0.01)))
            os.rename(tmp, inbox / f"s{i:02d}.json")
        deadline = time.monotonic() + 120
        while len([v for v in outcomes(home).values() if v == "artifact"]) < 30:
            assert time.monotonic() < deadline, outcomes(home)
            time.sleep(0.05)
    finally:
        stop_daemon_thread(d, t, rc)
    from pandacead.ledger import Ledger

    led = Ledger(home / "state" / "ledger.db")
    try:
        rows = led.query("SELECT job_id, state FROM spends ORDER BY job_id")
        assert [(r["job_id"], r["state"]) for r in rows] == [(f"s{i:02d}", "committed") for i in range(30)]
        assert len(led.query("SELECT * FROM audit WHERE event = 'committed'")) == 30
        ids = [r["id"] for r in led.query("SELECT id FROM jobs ORDER BY id")]
    finally:
        led.close()
    spans = []
    for row in ids:
        recs = [json.loads(x) for x in (home / "state" / "history" / f"{row}.jsonl").read_text().splitlines()]
        spans.append((recs[0]["at"], recs[-1]["at"]))
    spans.sort()
    for (_, e0), (s1, _) in zip(spans, spans[1:]):
        assert s1 >= e0, "two jobs trained at the same time"
    assert not list((home / "state" / "spool").rglob("*.json"))  # every job file settled and removed
