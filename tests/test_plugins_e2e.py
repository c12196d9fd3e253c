"""Plugins through the real daemon: an out-of-tree trainer, a broken plugin, allow/deny lists."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import cli, drop, job, ledger, make_home, outcomes, run_once

pytest.importorskip("pandacead_nss")


def test_third_party_trainer_installed_by_entry_point_trains_through_the_daemon(home):
    from safetensors.numpy import load

    drop(home, "n1.json", job("n1", backend="nss", epochs=1))
    drop(home, "n2.json", job("n2", backend="nss", dp={"epsilon": 0.0001, "delta": 1e-5, "clip": 1.0}))
    r = run_once(home)
    assert r.returncode == 0, r.stderr.decode()
    assert outcomes(home) == {"n1": "artifact", "n2": "error"}
    art = json.loads((home / "outbox" / "n1.json").read_text())
    assert art["backend"] == "nss" and 0 < art["epsilon"] <= 1.0 and art["accuracy"] >= 0.7
    assert load(base64.b64decode(art["model"]))["weight"].shape == (1, 10)
    assert cli(home, "verify", str(home / "outbox" / "n1.json")).returncode == 0
    rep = json.loads((home / "outbox" / "n2.error.json").read_text())
    assert rep["status"] == "rejected"
    b = ledger(home).budget("alice")
    assert b.epsilon_spent == pytest.approx(art["epsilon"]) and b.epsilon_reserved == 0
    shown = json.loads(cli(home, "jobs", "show", "n1", "--json").stdout)
    assert shown["status"] == "succeeded" and shown["backend"] == "nss"


def test_denied_plugin_is_listed_as_disabled_and_its_backend_refused(tmp_path):
    home = make_home(tmp_path / "h", extra="")
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace('[plugins]\n', '[plugins]\ndeny = ["nss"]\n'))
    rows = {r["name"]: r for r in json.loads(cli(home, "plugins", "--json").stdout)}
    assert rows["nss"]["enabled"] is False and rows["nss"]["trainers"] == []
    drop(home, "n.json", job("n", backend="nss"))
    run_once(home)
    rep = json.loads((home / "outbox" / "n.error.json").read_text())
    assert rep["status"] == "rejected" and "nss" in rep["error"]


def test_allow_list_keeps_only_named_plugins_but_never_the_essential_ones(tmp_path):
    home = make_home(tmp_path / "h")
    cfg = home / "pandacead.toml"
    cfg.write_text(cfg.read_text().replace('[plugins]\n', '[plugins]\nallow = ["mock"]\n'))
    rows = {r["name"]: r for r in json.loads(cli(home, "plugins", "--json").stdout)}
    assert rows["mock"]["enabled"] and rows["budget"]["enabled"] and rows["trainer-selection"]["enabled"]
    assert rows["nss"]["enabled"] is False and rows["opacus"]["enabled"] is False


def test_broken_plugin_is_reported_and_the_daemon_keeps_serving(tmp_path):
    broken = tmp_path / "broken_plugins"
    broken.mkdir()
    (broken / "explodes.py").write_text("raise RuntimeError('boom at import')\n")
    (broken / "bad_trainer.py").write_text(
        "from pandacead.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def pandacead_register_trainers(register):\n"
        "    register(object())\n"
    )
    home = make_home(tmp_path / "h", plugin_dirs=(broken,))
    rows = {r["name"]: r for r in json.loads(cli(home, "plugins", "--json").stdout)}
    assert "boom at import" in rows["explodes"]["error"]
    assert "no name" in rows["bad_trainer"]["error"]
    drop(home, "ok.json", job("ok"))
    assert run_once(home).returncode == 0
    assert outcomes(home) == {"ok": "artifact"}


def test_a_budget_hook_that_raises_vetoes_the_job(tmp_path):
    plugs = tmp_path / "veto_plugins"
    plugs.mkdir()
    (plugs / "grumpy.py").write_text(
        "from pandacead.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def pandacead_check_budget(job, plan, ledger):\n"
        "    if job.user_id == 'mallory':\n"
        "        raise RuntimeError('no')\n"
        "    if job.user_id == 'trudy':\n"
        "        return 'Trudy is over her monthly quota.'\n"
    )
    home = make_home(tmp_path / "h", plugin_dirs=(plugs,))
    for u in ("mallory", "trudy", "alice"):
        drop(home, f"{u}.json", job(u, u))
    run_once(home)
    assert outcomes(home) == {"mallory": "error", "trudy": "error", "alice": "artifact"}
    assert "grumpy" in json.loads((home / "outbox" / "mallory.error.json").read_text())["error"]
    assert "quota" in json.loads((home / "outbox" / "trudy.error.json").read_text())["error"]
    led = ledger(home)
    assert led.budget("mallory").epsilon_spent == 0 and led.budget("trudy").epsilon_spent == 0


def test_job_finished_hook_is_told_every_outcome(tmp_path):
    plugs = tmp_path / "notify_plugins"
    plugs.mkdir()
    log = tmp_path / "finished.log"
    (plugs / "notes.py").write_text(
        "import json\n"
        "from pandacead.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def pandacead_job_finished(job, outcome):\n"
        f"    open({str(log)!r}, 'a').write(json.dumps(outcome) + '\\n')\n"
    )
    home = make_home(tmp_path / "h", plugin_dirs=(plugs,))
    drop(home, "a.json", job("a"))
    drop(home, "b.json", b"{broken")
    run_once(home)
    seen = {json.loads(line)["job_id"]: json.loads(line)["status"] for line in log.read_text().splitlines()}
    assert seen == {"a": "succeeded", "b": "rejected"}
