"""Attacks on round five of #20 (commit 97bca8f): two jobs' ledger work interleaved (first written
against a freed worker slot of a job that only commits, since dropped: with `workers = 2` a job
reserves while another commits, the same interleaving), the per-process writer lock of the ledger, the inbox watch read from watchdog's `InotifyFD` by one
thread of ours, and the synchronous history file. Each test performs the attack against the real
code (a real daemon in a thread or a subprocess, real SQLite, real files)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DaemonProc,
    drop,
    job,
    ledger,
    make_home,
    outcomes,
    run_once,
    slow_rescans,
    start_daemon_thread,
    stop_daemon_thread,
    wait_for,
)

from pandacead import daemon as daemon_mod
from pandacead.config import load_settings
from pandacead.ledger import Ledger

FAST = {"PANDACEAD_DAEMON__RETRY_SECONDS": "0.2", "PANDACEAD_DAEMON__RETRY_MAX_SECONDS": "1"}


# -- helpers (a real daemon in a thread: conftest.start_daemon_thread) ------------------------------


def _settled(home: Path, n: int, timeout: float = 60) -> dict[str, str]:
    def enough() -> dict[str, str] | None:
        o = outcomes(home)
        return o if len(o) >= n else None

    return wait_for(enough, timeout=timeout)


@contextlib.contextmanager
def _slow_commits(monkeypatch: pytest.MonkeyPatch, seconds: float, log: list[tuple[str, str, float]]) -> Any:
    """Every success commit holds the ledger's write lock `seconds` longer (inside its transaction),
    so that the next job is claimed, planned and reserves while it commits; `log` gets
    (event, job_id, time) for each commit's start and end and each reservation's start."""
    real_commit, real_reserve = Ledger.commit, Ledger.reserve

    def commit(self: Ledger, job_id: str, *a: Any, **k: Any) -> None:
        log.append(("commit", job_id, time.monotonic()))
        real_advance = self._advance

        def advance(uid: str, ds: Any) -> None:
            time.sleep(seconds)
            real_advance(uid, ds)

        self._advance = advance  # type: ignore[method-assign]
        try:
            real_commit(self, job_id, *a, **k)
        finally:
            del self._advance
            log.append(("committed", job_id, time.monotonic()))

    def reserve(self: Ledger, job_id: str, *a: Any, **k: Any) -> int:
        log.append(("reserve", job_id, time.monotonic()))
        return real_reserve(self, job_id, *a, **k)

    monkeypatch.setattr(Ledger, "commit", commit)
    monkeypatch.setattr(Ledger, "reserve", reserve)
    yield
    monkeypatch.setattr(Ledger, "commit", real_commit)
    monkeypatch.setattr(Ledger, "reserve", real_reserve)


def _ledger_totals(home: Path, user: str = "alice") -> dict[str, Any]:
    led = ledger(home)
    try:
        b = led.budget(user)
        spends = led.query("SELECT job_id, state, epsilon FROM spends WHERE user_id = ?", [user])
        audit = led.query("SELECT event, job_id FROM audit WHERE user_id = ? AND event IN"
                          " ('reserved', 'committed', 'released')", [user])
        return {"spent": b.epsilon_spent, "reserved": b.epsilon_reserved, "spends": spends, "audit": audit}
    finally:
        led.close()


# -- accounting under the overlap (workers = 2, a job reserves while another one commits) ----------


@pytest.mark.slow
def test_a_commit_that_fails_while_the_next_job_runs_settles_once_next_start(tmp_path: Path) -> None:
    """PANDACEAD_FAIL_AT=commit: every success commit fails (its job is published, reserved, deferred)
    while the next job is claimed and reserves. The reservations still count (budget ε=2.5, three
    jobs of ε=1: the third is refused); the next start commits the two from their artifacts, once."""
    home = make_home(tmp_path / "h", default_epsilon=2.5)
    for i in range(3):
        drop(home, f"f{i}.json", job(f"f{i}", epsilon=1.0, seed=i))
    first = run_once(home, timeout=120, PANDACEAD_FAIL_AT="commit:EIO", PANDACEAD_DAEMON__ONCE_RETRIES="2", **FAST)
    assert first.returncode == 1, first.stderr.decode()[-3000:]  # the two published stay spooled
    mid = _ledger_totals(home)
    assert mid["spent"] == 0 and mid["reserved"] == pytest.approx(2.0)
    assert sorted(outcomes(home).values()) == ["artifact", "artifact", "error"]
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(2.0) and tot["reserved"] == 0
    committed = sorted(a["job_id"] for a in tot["audit"] if a["event"] == "committed")
    assert len(committed) == 2 and len(set(committed)) == 2
    assert not list((home / "state" / "spool").rglob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["reserved", "committed", "settled"])
def test_a_kill_while_one_job_commits_and_the_next_runs_settles_each_once(tmp_path: Path, point: str) -> None:
    """The crash comes at the second job's `reserved` (while the first commits, its commit slowed by a
    long job stream), or at a job's `committed`/`settled` with the next one already reserved: after a
    clean restart every job has one outcome and one charge."""
    home = make_home(tmp_path / "h", extra="\n[trainer.options]\nmock_delay = 0.02\n")
    for i in range(5):
        drop(home, f"k{i}.json", job(f"k{i}", epsilon=0.5, seed=i, epochs=3))
    first = run_once(home, timeout=120, PANDACEAD_CRASH_AT=point, **FAST)
    assert first.returncode == -9, first.stderr.decode()[-2000:]
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    from fuzz.invariants import check_settled_home

    check_settled_home(home)
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(2.5) and tot["reserved"] == 0
    committed = [a["job_id"] for a in tot["audit"] if a["event"] == "committed"]
    assert sorted(committed) == [f"k{i}" for i in range(5)]


@pytest.mark.slow
def test_sigterm_while_one_job_settles_and_the_next_trains_loses_nothing(tmp_path: Path) -> None:
    """A subprocess daemon (workers = 1) stopped by SIGTERM in the middle of a stream: it exits 0; the
    job training is finished or handed back, the settling one committed; after a restart every job
    has one outcome and one charge."""
    home = make_home(tmp_path / "h", extra="\n[trainer.options]\nmock_delay = 0.15\n")
    d = DaemonProc(home, **FAST)
    try:
        wait_for(lambda: d.proc.poll() is not None or " started: " in d.output(), timeout=60)
        for i in range(6):
            drop(home, f"t{i}.json", job(f"t{i}", epsilon=0.5, seed=i, epochs=3))
        wait_for(lambda: len(outcomes(home)) >= 2, timeout=60)
        assert d.stop(signal.SIGTERM, timeout=60) == 0, d.output()[-3000:]
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    assert "Traceback" not in d.output(), d.output()[-3000:]
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    from fuzz.invariants import check_settled_home

    check_settled_home(home)
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(3.0) and tot["reserved"] == 0
    assert sorted(a["job_id"] for a in tot["audit"] if a["event"] == "committed") == [f"t{i}" for i in range(6)]


def test_a_job_cancelled_while_the_last_one_commits_is_refused_uncharged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`jobs cancel` of a queued job, which the daemon claims while the previous job commits: it is
    refused before it starts, nothing charged; the previous one is charged once."""
    from pandacead.pipeline import cancel_path

    home = make_home(tmp_path / "h")
    s = load_settings(home, environ={})
    log: list[tuple[str, str, float]] = []
    with _slow_commits(monkeypatch, 0.5, log):
        d, t, rc = start_daemon_thread(home)
        try:
            drop(home, "first.json", job("first", epsilon=0.5))
            wait_for(lambda: any(e[0] == "commit" for e in log), timeout=30)
            p = cancel_path(s, "second")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
            drop(home, "second.json", job("second", epsilon=0.5))
            got = _settled(home, 2)
        finally:
            stop_daemon_thread(d, t, rc)
    assert got == {"first": "artifact", "second": "error"}
    report = json.loads((home / "outbox" / "second.error.json").read_text())
    assert "cancelled before it started" in json.dumps(report)
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(0.5) and tot["reserved"] == 0
    assert [s["job_id"] for s in tot["spends"]] == ["first"]


# -- the writer lock -----------------------------------------------------------------------------


def test_a_transaction_that_raises_frees_the_writer_lock(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    a, b = Ledger(path), Ledger(path)
    try:
        with pytest.raises(ZeroDivisionError), a.transaction(durable=False):
            a._ensure_user("x")
            1 / 0  # noqa: B018
        assert not a.query("SELECT * FROM users WHERE user_id = 'x'")
        assert a.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        got: list[bool] = []
        th = threading.Thread(target=lambda: got.append(b._writer.acquire(timeout=2) and (b._writer.release() or True)))
        th.start()
        th.join()
        assert got == [True]
        b.add_account("y", 1.0)  # another connection writes at once
    finally:
        a.close()
        b.close()


def test_a_failure_between_taking_the_writer_lock_and_the_transaction_frees_it(tmp_path: Path) -> None:
    """A closed connection (or any error in the statement that sets the commit's synchronous mode)
    must not keep the process-wide writer lock: every later writer of this ledger in this process
    would wait 120 s and fail."""
    path = tmp_path / "l.db"
    a, b = Ledger(path), Ledger(path)
    try:
        a.close()
        with pytest.raises(sqlite3.ProgrammingError):
            with a.transaction(durable=False):
                pass
        assert b._writer.acquire(timeout=2), "the writer lock leaked"
        b._writer.release()
        b.add_account("z", 1.0)
    finally:
        b.close()


def test_the_writer_locks_timeout_defers_the_job_like_a_locked_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the writer lock cannot be had (the 120 s timeout, simulated), the reservation raises
    OperationalError and the job is deferred: nothing charged, no error published, the file stays
    spooled; the next attempt runs it, charged once."""
    from pandacead.app import App
    from pandacead.pipeline import Deferred, Pipeline
    from pandacead.spool import Spool

    class Busy:
        def acquire(self, timeout: float = -1) -> bool:
            return False

        def release(self) -> None:  # pragma: no cover - never acquired
            raise AssertionError("released a lock it did not hold")

    home = make_home(tmp_path / "h")
    s = load_settings(home, environ={})
    app = App(s)
    sp = Spool(s.spool)
    sp.acquire()
    try:
        pipe = Pipeline(s, app.plugins, app.ctx, sp.owner, public_keys=app.public_keys, noise_key=app.noise_key)
        pipe.ledger()  # the account's table exists
        drop(home, "w.json", job("w", epsilon=0.5))
        spooled = sp.claim(home / "inbox", "w.json")
        real = pipe.ledger()._writer
        pipe.ledger()._writer = Busy()  # type: ignore[assignment]
        with pytest.raises(Deferred, match="unavailable"):
            pipe.process(spooled)
        assert spooled.exists() and not outcomes(home)
        pipe.ledger()._writer = real
        assert pipe.process(spooled).status == "succeeded"
    finally:
        sp.release()
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(0.5) and tot["reserved"] == 0
    assert [a["event"] for a in tot["audit"]] == ["reserved", "committed"]


def test_the_cli_writing_while_the_daemon_commits_is_queued_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (the CLI's `budget set`) writes while the daemon's threads queue on their own
    lock: both land, the daemon's job is charged once and the new allowance is in force."""
    from conftest import cli

    home = make_home(tmp_path / "h")
    log: list[tuple[str, str, float]] = []
    with _slow_commits(monkeypatch, 0.3, log):
        d, t, rc = start_daemon_thread(home)
        try:
            for i in range(3):
                drop(home, f"c{i}.json", job(f"c{i}", epsilon=0.5, seed=i))
            wait_for(lambda: any(e[0] == "commit" for e in log), timeout=30)
            r = cli(home, "budget", "set", "alice", "7", "--home", str(home))
            assert r.returncode == 0, r.stderr.decode()[-2000:]
            _settled(home, 3)
        finally:
            stop_daemon_thread(d, t, rc)
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(1.5) and tot["reserved"] == 0
    led = ledger(home)
    try:
        assert led.budget("alice").epsilon_budget == pytest.approx(7.0)
    finally:
        led.close()


# -- the inbox watch -----------------------------------------------------------------------------


def test_the_watch_thread_dying_leaves_the_periodic_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inotify read fails (OSError): the watch thread ends with a warning, and the daemon still
    claims files by its periodic scan (rescan_interval 0.2 s here)."""
    from watchdog.observers.inotify_c import InotifyFD

    def broken(self: Any, **k: Any) -> list[Any]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(InotifyFD, "read_events", broken)
    home = make_home(tmp_path / "h")
    d, t, rc = start_daemon_thread(home)
    try:
        assert isinstance(d._observer, daemon_mod._InboxWatch)
        wait_for(lambda: not d._observer.thread.is_alive(), timeout=10)
        drop(home, "late.json", job("late", epsilon=0.1))
        assert _settled(home, 1, timeout=30) == {"late": "artifact"}
    finally:
        stop_daemon_thread(d, t, rc)


def test_a_queue_overflow_wakes_the_loop(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    d, t, rc = start_daemon_thread(home)
    try:
        w = d._observer
        assert isinstance(w, daemon_mod._InboxWatch)
        d.wake.clear()
        w.on_queue_overflow()
        assert d.wake.is_set()
    finally:
        stop_daemon_thread(d, t, rc)


def _buyer(home: Path, name: str, epsilon: float = 5.0) -> Path:
    from pandacead.accounts import create_buyer_dirs

    led = ledger(home)
    try:
        led.add_account(name, epsilon, buyer=True, unix_uid=os.getuid())
    finally:
        led.close()
    return create_buyer_dirs(load_settings(home, environ={}), name, os.getuid(), None).inbox


def _drop_in(inbox: Path, name: str, content: Any) -> None:
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(json.dumps(content))
    os.replace(tmp, inbox / name)


def test_a_file_dropped_while_a_new_buyer_inbox_is_first_scanned_is_not_left_to_the_hourly_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A buyer inbox made after start: the daemon's first scan of it lists it, then watches it. A file
    renamed in between (simulated: right after the directory is listed) had no watch to report it
    and was not in the listing: with the hourly rescan it waited an hour. The watch must exist
    before the listing."""
    home = make_home(tmp_path / "h")
    slow_rescans(home)
    d, t, rc = start_daemon_thread(home)
    real_scan = daemon_mod.scan
    hit: list[bool] = []

    def scan(path: Path) -> Any:
        out = real_scan(path)
        if path.name == "bob" and not hit:
            hit.append(True)
            _drop_in(path, "b1.json", job("b1", user_id="bob", epsilon=0.1))
        return out

    monkeypatch.setattr(daemon_mod, "scan", scan)
    try:
        _buyer(home, "bob")
        wait_for(lambda: hit, timeout=20)
        assert wait_for(lambda: (home / "outbox" / "bob" / "b1.json").exists(), timeout=20)
    finally:
        stop_daemon_thread(d, t, rc)


def test_a_buyer_inbox_removed_and_made_again_is_watched_again(tmp_path: Path) -> None:
    """`buyers remove` then `buyers add` of one account (a new directory): its new inbox gets a watch,
    so its files are not left to the hourly rescan."""
    home = make_home(tmp_path / "h")
    slow_rescans(home)
    inbox = _buyer(home, "carol")
    d, t, rc = start_daemon_thread(home)
    try:
        _drop_in(inbox, "c1.json", job("c1", user_id="carol", epsilon=0.1))
        assert wait_for(lambda: (home / "outbox" / "carol" / "c1.json").exists(), timeout=20)
        inbox.rmdir()
        wait_for(lambda: "carol/" not in d._observer.prefix.values(), timeout=10)
        inbox.mkdir(mode=0o700)  # IN_CREATE in inbox/: the daemon scans and watches it
        wait_for(lambda: "carol/" in d._observer.prefix.values(), timeout=10)
        _drop_in(inbox, "c2.json", job("c2", user_id="carol", epsilon=0.1))
        assert wait_for(lambda: (home / "outbox" / "carol" / "c2.json").exists(), timeout=20)
    finally:
        stop_daemon_thread(d, t, rc)


def test_hostile_entries_in_the_inbox_do_not_break_the_watch(tmp_path: Path) -> None:
    """A symlink as an inbox entry, a directory renamed in (named like a job and like an account), a
    FIFO: none is claimed as a job, none stops the watch, and a real job after them is claimed at
    once (by its event: the rescan is hourly)."""
    home = make_home(tmp_path / "h")
    slow_rescans(home)
    d, t, rc = start_daemon_thread(home)
    inbox = home / "inbox"
    try:
        secret = tmp_path / "secret.json"
        secret.write_text(json.dumps(job("stolen", epsilon=0.1)))
        os.symlink(secret, inbox / "link.json")
        (tmp_path / "dirjob.json").mkdir()
        os.rename(tmp_path / "dirjob.json", inbox / "dirjob.json")
        (tmp_path / "ghost").mkdir()
        os.rename(tmp_path / "ghost", inbox / "ghost")  # an account that does not exist
        os.mkfifo(inbox / "fifo.json")
        time.sleep(0.3)
        assert d._observer.thread.is_alive()
        drop(home, "real.json", job("real", epsilon=0.1))
        wait_for(lambda: outcomes(home).get("real"), timeout=20)
    finally:
        stop_daemon_thread(d, t, rc)
    assert outcomes(home).get("real") == "artifact"
    assert "stolen" not in outcomes(home)
    assert secret.exists()


def test_daemons_started_and_stopped_in_one_process_leak_no_thread_nor_descriptor(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    d, t, rc = start_daemon_thread(home)  # the first start warms imports and the history pool of earlier code
    stop_daemon_thread(d, t, rc)
    del d
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    for _ in range(4):
        d, t, rc = start_daemon_thread(home)
        stop_daemon_thread(d, t, rc)
        del d
        gc.collect()
    assert not [th for th in threading.enumerate() if th.name in ("inbox-watch",) or th.name.startswith("job")]
    assert threading.active_count() <= threads_before
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 1  # (+1: slack for the listing itself)


def test_a_watch_that_cannot_start_closes_its_inotify_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`inotify_add_watch` fails (ENOSPC: the watch limit): the daemon falls back to scans and does not
    keep the inotify instance and its pipe open (a restart loop in one process would run out)."""
    from watchdog.observers.inotify_c import InotifyFD

    def full(self: Any, *a: Any, **k: Any) -> Any:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(InotifyFD, "add_callback", full)
    home = make_home(tmp_path / "h")
    d, t, rc = start_daemon_thread(home)
    stop_daemon_thread(d, t, rc)
    del d
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        d, t, rc = start_daemon_thread(home)
        assert not isinstance(getattr(d, "_observer", None), daemon_mod._InboxWatch)
        drop(home, f"s{_}.json", job(f"s{_}", epsilon=0.1))
        wait_for(lambda n=_: outcomes(home).get(f"s{n}"), timeout=20)
        stop_daemon_thread(d, t, rc)
        del d
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 1


def test_a_watch_stopped_before_or_just_after_its_reader_starts_closes_its_descriptors() -> None:
    """watchdog's InotifyFD leaves its descriptors to the reader when `close` finds it "reading";
    it starts in that state, so a stop that wins the race with the reader's first read leaked
    the inotify instance and its pipe (a daemon stopped during start-up, a test loop)."""
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for i in range(40):
        w = daemon_mod._InboxWatch(daemon_mod._Events(threading.Event()), threading.Event())
        if i % 2:
            w.start()
        w.stop()
        assert not w.thread.is_alive()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1


@pytest.mark.slow
def test_a_commit_the_next_reservation_preceded_is_synced_while_that_job_trains_without_a_busy_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `workers = 2` a job may reserve before another one commits (here l0 and l1 reserve together,
    and l0, one epoch, commits 50 ms late while l1 trains four). That reservation does not make the
    commit durable, and the loop fsynced the WAL only with nothing in flight: the commit stayed
    unsynced, its spool file kept, and the loop woke every 10 ms (`_wait_time` says "sync due"), for
    the rest of l1's training (some 150 wake-ups, each wanting the GIL the training thread holds)."""
    home = make_home(tmp_path / "h", workers=2, extra="\n[trainer.options]\nmock_delay = 0.5\n")
    real_commit = Ledger.commit

    def late(self: Ledger, *a: Any, **k: Any) -> None:
        time.sleep(0.05)
        real_commit(self, *a, **k)

    monkeypatch.setattr(Ledger, "commit", late)
    real_tick = daemon_mod.Daemon._tick
    waiting_ticks = [0]

    def tick(self: daemon_mod.Daemon, first: bool = False) -> None:
        if self.in_flight and getattr(self, "pipeline", None) is not None and self.pipeline._unsynced:
            waiting_ticks[0] += 1
        real_tick(self, first)

    monkeypatch.setattr(daemon_mod.Daemon, "_tick", tick)
    d, t, rc = start_daemon_thread(home)
    try:
        drop(home, "l0.json", job("l0", epochs=1, seed=0))
        drop(home, "l1.json", job("l1", epochs=4, seed=1))
        wait_for(lambda: outcomes(home).get("l0"), timeout=30)
        spooled = home / "state" / "spool"
        # l0's spool file goes while l1 still trains (it trains 2 s).
        wait_for(lambda: not [p for p in spooled.rglob("*l0.json")], timeout=1.5)
        assert not outcomes(home).get("l1")
        wait_for(lambda: outcomes(home).get("l1"), timeout=30)
    finally:
        stop_daemon_thread(d, t, rc)
    assert waiting_ticks[0] <= 30, f"the loop woke {waiting_ticks[0]} times waiting for a sync"
    tot = _ledger_totals(home)
    assert tot["spent"] == pytest.approx(2.0) and tot["reserved"] == 0


def test_a_transaction_begun_inside_another_fails_at_once_not_after_120_s(tmp_path: Path) -> None:
    """Nested use of one ledger in one thread: SQLite refused it at once ("within a transaction");
    with a plain lock the inner one waited 120 s for the lock its own thread held."""
    got: list[Any] = []

    def nested() -> None:
        led = Ledger(tmp_path / "l.db")
        try:
            with led.transaction(), led.transaction(durable=False):
                pass
            got.append(None)
        except BaseException as exc:  # noqa: BLE001 - what it raised is the point
            got.append(exc)
        try:
            with led.transaction(), led.transaction():
                pass
            got.append(None)
        except BaseException as exc:  # noqa: BLE001
            got.append(exc)
        got.append((led.conn.execute("PRAGMA synchronous").fetchone()[0], led.conn.in_transaction))
        led.close()

    th = threading.Thread(target=nested, daemon=True)
    th.start()
    th.join(timeout=10)
    assert not th.is_alive(), "a nested transaction hung on the writer lock"
    assert isinstance(got[0], sqlite3.OperationalError)  # (its synchronous mode cannot change inside)
    assert isinstance(got[1], sqlite3.OperationalError) and "within a transaction" in str(got[1])
    assert got[2] == (2, False)  # rolled back, FULL as before
    other = Ledger(tmp_path / "l.db")
    try:
        assert other._writer.acquire(timeout=2)  # released: another thread's writer gets it
        other._writer.release()
        other.add_account("n", 1.0)
    finally:
        other.close()


def test_one_ledger_reached_through_a_link_is_one_writer_lock(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    a, b = Ledger(tmp_path / "real" / "l.db"), Ledger(tmp_path / "link" / "l.db")
    try:
        assert a._writer is b._writer
    finally:
        a.close()
        b.close()


def test_an_inbox_that_is_a_link_to_its_directory_is_watched(tmp_path: Path) -> None:
    """paths.inbox a link to where the inbox lives (another disk): IN_DONT_FOLLOW | IN_ONLYDIR refused
    it (ENOTDIR, "relying on periodic scans"; watchdog's Observer watched the link itself and saw
    nothing either); jobs waited for the hourly scan."""
    home = make_home(tmp_path / "h")
    slow_rescans(home)
    os.rename(home / "inbox", tmp_path / "real-inbox")
    os.symlink(tmp_path / "real-inbox", home / "inbox")
    d, t, rc = start_daemon_thread(home)
    try:
        assert isinstance(getattr(d, "_observer", None), daemon_mod._InboxWatch)
        drop(home, "via-link.json", job("via-link", epsilon=0.1))
        assert _settled(home, 1, timeout=20) == {"via-link": "artifact"}
    finally:
        stop_daemon_thread(d, t, rc)


def test_a_watch_whose_reads_return_nothing_does_not_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    """watchdog's read returns no events, without an error, once its descriptor is closed or bad
    (EBADF): the reader must not turn that into a busy loop on a 2-core host."""
    from watchdog.observers.inotify_c import InotifyFD

    calls = [0]

    def empty(self: Any, **k: Any) -> list[Any]:
        calls[0] += 1
        return []

    w = daemon_mod._InboxWatch(daemon_mod._Events(threading.Event()), threading.Event())
    monkeypatch.setattr(InotifyFD, "read_events", empty)
    w.start()
    time.sleep(0.5)
    monkeypatch.undo()
    w.stop()
    assert not w.thread.is_alive()
    assert calls[0] < 200, f"{calls[0]} reads in 0.5 s"


def test_a_wal_sync_that_fails_is_retried_after_the_delay_not_in_a_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle fsync of the WAL fails (EIO): it is tried again about a second later, not at every
    turn of the loop (every 10 ms, an error line each); the spool file stays until a sync works."""
    home = make_home(tmp_path / "h")
    attempts = [0]

    def failing(self: Ledger) -> None:
        attempts[0] += 1
        raise OSError(5, "Input/output error")

    d, t, rc = start_daemon_thread(home)
    try:
        monkeypatch.setattr(Ledger, "sync", failing)
        drop(home, "y.json", job("y", epsilon=0.1))
        _settled(home, 1)
        time.sleep(1.0)
        assert attempts[0] <= 3, f"{attempts[0]} syncs tried in about a second"
        monkeypatch.undo()
    finally:
        stop_daemon_thread(d, t, rc)
    assert not list((home / "state" / "spool").rglob("*.json"))  # settled by the shutdown's sync
