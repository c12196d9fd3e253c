"""Per-epoch log lines: at INFO at most once per `daemon.progress_log_seconds`; a short job logs none
(#20 round five: a mock job wrote nine INFO lines, two of them for its two epochs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import drop, job, make_home

from pandacead.app import App
from pandacead.config import load_settings
from pandacead.pipeline import Pipeline, history_path
from pandacead.spool import Spool


def _run(home: Path, caplog: pytest.LogCaptureFixture, throttle: float, epochs: int) -> list[logging.LogRecord]:
    s = load_settings(home, environ={})
    s.daemon["progress_log_seconds"] = throttle
    app = App(s)
    spool = Spool(s.spool)
    spool.acquire()
    try:
        pl = Pipeline(s, app.plugins, app.ctx, spool.owner, public_keys=app.public_keys, noise_key=app.noise_key)
        jid = f"pl-{throttle:g}-{epochs}".replace(".", "_")
        drop(home, f"{jid}.json", job(jid, epsilon=0.1, epochs=epochs))
        spooled = spool.claim(s.inbox, f"{jid}.json")
        assert spooled is not None
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pandacead"):
            out = pl.process(spooled)
        assert out.status == "succeeded"
        row = pl.ledger().query("SELECT id, progress FROM jobs WHERE job_id = ?", [jid])[0]
        history = [json.loads(x) for x in history_path(s, row["id"]).read_text().splitlines()]
        assert [r["epoch"] for r in history if r.get("epoch")] == list(range(1, epochs + 1))  # all on file
        assert len(json.loads(row["progress"])["history"]) == epochs  # and in the final progress row
        return [r for r in caplog.records if "progress: epoch" in r.getMessage()]
    finally:
        spool.release()


def test_a_short_job_logs_its_epochs_at_debug_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = make_home(tmp_path / "h")
    lines = _run(home, caplog, throttle=10.0, epochs=3)
    assert [r.levelno for r in lines] == [logging.DEBUG] * 3
    assert any("trained" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_with_no_throttle_every_epoch_is_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = make_home(tmp_path / "h")
    lines = _run(home, caplog, throttle=0.0, epochs=3)
    assert [r.levelno for r in lines] == [logging.INFO] * 3
    assert [getattr(r, "epoch", None) for r in lines] == [1, 2, 3]  # the JSON fields are there
