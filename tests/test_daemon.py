"""End to end: real daemon processes on temporary homes turning job files into outcomes."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from conftest import cli, drop, job, ledger, make_home, outcomes, run_once, wait_for
from jsonschema import Draft202012Validator

from pandacead.schemas import load_schema

ARTIFACT_SCHEMA = Draft202012Validator(load_schema("artifact"))


def read(home: Path, name: str) -> dict:
    return json.loads((home / "outbox" / name).read_text())


def test_many_jobs_for_several_users_end_as_verified_artifacts(home):
    users = ["alice", "bob", "carol"]
    for i in range(24):
        drop(home, f"job-{i}.json", job(f"job-{i}", users[i % 3], epsilon=0.5))
    r = run_once(home)
    assert r.returncode == 0, r.stderr.decode()
    got = outcomes(home)
    assert got == {f"job-{i}": "artifact" for i in range(24)}
    for i in range(24):
        art = read(home, f"job-{i}.json")
        assert not list(ARTIFACT_SCHEMA.iter_errors(art))
        assert art["backend"] == "mock" and art["model_format"] == "safetensors"
        assert art["user_id"] == users[i % 3]
        v = cli(home, "verify", str(home / "outbox" / f"job-{i}.json"))
        assert v.returncode == 0, v.stderr.decode()
    for u in users:
        b = json.loads(cli(home, "budget", "show", u, "--json").stdout)
        spent = sum(read(home, f"job-{i}.json")["epsilon"] for i in range(24) if users[i % 3] == u)
        assert b["epsilon_spent"] == pytest.approx(spent) == pytest.approx(4.0)
        assert b["epsilon_reserved"] == 0 and b["epsilon_remaining"] == pytest.approx(6.0)
    assert not list((home / "inbox").glob("*.json"))
    assert not [p for p in (home / "state" / "spool").rglob("*") if p.is_file() and p.name != ".lock"]


def test_model_is_safetensors_and_loads(home):
    from safetensors.numpy import load

    drop(home, "m.json", job("m"))
    run_once(home)
    tensors = load(base64.b64decode(read(home, "m.json")["model"]))
    assert tensors["weight"].shape == (1, 10)


def test_user_whose_budget_fits_two_jobs_gets_exactly_two(home):
    assert cli(home, "budget", "set", "dave", "2.5").returncode == 0
    for i in range(5):
        drop(home, f"d{i}.json", job(f"d{i}", "dave", epsilon=1.0))
    run_once(home)
    got = outcomes(home)
    assert sorted(got.values()).count("artifact") == 2 and sorted(got.values()).count("error") == 3
    for jid, kind in got.items():
        if kind == "error":
            rep = read(home, f"{jid}.error.json")
            assert rep["status"] == "rejected" and "dave" in rep["error"] and "ε" in rep["error"]
    b = json.loads(cli(home, "budget", "show", "dave", "--json").stdout)
    assert b["epsilon_spent"] == pytest.approx(2.0) and b["epsilon_reserved"] == 0


def test_replayed_job_id_is_rejected_and_not_charged(home):
    drop(home, "r.json", job("r"))
    run_once(home)
    art_before = (home / "outbox" / "r.json").read_bytes()
    drop(home, "r-again.json", job("r"))
    run_once(home)
    rep = read(home, "r.error.json")
    assert rep["status"] == "rejected" and "already submitted" in rep["error"]
    assert (home / "outbox" / "r.json").read_bytes() == art_before
    b = json.loads(cli(home, "budget", "show", "alice", "--json").stdout)
    assert b["epsilon_spent"] == pytest.approx(1.0)


@pytest.mark.parametrize("content, needle", [
    (b"{not json", "not valid JSON"),
    (b'{"job_id": "x1", "user_id": "u", "dp": {"epsilon": NaN}}', "NaN"),
    (json.dumps(job("neg", epsilon=-1)).encode(), "dp.epsilon"),
    (json.dumps({**job("dis"), "dp": {"enabled": False}}).encode(), "disabled"),
    (json.dumps(job("unk", backend="quantum")).encode(), "quantum"),
    (json.dumps(job("nods", dataset="nosuch")).encode(), "nosuch"),
    (json.dumps(job("bigd", dp={"epsilon": 1.0, "delta": 0.009})).encode(), "1/n"),
])
def test_bad_job_gets_named_error_report_and_charges_nothing(home, content, needle):
    drop(home, "bad.json", content)
    drop(home, "good.json", job("good"))
    run_once(home)
    got = outcomes(home)
    assert got.pop("good") == "artifact"
    (name, kind), = got.items()
    assert kind == "error"
    rep = read(home, f"{name}.error.json")
    assert rep["status"] == "rejected" and rep["details"]
    assert needle in rep["error"] + " ".join(rep["details"])
    assert json.loads(cli(home, "budget", "show", "alice", "--json").stdout)["epsilon_spent"] == pytest.approx(1.0)


def test_special_files_are_never_opened_and_get_reports(home, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(job("stolen")))
    os.symlink(secret, home / "inbox" / "link.json")
    os.mkfifo(home / "inbox" / "pipe.json")
    (home / "inbox" / "dir.json").mkdir()
    (home / "inbox" / "huge.json").write_bytes(b" " * (2 * 1024 * 1024))
    (home / "inbox" / ".hidden.json").write_text(json.dumps(job("hidden")))
    (home / "inbox" / "notes.txt").write_text("ignore me")
    drop(home, "ok.json", job("ok"))
    r = run_once(home, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    got = outcomes(home)
    assert got == {"ok": "artifact", "link": "error", "pipe": "error", "dir": "error", "huge": "error"}
    assert "symlink" in read(home, "link.error.json")["error"]
    assert "fifo" in read(home, "pipe.error.json")["error"]
    assert "over the" in read(home, "huge.error.json")["error"]
    assert secret.exists() and "stolen" not in got
    assert (home / "inbox" / ".hidden.json").exists() and (home / "inbox" / "notes.txt").exists()


def test_two_daemons_on_one_home_never_overspend_or_double_process(tmp_path, daemon_factory):
    home = make_home(tmp_path / "h", workers=2)
    cli(home, "budget", "set", "eve", "7")
    d1, d2 = daemon_factory(home), daemon_factory(home)
    time.sleep(1.0)
    for i in range(40):
        drop(home, f"e{i}.json", job(f"e{i}", "eve", epsilon=0.5))
    wait_for(lambda: len(outcomes(home)) == 40, timeout=120)
    assert d1.stop() == 0 and d2.stop() == 0
    got = outcomes(home)
    assert list(got.values()).count("artifact") == 14 and list(got.values()).count("error") == 26
    led = ledger(home)
    assert led.budget("eve").epsilon_spent == pytest.approx(7.0)
    assert len(led.spends("eve", "committed")) == 14
    files = [r["file"] for r in led.jobs()]
    assert len(files) == len(set(files)) == 40
    logs = d1.output() + d2.output()
    assert sum(logs.count(f"claimed e{i}.json") for i in range(40)) == 40


def test_daemon_picks_up_files_while_running_and_stops_on_sigterm(home, daemon_factory):
    d = daemon_factory(home)
    time.sleep(0.5)
    with open(home / "inbox" / "plain.json", "w") as fh:  # a plain `cp`-style write
        fh.write(json.dumps(job("plain")))
    wait_for(lambda: outcomes(home).get("plain") == "artifact", timeout=30)
    assert d.stop(signal.SIGTERM) == 0
    out = d.output()
    for word in ("claimed plain.json", "validated", "reserved", "trained", "published", "committed"):
        assert word in out


def test_worker_crash_and_timeout_fail_the_job_release_budget_and_daemon_carries_on(tmp_path):
    home = make_home(tmp_path / "h", timeout=3)
    drop(home, "c.json", job("c", backend="crash"))
    drop(home, "h.json", job("h", backend="hang"))
    drop(home, "ok.json", job("ok", backend="isolated-mock"))
    r = run_once(home, timeout=120)
    assert r.returncode == 0
    assert read(home, "c.error.json")["status"] == "failed"
    assert "killed" in read(home, "c.error.json")["error"] or "died" in read(home, "c.error.json")["error"]
    assert "within 3 s" in read(home, "h.error.json")["error"]
    assert outcomes(home)["ok"] == "artifact"
    b = ledger(home).budget("alice")
    assert b.epsilon_spent == pytest.approx(1.0) and b.epsilon_reserved == 0


def test_memory_limit_fails_the_job(tmp_path):
    home = make_home(tmp_path / "h", extra="")
    (home / "pandacead.toml").write_text((home / "pandacead.toml").read_text().replace(
        "torch_threads = 1", "torch_threads = 1\nmemory_limit_mb = 1024"))
    drop(home, "m.json", job("m", backend="memhog"))
    run_once(home, timeout=120)
    rep = read(home, "m.error.json")
    assert rep["status"] == "failed" and "memory" in rep["error"]
    assert ledger(home).budget("alice").epsilon_reserved == 0


def test_a_trainer_that_overspends_is_discarded(home):
    drop(home, "o.json", job("o", backend="overspend"))
    run_once(home)
    rep = read(home, "o.error.json")
    assert rep["status"] == "failed" and "more than planned" in rep["error"]
    assert ledger(home).budget("alice").epsilon_spent == 0


def test_signing_key_readable_by_others_is_refused(home):
    key = home / "state" / "keys" / "ed25519.pem"
    os.chmod(key, 0o644)
    r = run_once(home, timeout=30)
    assert r.returncode != 0
    assert "readable by others" in r.stderr.decode()
    os.chmod(key, 0o600)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_reports_never_overwrite_each_other(home):
    for i in range(3):
        drop(home, f"dup{i}.json", {"job_id": "dup", "user_id": "alice", "dp": {"epsilon": 1.0}, "epochs": "many"})
    run_once(home)
    names = sorted(p.name for p in (home / "outbox").glob("dup*.error.json"))
    assert names == ["dup.error.json", "dup~1.error.json", "dup~2.error.json"]
    for n in names:
        rep = read(home, n)
        assert rep["job_id"] == "dup" and "epochs" in rep["error"]
