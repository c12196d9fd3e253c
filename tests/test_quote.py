"""Quotes: the daemon's own plan, signed, nothing charged; a job carrying one runs with exactly that plan or not at all."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
from conftest import cli, drop, job, ledger, make_home, outcomes, run_once

from pandacead.quote import canonical_json


def _quote(home: Path, j: dict, *extra: str) -> dict:
    (home / "job.json").write_text(json.dumps(j))
    r = cli(home, "quote", str(home / "job.json"), "--json", *extra)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_canonical_json_follows_rfc8785():
    # RFC 8785 appendix B number forms, key order by UTF-16 code units, no whitespace
    assert canonical_json([1e-7, 1e21, 1e20, 0.000001, 100.0, -0.0, 5e-324, 333333333.3333333]) == (
        b"[1e-7,1e+21,100000000000000000000,0.000001,100,0,5e-324,333333333.3333333]"
    )
    assert canonical_json({"\u20ac": 1, "\r": 2, "1": 3, "\U0001f600": 4, "\ufb33": 5}) == (
        '{"\\r":2,"1":3,"\u20ac":1,"\U0001f600":4,"\ufb33":5}'.encode()
    )


def test_quote_reports_what_the_daemon_then_reserves_and_charges_nothing(home):
    q = _quote(home, job("q1", epsilon=2.0))
    assert {"job_id", "account", "dataset", "backend", "epsilon", "delta", "noise_multiplier", "sample_rate",
            "steps", "quote", "expires_at"} <= set(q)
    assert (q["job_id"], q["account"], q["dataset"], q["backend"]) == ("q1", "alice", "synthetic", "mock")
    assert q["account_after"]["epsilon_left_after"] == pytest.approx(8.0) and q["charged"] is False
    led = ledger(home)
    assert led.spends("alice") == [] and not led.budget("alice").known  # nothing charged, no user created
    stored = home / "state" / "quotes" / f"{q['quote'][7:]}.dsse.json"
    payload = base64.b64decode(json.loads(stored.read_bytes())["payload"])
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == q["quote"]
    drop(home, "q1.json", {**job("q1", epsilon=2.0), "quote": q["quote"]})
    run_once(home)
    assert outcomes(home) == {"q1": "artifact"}
    spend = ledger(home).spend("q1")
    assert (spend["epsilon_reserved"], spend["delta_reserved"], spend["sample_rate"]) == (
        q["epsilon"], q["delta"], q["sample_rate"])


def test_quote_human_output(home):
    (home / "job.json").write_text(json.dumps(job("h1", epsilon=1.5)))
    out = cli(home, "quote", str(home / "job.json")).stdout.decode().splitlines()
    assert out[0].startswith("quote sha256:")
    assert "  account    alice    dataset synthetic    backend mock" in out
    assert "  reserves   ε=1.5  δ=1e-05" in out
    assert "  costs      ε 1.5, δ 1e-05 under basic composition" in out
    assert "  leaves     ε 8.5 of 10, δ 0.00099 of 0.001 for alice" in out
    assert out[-1].startswith('Nothing was charged. To pay exactly this, add "quote": "sha256:')


def test_a_job_whose_plan_changed_since_its_quote_is_refused_and_not_charged(tmp_path):
    home = make_home(tmp_path / "h")
    q = _quote(home, job("p1"))
    with open(home / "pandacead.toml", "a") as fh:  # the earner grows the dataset: q and n change
        fh.write("\n[datasets.synthetic]\nrows = 2000\n")
    drop(home, "p1.json", {**job("p1"), "quote": q["quote"]})
    run_once(home)
    rep = json.loads((home / "outbox" / "p1.error.json").read_text())
    assert rep["status"] == "rejected" and "the plan changed since it was quoted" in rep["error"]
    assert "sample_rate 0.08 → 0.04" in rep["error"] and ledger(home).spends("alice") == []


def test_tampered_expired_foreign_or_unknown_quotes_are_refused(home):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pandacead.signing import Ed25519Signer, envelope, envelope_payload

    qdir = home / "state" / "quotes"
    # tampered: the stored envelope's statement is edited (ε lowered), digest kept
    t = _quote(home, job("t1", epsilon=2.0))
    path = qdir / f"{t['quote'][7:]}.dsse.json"
    env = json.loads(path.read_bytes())
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["plan"]["epsilon"] = 0.5
    env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    path.write_text(json.dumps(env))
    # foreign: well formed, signed by a key that is not this host's, stored under its own digest
    f = _quote(home, job("f1"))
    fstmt = json.loads(base64.b64decode(json.loads((qdir / f"{f['quote'][7:]}.dsse.json").read_bytes())["payload"]))
    other = Ed25519Signer(Ed25519PrivateKey.generate())
    fenv = envelope(fstmt, [other.sign(envelope_payload(fstmt))])
    fdigest = hashlib.sha256(base64.b64decode(fenv["payload"])).hexdigest()
    (qdir / f"{fdigest}.dsse.json").write_text(json.dumps(fenv))
    # expired
    e = _quote(home, job("e1"), "--valid", "0.5")
    time.sleep(1.5)
    drop(home, "t1.json", {**job("t1", epsilon=2.0), "quote": t["quote"]})
    drop(home, "f1.json", {**job("f1"), "quote": f"sha256:{fdigest}"})
    drop(home, "e1.json", {**job("e1"), "quote": e["quote"]})
    drop(home, "u1.json", {**job("u1"), "quote": "sha256:" + "0" * 64})
    run_once(home)
    errors = {jid: json.loads((home / "outbox" / f"{jid}.error.json").read_text())["error"]
              for jid in ("t1", "f1", "e1", "u1")}
    assert "does not match its digest (tampered)" in errors["t1"]
    assert "not signed by this host" in errors["f1"]
    assert "the quote expired at" in errors["e1"]
    assert "this host issued no such quote" in errors["u1"]
    assert ledger(home).spends("alice") == []


def test_submit_checks_dataset_backend_and_quote_at_once(home):
    (home / "a.json").write_text(json.dumps(job("a", dataset="nope")))
    r = cli(home, "submit", str(home / "a.json"))
    assert r.returncode == 1 and "Dataset 'nope' is not offered on this host" in r.stderr.decode()
    (home / "b.json").write_text(json.dumps(job("b", backend="nosuch")))
    r = cli(home, "submit", str(home / "b.json"))
    assert r.returncode == 1 and "Backend 'nosuch' is not available" in r.stderr.decode()
    (home / "c.json").write_text(json.dumps({**job("c"), "quote": "sha256:" + "1" * 64}))
    r = cli(home, "submit", str(home / "c.json"))
    assert r.returncode == 1 and "issued no quote" in r.stderr.decode()
    assert not list((home / "inbox").glob("*.json"))
    dry = cli(home, "submit", str(home / "a.json"), "--dry-run", "--no-check")
    assert dry.returncode == 1 and "not declared public" in dry.stderr.decode()  # same sentence as for private data
    (home / "d.json").write_text(json.dumps(job("d")))
    dry = json.loads(cli(home, "submit", str(home / "d.json"), "--dry-run", "--json").stdout)
    assert dry["epsilon"] == 1.0 and not list((home / "inbox").glob("*.json"))


def test_under_rdp_the_quoted_marginal_cost_is_what_the_account_then_spends(tmp_path):
    home = make_home(tmp_path / "h")
    cfg = (home / "pandacead.toml").read_text().replace('default_delta = 1e-3', 'default_delta = 1e-3\ncomposition = "rdp"')
    (home / "pandacead.toml").write_text(cfg)
    drop(home, "a.json", job("a", epsilon=1.0))
    run_once(home)
    q = _quote(home, job("b", epsilon=1.0))
    assert q["composition"] == "rdp" and 0 < q["account_after"]["marginal_epsilon"] <= 1.0 + 1e-9  # never dearer than adding
    drop(home, "b.json", {**job("b", epsilon=1.0), "quote": q["quote"]})
    run_once(home)
    after = json.loads(cli(home, "budget", "show", "alice", "--json").stdout)
    assert after["epsilon_spent"] == pytest.approx(q["account_after"]["epsilon_used"] + q["account_after"]["marginal_epsilon"])
    assert after["epsilon_remaining"] == pytest.approx(q["account_after"]["epsilon_left_after"])
