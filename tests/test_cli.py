"""The CLI as a user sees it: human tables, --json, one-sentence errors, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli, drop, env_for, job, run_once


def test_help_imports_no_heavy_library():
    code = "import sys; from pandacead.cli import cli; print(','.join(m for m in ('torch','opacus','syft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    r = subprocess.run([sys.executable, "-m", "pandacead.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for command in ("init", "run", "submit", "train", "budget", "jobs", "verify", "plugins"):
        assert command in r.stdout


def test_budget_show_human_and_json(home):
    assert cli(home, "budget", "set", "alice", "4", "--delta", "1e-4", "--create").returncode == 0
    drop(home, "a.json", job("a", epsilon=1.5))
    run_once(home)
    human = cli(home, "budget", "show").stdout.decode()
    assert "USER" in human.splitlines()[0] and "alice" in human and "2.5" in human
    one = json.loads(cli(home, "budget", "show", "alice", "--json").stdout)
    assert {"user_id", "epsilon_budget", "epsilon_spent", "epsilon_reserved", "epsilon_remaining",
            "delta_budget", "delta_spent"} <= set(one)
    assert one["epsilon_remaining"] == pytest.approx(2.5) and one["delta_budget"] == 1e-4
    everyone = json.loads(cli(home, "budget", "show", "--json").stdout)
    assert isinstance(everyone, list) and everyone[0]["user_id"] == "alice"
    unknown = json.loads(cli(home, "budget", "show", "newcomer", "--json").stdout)
    assert unknown["epsilon_budget"] == 10.0 and unknown["known"] is False


def test_budget_reset_and_history_are_audited(home):
    drop(home, "a.json", job("a"))
    run_once(home)
    assert cli(home, "budget", "reset", "alice", "--yes").returncode == 0
    assert json.loads(cli(home, "budget", "show", "alice", "--json").stdout)["epsilon_spent"] == 0
    hist = json.loads(cli(home, "budget", "history", "alice", "--json").stdout)
    assert [s["job_id"] for s in hist["spends"]] == ["a"]
    assert [a["event"] for a in hist["audit"]] == ["user_created", "reserved", "committed", "budget_reset"]
    assert "budget_reset" in cli(home, "budget", "history", "alice").stdout.decode()


def test_jobs_list_and_show(home):
    drop(home, "a.json", job("a"))
    drop(home, "b.json", job("b", epsilon=50))
    run_once(home)
    rows = json.loads(cli(home, "jobs", "list", "--json").stdout)
    assert {r["job_id"]: r["status"] for r in rows} == {"a": "succeeded", "b": "rejected"}
    a = json.loads(cli(home, "jobs", "show", "a", "--json").stdout)
    assert a["status"] == "succeeded" and a["backend"] == "mock" and a["epsilon"] == 1.0
    assert a["progress"]["epoch"] == a["progress"]["epochs"]
    assert "succeeded" in cli(home, "jobs", "show", "a").stdout.decode()
    drop(home, "c.json", job("c"))
    assert json.loads(cli(home, "jobs", "show", "c", "--json").stdout)["status"] == "queued"


def test_errors_are_one_sentence_and_nonzero(tmp_path):
    r = cli(tmp_path, "budget", "show", "--home", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1 and "pandacead init" in r.stderr.decode()
    r = cli(tmp_path, "jobs", "show", "nope", "--home", str(tmp_path / "nowhere"))
    assert r.returncode == 1


def test_budget_set_refuses_bad_values(home):
    r = cli(home, "budget", "set", "alice", "-1")
    assert r.returncode != 0
    r = cli(home, "budget", "set", "alice", "nan")
    assert r.returncode == 1 and "finite" in r.stderr.decode()
    r = cli(home, "budget", "set", "../x", "1")
    assert r.returncode != 0


def test_train_prints_the_artifact_and_charges_the_same_ledger(home):
    seed_job = json.dumps({"job_id": "seed-1", "dp": {"epsilon": 1.0}}).encode()
    r = cli(home, "train", "--user-id", "user_456", "--mock", input=seed_job)
    assert r.returncode == 0, r.stderr.decode()
    art = json.loads(r.stdout)
    assert art["job_id"] == "seed-1" and art["user_id"] == "user_456" and art["backend"] == "mock"
    assert (home / "outbox" / "seed-1.json").exists()
    b = json.loads(cli(home, "budget", "show", "user_456", "--json").stdout)
    assert b["epsilon_spent"] == pytest.approx(1.0)
    again = cli(home, "train", "--user-id", "user_456", "--mock", input=seed_job)
    assert again.returncode == 1 and "already submitted" in again.stderr.decode()


def test_submit_validates_and_waits_for_the_outcome(home, daemon_factory):
    (home / "bad.json").write_text('{"job_id": "x", "dp": {"epsilon": -2}}')
    r = cli(home, "submit", str(home / "bad.json"))
    assert r.returncode == 1 and "dp.epsilon" in r.stderr.decode()
    (home / "good.json").write_text(json.dumps(job("good")))
    d = daemon_factory(home)
    r = cli(home, "submit", str(home / "good.json"), "--wait", "--timeout", "60", env=env_for(home))
    assert r.returncode == 0, r.stderr.decode() + d.output()
    assert "good succeeded" in r.stdout.decode()
    d.stop()


def test_plugins_json_lists_builtins_and_trainers(home):
    rows = json.loads(cli(home, "plugins", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["mock"]["trainers"] == ["mock"] and by_name["mock"]["dist"] == "pandacead"
    assert "pandacead_register_trainers" in by_name["mock"]["hooks"]
    assert "crash" in by_name["faulty_trainers"]["trainers"]
