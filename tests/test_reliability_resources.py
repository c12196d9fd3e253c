"""Resource faults: read-only or full outbox, a locked ledger, a missing or bad signing key.

The job fails cleanly or waits; nothing is charged twice; nothing is lost; the
daemon says clearly what is wrong. Real faults (tmpfs mounts, read-only
remounts, a second process holding the ledger's write lock) where the host
allows them, named fault points (PANDACEAD_FAIL_AT) everywhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DaemonProc, cli, drop, job, ledger, make_home, run_once, wait_for
from fuzz.invariants import check_settled_home, read_outbox, spool_files

from pandacead.faults import FAIL_POINTS

FAST = {"PANDACEAD_DAEMON__RETRY_SECONDS": "0.2", "PANDACEAD_DAEMON__RETRY_MAX_SECONDS": "1"}


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def can_mount(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)):
        pytest.skip("needs root and tmpfs mounts")
    subprocess.run(["umount", str(probe)], check=True)
    mounted: list[Path] = []
    yield mounted
    for m in reversed(mounted):
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def _tmpfs(path: Path, size: str, mounted: list[Path]) -> None:
    assert _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    mounted.append(path)


def _rows(home: Path) -> list[dict]:
    led = ledger(home)
    try:
        return led.jobs()
    finally:
        led.close()


def _settled(home: Path, n: int) -> bool:
    rows = _rows(home)
    return len([r for r in rows if r["status"] in ("succeeded", "rejected", "failed")]) == n and not spool_files(home)


# --------------------------------------------------------------------------- fault points, no privileges needed


@pytest.mark.parametrize("point", FAIL_POINTS)
def test_io_fault_at_each_point_then_recovery(tmp_path, point):
    home = make_home(tmp_path / "h")
    drop(home, "ok.json", job("ok"))
    drop(home, "bad.json", job("bad", epsilon=500))
    err = "ENOSPC" if point.startswith("publish") else "EIO"
    # Two tries in this run: the second run then still has an attempt left (max_attempts 3).
    first = run_once(home, timeout=120, PANDACEAD_FAIL_AT=f"{point}:{err}", PANDACEAD_DAEMON__ONCE_RETRIES="2", **FAST)
    log = first.stderr.decode()
    if point == "sync_outbox":
        # The artifact was out before the sync failed: the retry commits it, nothing is retrained.
        assert first.returncode == 0, log[-2000:]
    else:
        assert first.returncode == 1, log[-2000:]  # --once: files that could not be settled stay spooled
        assert "stay in the spool for the next start" in log
    led = ledger(home)
    try:
        b = led.budget("alice")
        assert b.epsilon_spent in (0, 1.0) and b.epsilon_spent + b.epsilon_reserved <= 1.0 + 1e-9
    finally:
        led.close()
    if point in ("publish_envelope", "publish_artifact"):
        assert "No space left on device" in log
        assert not (home / "outbox" / "ok.dsse.json").exists(), "a signature without its artifact was left"
        rows = {r["job_id"]: r for r in _rows(home)}
        assert rows["ok"]["status"] == "running" and rows["ok"]["error"].startswith("waiting: ")
        shown = json.loads(cli(home, "jobs", "show", "ok", "--json").stdout)
        assert "No space left on device" in shown["error"]
    second = run_once(home, timeout=120, **FAST)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    check_settled_home(home)
    assert read_outbox(home).outcomes == {"ok": "artifact", "bad": "error"}
    led = ledger(home)
    try:
        assert led.budget("alice").epsilon_spent == pytest.approx(1.0)
        ok = [r for r in led.jobs() if r["job_id"] == "ok"][0]
        if point in ("sync_outbox", "commit"):
            assert ok["attempts"] == 0, "a published artifact must be committed, not trained again"
    finally:
        led.close()


def test_publish_failing_every_time_ends_in_a_clear_failure_and_nothing_charged(tmp_path):
    home = make_home(tmp_path / "h")
    env = {**FAST, "PANDACEAD_DAEMON__MAX_ATTEMPTS": "2", "PANDACEAD_DAEMON__ONCE_RETRIES": "10"}
    drop(home, "f.json", job("f"))
    r = run_once(home, timeout=120, PANDACEAD_FAIL_AT="publish_artifact:EDQUOT", **env)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rep = json.loads((home / "outbox" / "f.error.json").read_text())
    assert rep["status"] == "failed" and "quota" in rep["error"].lower(), rep
    check_settled_home(home)
    led = ledger(home)
    try:
        assert led.budget("alice").epsilon_spent == 0 and led.spend("f")["state"] == "released"
    finally:
        led.close()


def test_ledger_locked_beyond_the_timeout_defers_and_never_releases_a_published_job(tmp_path, monkeypatch):
    """In process: commit and reserve fail with 'database is locked' once each."""
    from pandacead.app import App
    from pandacead.config import load_settings
    from pandacead.ledger import Ledger
    from pandacead.pipeline import Deferred, Pipeline
    from pandacead.spool import Spool

    home = make_home(tmp_path / "h")
    s = load_settings(home, environ={})
    app = App(s)
    sp = Spool(s.spool)
    sp.acquire()
    pipe = Pipeline(s, app.plugins, app.ctx, sp.owner, public_keys=app.public_keys, noise_key=app.noise_key)
    real_commit, real_reserve = Ledger.commit, Ledger.reserve
    calls = {"commit": 0, "reserve": 0}

    def locked(name, real):
        def f(self, *a, **kw):
            calls[name] += 1
            if calls[name] == 1:
                raise sqlite3.OperationalError("database is locked")
            return real(self, *a, **kw)
        return f

    monkeypatch.setattr(Ledger, "commit", locked("commit", real_commit))
    monkeypatch.setattr(Ledger, "reserve", locked("reserve", real_reserve))
    drop(home, "l.json", job("l"))
    spooled = sp.claim(home / "inbox", "l.json")
    with pytest.raises(Deferred, match="ledger"):
        pipe.process(spooled)  # reserve: locked
    assert pipe.ledger().spends() == [] and spooled.exists()
    with pytest.raises(Deferred, match="published but its spend could not be recorded"):
        pipe.process(spooled)  # commit: locked, with the artifact already out
    assert (home / "outbox" / "l.json").exists()
    assert pipe.ledger().spend("l")["state"] == "reserved", "a published job's reservation was released"
    out = pipe.process(spooled)
    assert out.status == "succeeded"
    assert pipe.ledger().spend("l")["state"] == "committed"
    sp.release()
    check_settled_home(home)


def test_ledger_held_exclusively_by_another_process_makes_jobs_wait_not_fail(tmp_path):
    home = make_home(tmp_path / "h")
    d = DaemonProc(home, **FAST)
    try:
        wait_for(lambda: " started: " in d.output(), timeout=60)
        holder = subprocess.Popen(
            [sys.executable, "-c", (
                "import sqlite3, sys, time\n"
                f"c = sqlite3.connect({str(home / 'state' / 'ledger.db')!r}, isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(5)\n"
                "c.execute('ROLLBACK')\n"
            )], stdout=subprocess.PIPE,
        )
        assert holder.stdout.readline().strip() == b"locked"
        t0 = time.monotonic()
        for i in range(4):
            drop(home, f"w{i}.json", job(f"w{i}", epsilon=0.5, seed=i))
        drop(home, "wbad.json", b"{")
        shown = cli(home, "budget", "show", "alice", "--json")  # readers are not blocked (WAL)
        assert shown.returncode == 0, shown.stderr.decode()
        wait_for(lambda: _settled(home, 5), timeout=90, interval=0.2)
        waited = time.monotonic() - t0
        assert holder.wait(timeout=30) == 0
        assert waited >= 3, "the jobs did not wait for the lock"
        assert d.proc.poll() is None
    finally:
        d.stop()
    check_settled_home(home)
    assert read_outbox(home).outcomes == {**{f"w{i}": "artifact" for i in range(4)}, "wbad": "error"}


# --------------------------------------------------------------------------- real mounts (root)


def test_read_only_outbox_makes_jobs_wait_then_all_are_published(tmp_path, can_mount):
    home = make_home(tmp_path / "h", workers=2, extra="\n[trainer.options]\nmock_delay = 0.5\n")
    _tmpfs(home / "outbox", "8m", can_mount)
    d = DaemonProc(home, **FAST)
    try:
        wait_for(lambda: " started: " in d.output(), timeout=60)
        drop(home, "in-flight.json", job("in-flight", seed=1))
        wait_for(lambda: "job in-flight reserved" in d.output(), timeout=30)
        assert _mount("-o", "remount,ro", str(home / "outbox"))  # mid-training
        for i in range(3):
            drop(home, f"ro{i}.json", job(f"ro{i}", seed=10 + i))
        drop(home, "robad.json", b"not json")
        wait_for(lambda: "read-only filesystem: not taking new jobs" in d.output(), timeout=30)
        time.sleep(2)
        assert len(list((home / "inbox").glob("ro*.json"))) == 4, "jobs were taken while the outbox was read-only"
        assert "Read-only file system" in d.output()  # the in-flight job could not publish: it waits
        row = {r["job_id"]: r for r in _rows(home)}["in-flight"]
        assert row["status"] == "running" and "read-only" in (row["error"] or "").lower()
        led = ledger(home)
        assert led.spend("in-flight")["state"] == "reserved"
        led.close()
        assert _mount("-o", "remount,rw", str(home / "outbox"))
        wait_for(lambda: _settled(home, 5), timeout=90, interval=0.2)
        assert "the outbox is usable again" in d.output()
    finally:
        assert d.stop() == 0
    check_settled_home(home)
    assert read_outbox(home).outcomes == {"in-flight": "artifact", "ro0": "artifact", "ro1": "artifact",
                                          "ro2": "artifact", "robad": "error"}
    led = ledger(home)
    try:
        assert led.budget("alice").epsilon_spent == pytest.approx(4.0)
        assert {r["job_id"]: r["attempts"] for r in led.jobs()}["in-flight"] <= 1
    finally:
        led.close()


def test_full_outbox_makes_jobs_wait_then_all_are_published(tmp_path, can_mount):
    home = make_home(tmp_path / "h")
    _tmpfs(home / "outbox", "2m", can_mount)
    filler = home / "outbox" / ".filler"
    with open(filler, "wb") as fh:  # leave less than the 1 MiB the daemon wants free
        fh.write(b"\0" * (1024 * 1024 + 512 * 1024))
    d = DaemonProc(home, **FAST)
    try:
        wait_for(lambda: " started: " in d.output(), timeout=60)
        for i in range(3):
            drop(home, f"full{i}.json", job(f"full{i}", seed=i))
        wait_for(lambda: "is full" in d.output(), timeout=30)
        time.sleep(1)
        assert len(list((home / "inbox").glob("full*.json"))) == 3
        filler.unlink()
        wait_for(lambda: _settled(home, 3), timeout=90, interval=0.2)
    finally:
        assert d.stop() == 0
    check_settled_home(home)
    assert read_outbox(home).outcomes == {f"full{i}": "artifact" for i in range(3)}


def test_disk_full_between_the_writes_fails_cleanly_once_space_returns(tmp_path, can_mount):
    """No free-space margin configured: the real ENOSPC hits the publish itself."""
    home = make_home(tmp_path / "h")
    _tmpfs(home / "outbox", "512k", can_mount)
    filler = home / "outbox" / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    os.close(fd)
    env = {**FAST, "PANDACEAD_DAEMON__OUTBOX_MIN_FREE_BYTES": "0", "PANDACEAD_DAEMON__MAX_ATTEMPTS": "2"}
    d = DaemonProc(home, **env)
    try:
        wait_for(lambda: " started: " in d.output(), timeout=60)
        drop(home, "enospc.json", job("enospc"))
        drop(home, "enospc-bad.json", job("enospc-bad", epsilon=500))
        wait_for(lambda: d.output().count("No space left on device") >= 3, timeout=60)
        assert not list((home / "outbox").glob("*.json")), "something was half-published"
        led = ledger(home)
        assert led.budget("alice").epsilon_spent == 0
        led.close()
        filler.unlink()
        wait_for(lambda: _settled(home, 2), timeout=90, interval=0.2)
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    check_settled_home(home)
    rep = json.loads((home / "outbox" / "enospc.error.json").read_text())
    assert rep["status"] == "failed" and "No space left on device" in rep["error"], rep
    assert json.loads((home / "outbox" / "enospc-bad.error.json").read_text())["status"] == "rejected"
    led = ledger(home)
    try:
        assert led.budget("alice").epsilon_spent == 0 and led.budget("alice").epsilon_reserved == 0
    finally:
        led.close()


def test_inbox_on_another_filesystem_is_reported_and_nothing_is_lost(tmp_path, can_mount):
    home = make_home(tmp_path / "h")
    _tmpfs(home / "inbox", "1m", can_mount)
    drop(home, "x.json", job("x"))
    d = DaemonProc(home, **FAST)
    try:
        wait_for(lambda: "must be on one filesystem" in d.output(), timeout=60)
        assert (home / "inbox" / "x.json").exists()
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_outbox_removed_while_running_makes_jobs_wait(tmp_path):
    home = make_home(tmp_path / "h")
    d = DaemonProc(home, **FAST)
    try:
        wait_for(lambda: " started: " in d.output(), timeout=60)
        os.rename(home / "outbox", home / "outbox.away")
        drop(home, "gone.json", job("gone"))
        wait_for(lambda: "is unusable: No such file or directory" in d.output(), timeout=30)
        assert (home / "inbox" / "gone.json").exists()
        os.rename(home / "outbox.away", home / "outbox")
        wait_for(lambda: _settled(home, 1), timeout=60, interval=0.2)
    finally:
        assert d.stop() == 0
    check_settled_home(home)
    assert read_outbox(home).outcomes == {"gone": "artifact"}


# --------------------------------------------------------------------------- the signing key


@pytest.mark.parametrize("damage, needle", [
    (lambda k: k.unlink(), "does not exist; run `pandacead init`"),
    (lambda k: os.chmod(k, 0o640), "readable by others"),
    (lambda k: os.chmod(k, 0o604), "readable by others"),
    (lambda k: k.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "not a PEM private key"),
    (lambda k: (k.unlink(), os.symlink("/etc/hostname", k)), "cannot be opened"),
    (lambda k: (k.unlink(), k.mkdir()), "not a regular file"),
])
def test_a_missing_or_bad_key_stops_the_daemon_with_one_sentence_and_loses_nothing(tmp_path, damage, needle):
    home = make_home(tmp_path / "h")
    key = home / "state" / "keys" / "ed25519.pem"
    good = key.read_bytes()
    drop(home, "k.json", job("k"))
    damage(key)
    r = run_once(home, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert needle in err, err[-1000:]
    assert "Traceback" not in err
    assert (home / "inbox" / "k.json").exists() and not spool_files(home)
    if key.is_dir() and not key.is_symlink():
        key.rmdir()
    elif os.path.lexists(key):
        key.unlink()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, good)
    os.close(fd)
    r = run_once(home, timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    check_settled_home(home)
    assert read_outbox(home).outcomes == {"k": "artifact"}
