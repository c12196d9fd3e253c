"""Configuration mistakes are refused, naming the key and where it was set; `config show` / `config check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, env_for, make_home

from pandacead import config
from pandacead.config import load_settings
from pandacead.errors import ConfigError


def _home_with(tmp_path: Path, text: str) -> Path:
    home = make_home(tmp_path / "h")
    with open(home / "pandacead.toml", "a") as fh:
        fh.write(text)
    return home


@pytest.mark.parametrize("text,needle", [
    ("\n[log]\nlevel = \"DEBUG\"\n", "Unknown section [log]"),
    ("\n[paths]\ninbx = \"in\"\n", "Unknown key paths.inbx"),
    ("\n[datasets.patients]\nkind = \"csv\"\npath = \"p.csv\"\nlabell = \"y\"\n", "Unknown key datasets.patients.labell"),
])
def test_a_typo_in_the_config_is_refused_naming_the_key(tmp_path, text, needle):
    home = _home_with(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(home, environ={})
    assert needle in str(exc.value) and str(home / "pandacead.toml") in str(exc.value)
    assert "did you mean" in str(exc.value)


def test_the_daemon_refuses_to_start_on_a_typo(tmp_path):
    home = make_home(tmp_path / "h")
    text = (home / "pandacead.toml").read_text().replace("workers = 1", "worker = 2")
    (home / "pandacead.toml").write_text(text)
    r = cli(home, "run", "--once", "--home", str(home))
    err = r.stderr.decode()
    assert r.returncode == 1
    assert err.startswith("pandacead: Unknown key daemon.worker in ") and "did you mean daemon.workers?" in err
    assert "Traceback" not in err and err.count("\n") == 1
    r = cli(home, "config", "check", "--home", str(home), "--json")
    assert r.returncode == 1 and "daemon.worker" in json.loads(r.stdout)["error"]


def test_an_invalid_environment_override_is_named_as_such(tmp_path):
    home = make_home(tmp_path / "h")
    with pytest.raises(ConfigError, match=r"daemon.workers in the environment variable PANDACEAD_DAEMON__WORKERS"):
        load_settings(home, environ={"PANDACEAD_DAEMON__WORKERS": "0"})
    with pytest.raises(ConfigError, match=r"Unknown key daemon.wrkers in the environment variable PANDACEAD_DAEMON__WRKERS"):
        load_settings(home, environ={"PANDACEAD_DAEMON__WRKERS": "2"})
    with pytest.raises(ConfigError) as exc:
        load_settings(home, environ={"PANDACEAD_BUDGET__DEFAULT_EPSILON": "-1"})
    assert "pandacead.toml" not in str(exc.value) and "PANDACEAD_BUDGET__DEFAULT_EPSILON" in str(exc.value)


def test_init_writes_a_config_with_logging_that_checks_clean(tmp_path):
    home = tmp_path / "fresh"
    r = cli(tmp_path, "init", "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert "[logging]" in (home / "pandacead.toml").read_text()
    r = cli(home, "config", "check", "--home", str(home))
    assert r.returncode == 0 and "is valid" in r.stdout.decode()


def test_config_show_says_where_each_value_came_from(tmp_path):
    home = make_home(tmp_path / "h")
    r = cli(home, "config", "show", "--home", str(home), "--json",
            env=env_for(home, PANDACEAD_DAEMON__RETRY_SECONDS="7"))
    assert r.returncode == 0, r.stderr
    values = {v["key"]: v for v in json.loads(r.stdout)["values"]}
    assert values["daemon.workers"]["source"] == "file"
    assert values["daemon.max_attempts"] == {"key": "daemon.max_attempts", "value": 3, "source": "default"}
    assert values["daemon.retry_seconds"] == {"key": "daemon.retry_seconds", "value": 7,
                                              "source": "env PANDACEAD_DAEMON__RETRY_SECONDS"}
    r = cli(home, "config", "show", "--home", str(home))
    assert "daemon.workers" in r.stdout.decode() and "default" in r.stdout.decode()


def test_known_keys_follow_the_defaults(tmp_path, monkeypatch):
    home = _home_with(tmp_path, "\n[trainer.options]\nanything = 1\n")
    load_settings(home, environ={})  # trainer.options is free-form, for plugins
    (home / "pandacead.toml").write_text("[daemon]\nshiny_new_knob = 3\n")
    with pytest.raises(ConfigError, match="shiny_new_knob"):
        load_settings(home, environ={})
    monkeypatch.setitem(config.DEFAULTS, "daemon", {**config.DEFAULTS["daemon"], "shiny_new_knob": 1})
    assert load_settings(home, environ={}).daemon["shiny_new_knob"] == 3
