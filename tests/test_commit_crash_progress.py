"""A mock job's commits: the reservation before training, then one commit that charges the spend and
writes the last progress row together (#20 item 5). In the daemon only the reservation is durable
(fsynced); the success commit is made durable by the next durable transaction or an idle fsync of the
WAL, and the job's spool file stays until then (docs/reliability.md, "One durable commit per job").
A crash at every point around them, and a power cut that loses the commit, still settle each job
once, with its progress row."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
from pathlib import Path

import pytest
from conftest import drop, job, ledger, make_home, run_once

from pandacead.faults import POINTS

FAST = {"PANDACEAD_DAEMON__RETRY_SECONDS": "0.2", "PANDACEAD_DAEMON__RETRY_MAX_SECONDS": "1"}


def _pipeline(home: Path):  # type: ignore[no-untyped-def]
    from pandacead.app import App
    from pandacead.config import load_settings
    from pandacead.pipeline import Pipeline
    from pandacead.spool import Spool

    s = load_settings(home, environ={})
    app = App(s)
    sp = Spool(s.spool)
    sp.acquire()
    return sp, Pipeline(s, app.plugins, app.ctx, sp.owner, public_keys=app.public_keys, noise_key=app.noise_key)


def test_a_mock_job_makes_two_write_transactions_and_keeps_its_last_progress(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pandacead.ledger import Ledger

    home = make_home(tmp_path / "h")
    sp, pipe = _pipeline(home)
    try:
        drop(home, "w.json", job("w"))  # a warm-up job: the account exists afterwards
        pipe.process(sp.claim(home / "inbox", "w.json"))
        count = [0]
        real = Ledger.transaction

        @contextlib.contextmanager
        def counted(self, durable=True):  # type: ignore[no-untyped-def]
            count[0] += 1
            with real(self, durable) as conn:
                yield conn

        monkeypatch.setattr(Ledger, "transaction", counted)
        drop(home, "j.json", job("j", epochs=3))
        out = pipe.process(sp.claim(home / "inbox", "j.json"))
        monkeypatch.undo()
    finally:
        sp.release()
    assert out.status == "succeeded"
    assert count[0] == 2  # reserve, commit (with the last progress row); no third commit
    led = ledger(home)
    try:
        row = led.job("j")
    finally:
        led.close()
    assert row["status"] == "succeeded"
    assert row["progress"]["epoch"] == row["progress"]["epochs"] == 3
    assert [h["epoch"] for h in row["progress"]["history"]] == [1, 2, 3]


@pytest.mark.parametrize("point", [p for p in POINTS if p in ("artifact_published", "committed", "settled", "synced")])
def test_a_crash_around_the_commit_settles_once_with_the_progress_row(tmp_path: Path, point: str) -> None:
    home = make_home(tmp_path / "h")
    for i in range(3):
        drop(home, f"c{i}.json", job(f"c{i}", epsilon=0.5, epochs=2, seed=i))
    first = run_once(home, timeout=120, PANDACEAD_CRASH_AT=point, **FAST)
    assert first.returncode == -9, first.stderr.decode()[-2000:]
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    led = ledger(home)
    try:
        rows = {r["job_id"]: r for r in led.jobs()}
        assert sorted(rows) == ["c0", "c1", "c2"] and {r["status"] for r in rows.values()} == {"succeeded"}
        assert led.budget("alice").epsilon_spent == pytest.approx(1.5) and led.budget("alice").epsilon_reserved == 0
        assert len(led.spends("alice", state="committed")) == 3
        # A job a crash interrupted before its commit is recovered from its artifact, its last
        # progress row rebuilt from its history file: every job has the row.
        assert all(r["progress"]["epoch"] == r["progress"]["epochs"] == 2 for r in rows.values()), rows
        assert len([a for a in led.audit("alice") if a["event"] == "committed"]) == 3
    finally:
        led.close()
    assert not list((home / "inbox").glob("*.json"))
    assert sorted(p.name for p in (home / "outbox").glob("c*.json") if not p.name.endswith(".dsse.json")) == \
        ["c0.json", "c1.json", "c2.json"]


def test_a_progress_report_json_cannot_hold_never_fails_the_commit(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    sp, pipe = _pipeline(home)
    try:
        pipe._local.final_progress = (7, {"epoch": 1, "loss": object()})
        assert pipe._take_final_progress(7) is None  # no row, as job_progress wrote none
        pipe._local.final_progress = (7, {"epoch": 2, "epochs": 2})
        assert pipe._take_final_progress(8) is None  # another job's report is not taken
        assert pipe._take_final_progress(7) == {"epoch": 2, "epochs": 2}
        assert pipe._take_final_progress(7) is None  # once
    finally:
        sp.release()


# -- one durable commit per job (the daemon's `defer_sync`) -----------------------------------------


def _settings(home: Path):  # type: ignore[no-untyped-def]
    from pandacead.config import load_settings

    return load_settings(home, environ={})


def test_the_daemon_makes_one_durable_commit_and_three_file_fsyncs_per_job(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Steady state of a stream of mock jobs: per job one durable transaction (the reservation, which
    also makes the previous job's commit durable), one not fsynced (the commit), three fsyncs of files
    (envelope, artifact, outbox/) and no extra WAL sync; the previous job's spool file goes after the
    reservation, the last one's at the idle flush."""
    from pandacead.ledger import Ledger

    home = make_home(tmp_path / "h")
    sp, pipe = _pipeline(home)
    pipe.defer_sync = True
    tx: list[tuple[bool, int]] = []
    syncs, fsyncs = [0], [0]
    real_tx, real_sync, real_fsync = Ledger.transaction, Ledger.sync, os.fsync

    @contextlib.contextmanager
    def counted(self, durable=True):  # type: ignore[no-untyped-def]
        with real_tx(self, durable) as conn:
            # The setting SQLite commits this transaction under: 2 = FULL (fsync), 1 = NORMAL (none).
            tx.append((durable, conn.execute("PRAGMA synchronous").fetchone()[0]))
            yield conn

    def sync(self):  # type: ignore[no-untyped-def]
        syncs[0] += 1
        real_sync(self)

    def fsync(fd):  # type: ignore[no-untyped-def]
        fsyncs[0] += 1
        real_fsync(fd)

    try:
        drop(home, "w.json", job("w"))  # warm-up: the account and the dataset's row exist afterwards
        pipe.process(sp.claim(home / "inbox", "w.json"))
        monkeypatch.setattr(Ledger, "transaction", counted)
        monkeypatch.setattr(Ledger, "sync", sync)
        monkeypatch.setattr(os, "fsync", fsync)
        spooled = []
        for i in range(4):
            drop(home, f"j{i}.json", job(f"j{i}", epochs=2))
            spooled.append(sp.claim(home / "inbox", f"j{i}.json"))
            assert pipe.process(spooled[-1]).status == "succeeded"
            # This job's file waits for the next durable commit; the previous one's is gone.
            assert spooled[-1].exists()
            assert i == 0 or not spooled[-2].exists()
        steady = (list(tx), syncs[0], fsyncs[0])
        assert pipe.flush_unsynced() == 1
        monkeypatch.undo()
    finally:
        sp.release()
    tx_seen, n_sync, n_fsync = steady
    assert tx_seen == [(True, 2), (False, 1)] * 4  # reserve durable, commit not; FULL restored after each
    assert n_sync == 0 and n_fsync == 3 * 4
    assert not spooled[-1].exists()
    led = ledger(home)
    try:
        assert led.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert {r["job_id"]: r["status"] for r in led.jobs()} == {"w": "succeeded", **{f"j{i}": "succeeded" for i in range(4)}}
    finally:
        led.close()


def test_no_spool_file_is_removed_before_its_outcome_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut at any moment keeps the spool file of every job whose commit it can lose.

    The model: a durable transaction or `Ledger.sync` puts everything committed so far on the disk;
    a commit under synchronous=NORMAL is on the disk only from the next of those. Every removal of a
    spool file must find its job's outcome in the durable set (the recovery keys on the file)."""
    from pandacead.ledger import Ledger
    from pandacead.pipeline import Pipeline

    home = make_home(tmp_path / "h", default_epsilon=2.5)
    sp, pipe = _pipeline(home)
    pipe.defer_sync = True
    durable: set[str] = set()  # (job rows) whose outcome is on the disk
    removed: list[str] = []
    real_tx, real_sync, real_cleanup = Ledger.transaction, Ledger.sync, Pipeline.cleanup

    def settled_rows(conn: sqlite3.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT file FROM jobs WHERE status != 'running'")}

    @contextlib.contextmanager
    def tracked(self, durable_tx=True):  # type: ignore[no-untyped-def]
        with real_tx(self, durable_tx) as conn:
            yield conn
        if durable_tx:
            durable.update(settled_rows(self.conn))

    def sync(self):  # type: ignore[no-untyped-def]
        real_sync(self)
        durable.update(settled_rows(self.conn))

    def cleanup(self, spooled, set_aside=False):  # type: ignore[no-untyped-def]
        if spooled.exists():
            assert spooled.name in durable, f"{spooled.name} removed before its outcome was durable"
            removed.append(spooled.name)
        real_cleanup(self, spooled, set_aside)

    monkeypatch.setattr(Ledger, "transaction", tracked)
    monkeypatch.setattr(Ledger, "sync", sync)
    monkeypatch.setattr(Pipeline, "cleanup", cleanup)
    try:
        names = []
        # Successes, a replay (refused), a job over budget (refused), then more successes.
        for jid, j in [("a", job("a")), ("b", job("b")), ("a-again", job("a")), ("big", job("big", epsilon=5.0)),
                       ("c", job("c")), ("bad", {"job_id": "bad"})]:
            drop(home, f"{jid}.json", j)
            spooled = sp.claim(home / "inbox", f"{jid}.json")
            names.append(spooled.name)
            pipe.process(spooled)
        pipe.flush_unsynced()
    finally:
        monkeypatch.undo()
        sp.release()
    assert sorted(removed) == sorted(names)
    assert not list(Path(_settings(home).spool).rglob("*.json"))


def _drop_last_wal_transaction(wal: Path) -> int:
    """A power cut that lost the last transaction in the WAL (its frames were never fsynced): cut the
    WAL file after the previous transaction's commit frame. Returns the frames dropped."""
    data = wal.read_bytes()
    page = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits, off, frames = [], 32, 0
    while off + 24 + page <= len(data) and data[off + 8:off + 16] == salts:
        frames += 1
        if struct.unpack(">I", data[off + 4:off + 8])[0]:  # the commit frame of a transaction
            commits.append((off + 24 + page, frames))
        off += 24 + page
    assert len(commits) >= 2, "the WAL holds fewer than two transactions"
    end, kept = commits[-2]
    with open(wal, "r+b") as fh:
        fh.truncate(end)
    return frames - kept


def test_a_power_cut_that_loses_the_commit_settles_once_charged_once(tmp_path: Path) -> None:
    """A real daemon, killed right after a job settled (its commit not fsynced), then the WAL's
    unsynced tail dropped as a power cut would: the ledger is back at the reservation, the artifact
    is out, the spool file is still there; the next start commits that job from its artifact,
    once, with its audit entry and its progress row, and runs the rest."""
    home = make_home(tmp_path / "h")
    s = _settings(home)
    for i in range(3):
        drop(home, f"p{i}.json", job(f"p{i}", epsilon=0.5, epochs=2, seed=i))
    first = run_once(home, timeout=120, PANDACEAD_CRASH_AT="settled", **FAST)
    assert first.returncode == -9, first.stderr.decode()[-2000:]
    # (Not opened before the cut: closing the last connection would checkpoint the WAL.)
    done = [f"p{i}" for i in range(3) if (home / "outbox" / f"p{i}.json").exists()]
    assert len(done) == 1
    jid = done[0]
    spooled = [p for p in Path(s.spool).rglob("*.json") if jid in p.name]
    assert spooled, "the settled job's spool file must stay until its commit is durable"
    art = (home / "outbox" / f"{jid}.json").read_bytes()
    env = (home / "outbox" / f"{jid}.dsse.json").read_bytes()
    for side in ("-shm",):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{s.ledger_path}{side}")
    assert _drop_last_wal_transaction(Path(f"{s.ledger_path}-wal")) >= 1
    led = ledger(home)
    try:  # exactly the state of a crash at artifact_published
        assert led.spend(jid)["state"] == "reserved"
        assert led.job(jid)["status"] == "running" and not [a for a in led.audit("alice") if a["event"] == "committed"]
    finally:
        led.close()
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    assert "recovered: its artifact was published before a crash" in second.stderr.decode()
    led = ledger(home)
    try:
        rows = {r["job_id"]: r for r in led.jobs()}
        assert sorted(rows) == ["p0", "p1", "p2"] and {r["status"] for r in rows.values()} == {"succeeded"}
        assert led.budget("alice").epsilon_spent == pytest.approx(1.5) and led.budget("alice").epsilon_reserved == 0
        assert len(led.spends("alice", state="committed")) == 3
        committed = [a["job_id"] for a in led.audit("alice") if a["event"] == "committed"]
        assert sorted(committed) == ["p0", "p1", "p2"]  # once each
        assert rows[jid]["progress"]["epoch"] == 2 and [h["epoch"] for h in rows[jid]["progress"]["history"]] == [1, 2]
    finally:
        led.close()
    # Not trained or published again: the buyer's artifact and its signature are the ones it had.
    assert (home / "outbox" / f"{jid}.json").read_bytes() == art
    assert (home / "outbox" / f"{jid}.dsse.json").read_bytes() == env
    assert not list(Path(s.spool).rglob("*.json")) and not list((home / "inbox").glob("*.json"))


def test_a_succeeded_job_whose_spool_file_waits_for_the_sync_is_not_queued(tmp_path: Path) -> None:
    """`jobs cancel` must not take a succeeded job for a queued one while its spool file waits."""
    from pandacead.cli import _queued_in_scope

    home = make_home(tmp_path / "h")
    sp, pipe = _pipeline(home)
    pipe.defer_sync = True
    try:
        drop(home, "q.json", job("q"))
        spooled = sp.claim(home / "inbox", "q.json")
        assert pipe.process(spooled).status == "succeeded" and spooled.exists()
        led = ledger(home)
        try:
            assert _queued_in_scope(_settings(home), "q", "") is True  # the file alone says queued
            assert _queued_in_scope(_settings(home), "q", "", led) is False  # the ledger says it ended
        finally:
            led.close()
        pipe.flush_unsynced()
    finally:
        sp.release()


def test_the_history_file_is_written_through(tmp_path: Path) -> None:
    """`jobs logs` reads a running job's history: every line is on file as soon as it is reported,
    before `close`; the first job of a home creates state/history/."""
    import json as _json

    from pandacead.jobs import Job
    from pandacead.pipeline import _History, history_path
    from pandacead.trainers import PrivacyPlan

    s = _settings(make_home(tmp_path / "h"))
    path = history_path(s, 41)
    if path.parent.exists():
        path.parent.rmdir()
    plan = PrivacyPlan(epsilon=1.0, delta=1e-5, noise_multiplier=None, sample_rate=0.1, steps=None,
                       accountant="declared", n_train=100)
    h = _History(s, 41, Job("hj", "alice"), "mock", plan)
    h.write({"type": "progress", "stage": "data_loaded"})
    assert [r.get("type") for r in map(_json.loads, path.read_text().splitlines())] == ["job", "progress"]
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    h.write({"type": "progress", "epoch": 1, "epochs": 1})
    assert len(path.read_text().splitlines()) == 3  # written through, before close
    h.close()
    h.close()  # twice is harmless
    h.write({"type": "progress", "epoch": 2})  # after close: dropped, no error
    assert _json.loads(path.read_text().splitlines()[-1])["epoch"] == 1
