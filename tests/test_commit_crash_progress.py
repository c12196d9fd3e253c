"""A mock job's durable commits: the reservation before training, then one commit that charges
the spend and writes the last progress row together (#20 item 5). A crash at every point around
them still settles each job once, with its progress row."""

from __future__ import annotations

import contextlib
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
        def counted(self):  # type: ignore[no-untyped-def]
            count[0] += 1
            with real(self) as conn:
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


@pytest.mark.parametrize("point", [p for p in POINTS if p in ("artifact_published", "committed")])
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
        crashed = [r for r in rows.values() if not r.get("progress")]
        # Only the job a crash interrupted before its commit (recovered from its artifact) lacks the row.
        assert len(crashed) <= (1 if point == "artifact_published" else 0), crashed
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
