"""Jobs you can follow: submit --wait's progress bar on a real terminal, jobs list/show/logs, jobs cancel."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, drop, env_for, job, ledger, make_home, outcomes, run_once, wait_for


def _opacus_job(job_id: str, epochs: int = 12, **kw) -> dict:
    return job(job_id, epsilon=3.0, epochs=epochs, batch_size=16, learning_rate=0.1, backend="opacus",
               model={"type": "mlp", "hidden": [32]}, **kw)


def _in_pty(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal; return its exit code and what it drew."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=30)
    os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.opacus
def test_a_quoted_opacus_job_followed_on_a_terminal_then_a_running_one_cancelled(tmp_path, daemon_factory):
    """One opacus daemon for the three checks that need real DP-SGD (each worker start imports torch)."""
    pytest.importorskip("opacus")
    home = make_home(tmp_path / "h", backend="opacus")
    j = _opacus_job("bar-1", epochs=30)  # ~2 s of training on an idle core: several progress rows
    (home / "bar.json").write_text(json.dumps(j))
    quote = json.loads(cli(home, "quote", str(home / "bar.json"), "--json").stdout)
    assert quote["backend"] == "opacus" and quote["noise_multiplier"] > 0 and quote["steps"] > 0
    (home / "bar.json").write_text(json.dumps({**j, "quote": quote["quote"]}))
    d = daemon_factory(home)
    # 1. submit --wait under a pseudo-terminal draws the progress bar
    rc, screen = _in_pty([sys.executable, "-m", "pandacead.cli", "submit", str(home / "bar.json"), "--wait",
                          "--timeout", "200"], env_for(home, COLUMNS="100"), home)
    assert rc == 0, screen + d.output()
    frames = [f for f in screen.split("\r") if "epoch" in f]
    assert frames, screen
    assert any("[" in f and "#" in f and " elapsed" in f and "ETA" in f and "loss" in f and "ε" in f for f in frames)
    assert "bar-1 succeeded: ε=" in screen and "backend=opacus" in screen
    # 2. the quote is what the daemon reserved
    spend = ledger(home).spend("bar-1")
    assert (spend["epsilon_reserved"], spend["noise_multiplier"], spend["sample_rate"], spend["steps"]) == (
        quote["epsilon"], quote["noise_multiplier"], quote["sample_rate"], quote["steps"])
    logs = cli(home, "jobs", "logs", "bar-1").stdout.decode().splitlines()
    assert logs[0].startswith("bar-1: opacus on synthetic, 30 epochs") and logs[1].split()[:3] == ["EPOCH", "OF", "LOSS"]
    assert len([ln for ln in logs if ln.split()[1:2] == ["30"]]) == 30
    # 3. jobs cancel stops a running opacus job, which is charged its reservation
    drop(home, "long.json", _opacus_job("long", epochs=400))
    wait_for(lambda: (ledger(home).job("long") or {}).get("progress"), timeout=200)
    out = json.loads(cli(home, "jobs", "cancel", "long", "--wait", "60", "--json").stdout)
    assert out["status"] == "failed" and out["charged"] is True and "cancelled while training" in out["error"]
    spend = ledger(home).spend("long")
    assert spend["state"] == "committed" and spend["epsilon"] == spend["epsilon_reserved"]
    rep = json.loads((home / "outbox" / "long.error.json").read_text())
    assert rep["status"] == "failed" and not (home / "outbox" / "long.json").exists()
    assert d.stop() == 0


def test_jobs_cancel_a_queued_job_reports_it_and_charges_nothing(home):
    drop(home, "q.json", job("q"))
    r = cli(home, "jobs", "cancel", "q")
    assert r.returncode == 0 and r.stdout.decode().startswith("cancelled queued job q: nothing was charged; report ")
    rep = json.loads((home / "outbox" / "q.error.json").read_text())
    assert rep["status"] == "rejected" and "cancelled before it started" in rep["error"]
    assert not list((home / "inbox").glob("*.json")) and ledger(home).spends("alice") == []
    again = cli(home, "jobs", "cancel", "q")
    assert again.returncode == 1 and "already rejected; there is nothing to cancel" in again.stderr.decode()
    # a queued job the daemon already claimed finds the request before it plans
    (home / "state" / "cancel").mkdir(exist_ok=True)
    (home / "state" / "cancel" / "late").write_text("{}")
    drop(home, "late.json", job("late"))
    run_once(home)
    assert outcomes(home)["late"] == "error" and ledger(home).spend("late") is None


def test_jobs_cancel_stops_a_hanging_worker_and_the_daemon_goes_on(tmp_path, daemon_factory):
    home = make_home(tmp_path / "h")
    d = daemon_factory(home)
    drop(home, "hung.json", job("hung", backend="hang"))
    wait_for(lambda: (ledger(home).job("hung") or {}).get("status") == "running", timeout=60)
    shown = json.loads(cli(home, "jobs", "show", "hung", "--json").stdout)
    assert shown["status"] == "running" and shown["epsilon_is"] == "reserved" and shown["elapsed_seconds"] >= 0
    assert "   epsilon: 1 (reserved)" in cli(home, "jobs", "show", "hung").stdout.decode().splitlines()
    r = cli(home, "jobs", "cancel", "hung", "--wait", "30")
    assert r.returncode == 0, r.stderr.decode() + d.output()
    assert r.stdout.decode().startswith("hung failed: Job hung was cancelled while training") and "(charged ε=1)" in r.stdout.decode()
    assert ledger(home).budget("alice").epsilon_spent == pytest.approx(1.0)
    assert not (home / "state" / "cancel" / "hung").exists()
    done = cli(home, "jobs", "cancel", "hung")
    assert done.returncode == 1 and "already failed" in done.stderr.decode()
    drop(home, "next.json", job("next"))
    wait_for(lambda: (home / "outbox" / "next.json").exists(), timeout=60)
    assert d.stop() == 0


def test_jobs_list_filters_and_fits_80_columns(home):
    drop(home, "a.json", job("a"))
    drop(home, "b.json", job("b", user_id="bob", epsilon=50))
    drop(home, "a-replay.json", job("a"))
    run_once(home)
    out = cli(home, "jobs", "list").stdout.decode()
    assert max(len(line) for line in out.splitlines()) <= 80
    lines = out.splitlines()
    assert lines[0].split() == ["JOB", "ACCOUNT", "STATUS", "BACKEND", "ε", "UPDATED", "DATASET", "/", "ERROR"]
    assert any(line.endswith("…") for line in lines[2:])  # a long error is shortened
    full = json.loads(cli(home, "jobs", "list", "--json").stdout)
    assert all(not (r.get("error") or "").endswith("…") for r in full)
    rej = json.loads(cli(home, "jobs", "list", "--status", "rejected", "--json").stdout)
    assert {r["job_id"] for r in rej} == {"a", "b"} and all(r["status"] == "rejected" for r in rej)
    assert {r["job_id"] for r in json.loads(cli(home, "jobs", "list", "--account", "bob", "--json").stdout)} == {"b"}
    assert [r["job_id"] for r in json.loads(cli(home, "jobs", "list", "--dataset", "synthetic", "--json").stdout)] == ["a"]
    assert json.loads(cli(home, "jobs", "list", "--since", "2099-01-01", "--json").stdout) == []
    assert len(json.loads(cli(home, "jobs", "list", "--since", "1h", "--limit", "2", "--json").stdout)) == 2
    bad = cli(home, "jobs", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "neither a date" in bad.stderr.decode()


def test_jobs_show_says_which_epsilon_and_notes_a_refused_replay(home):
    drop(home, "a.json", job("a", epsilon=1.5))
    run_once(home)
    drop(home, "a2.json", job("a", epsilon=1.5))
    run_once(home)
    show = cli(home, "jobs", "show", "a").stdout.decode().splitlines()
    assert "    status: succeeded" in show and "   epsilon: 1.5 (charged)" in show
    assert "   dataset: synthetic" in show and any(ln.startswith("   metrics: accuracy=") for ln in show)
    assert any(ln.startswith("  artifact: ") and ln.endswith("outbox/a.json") for ln in show)
    assert any(ln.startswith("      note: a refused replay of this job_id at ") and ln.endswith("report a.error.json")
               for ln in show)
    j = json.loads(cli(home, "jobs", "show", "a", "--json").stdout)
    assert j["epsilon_is"] == "charged" and j["duration_seconds"] >= 0 and j["other_submissions"][0]["status"] == "rejected"


def test_submit_wait_never_takes_an_earlier_outcome_for_this_one(tmp_path, daemon_factory):
    home = make_home(tmp_path / "h")
    drop(home, "a.json", job("a"))
    drop(home, "r.json", job("r", epsilon=90))
    run_once(home)
    assert outcomes(home) == {"a": "artifact", "r": "error"}
    d = daemon_factory(home)
    (home / "c.json").write_text(json.dumps(job("c")))
    quiet = cli(home, "submit", str(home / "c.json"), "--wait", "--timeout", "60")  # not a terminal: no bar
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout.decode().count("\n") == 1
    assert quiet.stdout.decode().startswith("c succeeded: ε=1 accuracy=")
    (home / "a.json").write_text(json.dumps(job("a")))
    again = cli(home, "submit", str(home / "a.json"), "--wait", "--timeout", "60")
    # the replay is refused; the earlier artifact beside it is not this submission's outcome
    assert again.returncode == 1 and again.stdout == b"", again.stdout
    assert "already submitted" in again.stderr.decode() and "a.error.json" in again.stderr.decode()
    (home / "r.json").write_text(json.dumps(job("r", epsilon=90)))
    r = cli(home, "submit", str(home / "r.json"), "--wait", "--timeout", "60", "--json", "--no-check")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["path"].endswith("r~1.error.json") and out["status"] == "rejected"
    assert d.stop() == 0


def test_submit_wait_without_access_to_the_ledger_watches_the_outbox(tmp_path, daemon_factory, monkeypatch):
    # A producer on a systemd host cannot read state/ (0700): --wait falls back to the outbox.
    from click.testing import CliRunner

    import pandacead.cli as cli_mod

    home = make_home(tmp_path / "h")
    drop(home, "old.json", job("old", epsilon=90))
    run_once(home)  # an earlier report for the same job_id, older than this submission
    monkeypatch.setattr(cli_mod, "_last_job_row", lambda s: None)
    d = daemon_factory(home)
    (home / "ok.json").write_text(json.dumps(job("ok")))
    r = CliRunner().invoke(cli_mod.cli, ["submit", str(home / "ok.json"), "--wait", "--timeout", "60", "--home", str(home)])
    assert r.exit_code == 0 and r.output.startswith("ok succeeded: ε=1 "), r.output
    (home / "old.json").write_text(json.dumps(job("old", epsilon=90)))
    r = CliRunner().invoke(cli_mod.cli, ["submit", str(home / "old.json"), "--wait", "--timeout", "60", "--home", str(home),
                                         "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["path"].endswith("old~1.error.json"), r.output
    assert d.stop() == 0


def test_progress_line_renders_as_a_user_sees_it():
    from pandacead.cli import progress_line
    from pandacead.report import parse_time

    start = "2026-12-01T09:00:00.000000Z"
    t0 = parse_time(start)
    row = {"job_id": "j", "status": "running", "created_at": start,
           "progress": {"epoch": 3, "epochs": 10, "loss": 0.41234567, "epsilon": 0.5}}
    assert progress_line(row, t0 + 30, 80) == (
        "[######--------------] epoch 3/10  loss 0.412346  ε 0.5  0:30 elapsed  ETA 1:10")
    narrow = progress_line(row, t0 + 30, 60)
    assert len(narrow) <= 59 and narrow.startswith("[###-------] epoch 3/10")
    assert progress_line({**row, "progress": None}, t0 + 5, 80) == "j: training  0:05 elapsed"
    assert progress_line({**row, "status": "succeeded"}, t0 + 5, 80) == "j: succeeded"
