"""A backlog in the inbox is claimed from one scan, not one full rescan per claim (item 2 of #20)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import drop, job, make_home, outcomes

from pandacead import daemon as daemon_mod
from pandacead.config import load_settings


def test_a_backlog_drains_with_a_bounded_number_of_inbox_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(tmp_path / "h")
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace("rescan_interval = 0.2", "rescan_interval = 60"))
    n = 40
    old = time.time() - 60  # a backlog: files that waited while no daemon ran (past the settle time)
    for i in range(n):
        drop(home, f"b-{i:03d}.json", job(f"b-{i:03d}", epsilon=0.1))
        os.utime(home / "inbox" / f"b-{i:03d}.json", (old, old))
    scans: list[int] = []
    real_scan = daemon_mod.scan

    def counting_scan(inbox: Path):  # type: ignore[no-untyped-def]
        entries = real_scan(inbox)
        scans.append(len(entries))
        return entries

    monkeypatch.setattr(daemon_mod, "scan", counting_scan)
    d = daemon_mod.Daemon(load_settings(home, environ={}), once=True)
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(d.run()))  # not the main thread: no signal handlers
    t.start()
    t.join(timeout=240)
    assert not t.is_alive() and rc == [0]
    assert sorted(outcomes(home)) == [f"b-{i:03d}" for i in range(n)]
    assert set(outcomes(home).values()) == {"artifact"}
    # One scan finds the backlog; a few more at most (settling, the final idle check) — not one per job.
    assert len(scans) <= 6, scans
    assert not list((home / "inbox").glob("*.json"))
