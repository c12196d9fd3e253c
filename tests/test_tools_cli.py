"""The small things a user expects: key show, verify (renamed, extra signatures, error reports), --home first,
budget history as JSON, train without outbox litter, the error schema, completion."""

from __future__ import annotations

import base64
import json
import shutil

from conftest import cli, drop, env_for, job, make_home, run_once


def test_key_show_prints_the_keyid_verify_reports(home):
    drop(home, "a.json", job("a"))
    run_once(home)
    shown = cli(home, "key", "show").stdout.decode().splitlines()
    assert shown[0].startswith("keyid ") and shown[1] == "algorithm ed25519"
    assert "-----BEGIN PUBLIC KEY-----" in shown
    kid = shown[0].split()[1]
    as_json = json.loads(cli(home, "key", "show", "--json").stdout)
    assert as_json["keyid"] == kid and as_json["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    v = cli(home, "verify", str(home / "outbox" / "a.json"))
    assert v.returncode == 0 and v.stdout.decode().splitlines()[1] == f"signed by key {kid}"
    pub = home / "buyer.pub"
    pub.write_text(as_json["public_key_pem"])
    assert cli(home, "verify", str(home / "outbox" / "a.json"), "--key", str(pub)).returncode == 0


def test_verify_accepts_a_renamed_artifact_and_extra_signatures_but_says_what_an_error_report_is(home, tmp_path):
    drop(home, "a.json", job("a"))
    drop(home, "x.json", job("x", epsilon=90))
    run_once(home)
    renamed = tmp_path / "model-from-alice.json"
    shutil.copy(home / "outbox" / "a.json", renamed)
    r = cli(home, "verify", str(renamed), "--envelope", str(home / "outbox" / "a.dsse.json"))
    assert r.returncode == 0 and r.stdout.decode().splitlines()[0] == (
        f"{renamed}: OK (hash, subject digest and signatures verified; signed as a.json)")
    # a co-signer we do not know adds a signature: still fine while ours verifies
    env = json.loads((home / "outbox" / "a.dsse.json").read_text())
    env["signatures"].append({"keyid": "ab" * 32, "sig": base64.b64encode(b"\0" * 64).decode()})
    extra = tmp_path / "extra.dsse.json"
    extra.write_text(json.dumps(env))
    assert cli(home, "verify", str(home / "outbox" / "a.json"), "--envelope", str(extra)).returncode == 0
    # ... but not when ours is the one that is broken
    env["signatures"][0]["sig"] = base64.b64encode(b"\1" * 64).decode()
    extra.write_text(json.dumps(env))
    bad = cli(home, "verify", str(home / "outbox" / "a.json"), "--envelope", str(extra))
    assert bad.returncode == 1 and "does not verify" in bad.stderr.decode()
    rep = cli(home, "verify", str(home / "outbox" / "x.error.json"))
    assert rep.returncode == 1 and rep.stderr.decode().startswith(
        f"{home / 'outbox' / 'x.error.json'} is an error report, not an artifact: job x rejected: ")


def test_home_is_accepted_before_the_subcommand(tmp_path):
    home = make_home(tmp_path / "h")
    env = {k: v for k, v in env_for(home).items() if k != "PANDACEAD_HOME"}
    r = cli(tmp_path, "--home", str(home), "budget", "show", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert cli(tmp_path, "budget", "show", env=env).returncode == 1  # no home otherwise


def test_budget_history_json_has_real_objects_a_running_total_and_the_dataset(home):
    drop(home, "a.json", job("a", epsilon=1.5))
    run_once(home)
    drop(home, "b.json", job("b", epsilon=2.0))
    run_once(home)
    h = json.loads(cli(home, "budget", "history", "alice", "--json").stdout)
    assert [(s["job_id"], s["dataset"], s["epsilon_total"]) for s in h["spends"]] == [
        ("a", "synthetic", 1.5), ("b", "synthetic", 3.5)]
    committed = [a for a in h["audit"] if a["event"] == "committed"]
    assert isinstance(committed[0]["after"], dict) and isinstance(committed[0]["detail"], dict)
    human = cli(home, "budget", "history", "alice").stdout.decode().splitlines()
    assert human[0].split()[:4] == ["JOB", "DATASET", "STATE", "BACKEND"] and "ε TOTAL" in human[0]


def test_train_reports_errors_on_stderr_and_leaves_nothing_in_the_outbox(home):
    for data in (b"{not json", json.dumps({"job_id": "t", "dp": {"epsilon": 99}}).encode()):
        r = cli(home, "train", "--user-id", "u", "--mock", input=data)
        assert r.returncode == 1 and json.loads(r.stderr.decode()[r.stderr.decode().index("{"):])["status"] == "rejected"
    assert list((home / "outbox").iterdir()) == []


def test_shell_completion_is_clicks(home):
    r = cli(home, env={**env_for(home), "_PANDACEAD_COMPLETE": "bash_source"})
    assert r.returncode == 0 and "_pandacead_completion" in r.stdout.decode()
    help_text = cli(home, "--help").stdout.decode()
    assert "Exit codes: 0 success; 1 failure" in help_text and "_PANDACEAD_COMPLETE=bash_source" in help_text
