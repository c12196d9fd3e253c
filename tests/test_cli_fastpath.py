"""The click-free console script (pandacead/entry.py) prints exactly what click prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pandacead import entry

SCRIPT = "import sys; sys.argv[0] = 'pandacead'; from pandacead.entry import main; main()"


def pandacead(*args: str, fast: bool = True, columns: str = "80", home: Path | None = None,
              importtime: bool = False, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDACEAD_")}
    env.update(COLUMNS=columns, PANDACEAD_CLI_FAST="1" if fast else "0", **(env_extra or {}))
    if home is not None:
        env["PANDACEAD_HOME"] = str(home)
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", SCRIPT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def current_cache() -> None:
    """`make install` writes the cache; a checkout that has not run it (or changed cli.py since) gets it here."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        if entry._cached_answer(["--help"]) is None or not entry._budget_show_current():
            entry.write_cache()
            sys.modules.pop("pandacead._cli_cache", None)
        assert entry._cached_answer(["--help"]) is not None
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _click_was_imported(r: subprocess.CompletedProcess[str]) -> bool:
    return any(line.split("|")[-1].strip() == "click" for line in r.stderr.splitlines() if line.startswith("import time:"))


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["budget", "--help"], ["budget", "show", "-h"],
                                  ["run", "--help"], ["jobs", "show", "--help"]])
def test_cached_answers_are_clicks_output_without_importing_click(args: list[str]) -> None:
    fast = pandacead(*args, importtime=True)
    slow = pandacead(*args, fast=False)
    assert fast.returncode == slow.returncode == 0
    assert fast.stdout == slow.stdout and fast.stdout.strip()
    assert not _click_was_imported(fast)


def test_every_command_help_in_the_cache_is_clicks() -> None:
    data = entry.build_cache()
    assert ("--help",) in data["OUTPUTS"] and ("budget", "show", "--help") in data["OUTPUTS"]
    for argv in [("--help",), ("init", "--help"), ("budget", "set", "--help")]:
        assert data["OUTPUTS"][argv] == pandacead(*argv, fast=False).stdout


def test_other_widths_and_stale_caches_go_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    narrow = pandacead("--help", columns="60", importtime=True)
    assert narrow.stdout == pandacead("--help", fast=False, columns="60").stdout
    assert _click_was_imported(narrow)
    import pandacead._cli_cache as real

    stale = types.SimpleNamespace(WIDTH=real.WIDTH, OUTPUTS=real.OUTPUTS,
                                  FINGERPRINT=[real.FINGERPRINT[0] ^ 1, *real.FINGERPRINT[1:]])
    monkeypatch.setitem(sys.modules, "pandacead._cli_cache", stale)
    monkeypatch.setattr(sys.modules["pandacead"], "_cli_cache", stale)
    monkeypatch.setenv("COLUMNS", "80")
    assert entry._cached_answer(["--help"]) is None
    monkeypatch.setitem(sys.modules, "pandacead._cli_cache", real)
    monkeypatch.setattr(sys.modules["pandacead"], "_cli_cache", real)
    assert entry._cached_answer(["--help"]) == real.OUTPUTS[("--help",)]
    assert entry.fast_answer(["--help"], "python") is None  # another program name: click's usage line differs


def test_budget_show_mirrors_the_current_click_command(monkeypatch: pytest.MonkeyPatch) -> None:
    assert entry.budget_show_source_crc() == entry.BUDGET_SHOW_SOURCE_CRC, (
        "code that `budget show` runs changed (cli.py, config.py, the ledger): make pandacead/entry.py's "
        "_budget_show and pandacead/budget_read.py do the same, "
        "then set BUDGET_SHOW_SOURCE_CRC = entry.budget_show_source_crc()"
    )
    import pandacead._cli_cache as real

    assert entry._budget_show_current()
    stale = types.SimpleNamespace(**{k: getattr(real, k) for k in ("WIDTH", "OUTPUTS", "FINGERPRINT")},
                                  BUDGET_SHOW_MIRRORED=False)
    monkeypatch.setitem(sys.modules, "pandacead._cli_cache", stale)
    monkeypatch.setattr(sys.modules["pandacead"], "_cli_cache", stale)
    assert entry.fast_answer(["budget", "show"], "pandacead") is None  # click answers


def _home(tmp_path: Path, composition: str = "basic") -> Path:
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "pandacead.cli", "init", "--home", str(home)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if composition != "basic":
        cfg = home / "pandacead.toml"
        cfg.write_text(cfg.read_text().replace('composition = "basic"', f'composition = "{composition}"'))
    for user, eps in (("alice", "3"), ("bob", "0.5")):
        subprocess.run([sys.executable, "-m", "pandacead.cli", "budget", "set", user, eps, "--create", "--home", str(home)],
                       check=True, capture_output=True, timeout=60)
    return home


@pytest.mark.parametrize("composition", ["basic", "rdp"])
def test_budget_show_prints_what_click_prints(tmp_path: Path, composition: str) -> None:
    home = _home(tmp_path, composition)
    for args in (["budget", "show"], ["budget", "show", "--json"], ["budget", "show", "alice"],
                 ["budget", "show", "--json", "carol"], ["budget", "show", "nobody"],
                 ["budget", "show", f"--home={home}"]):
        fast = pandacead(*args, home=home, importtime=True)
        slow = pandacead(*args, fast=False, home=home)
        assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout), args
        assert not _click_was_imported(fast), args
    assert json.loads(pandacead("budget", "show", "--json", "alice", home=home).stdout)["epsilon_budget"] == 3.0


def test_budget_show_errors_and_odd_arguments_are_clicks(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["budget", "show"], ["budget", "show", "--bogus"], ["budget", "show", "a", "b"]):
        fast = pandacead(*args, home=empty)
        slow = pandacead(*args, fast=False, home=empty)
        assert fast.returncode == slow.returncode != 0
        assert (fast.stdout, fast.stderr) == (slow.stdout, slow.stderr)
    afile = tmp_path / "afile"
    afile.write_text("")
    fast, slow = pandacead("budget", "show", "--home", str(afile)), pandacead("budget", "show", "--home", str(afile), fast=False)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr) and fast.returncode != 0


# --------------------------------------------------------------------------- the click-free ledger reader


def _fast_reader_used(r: subprocess.CompletedProcess[str]) -> bool:
    """budget_read answered: neither click nor pandacead.config nor the ledger's core was imported."""
    mods = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    return "pandacead.budget_read" in mods and not mods & {"click", "pandacead.config", "pandacead.ledger.core"}


DATASETS_TOML = """
[datasets.patients]
kind = "csv"
path = "data/patients.csv"
label = "outcome"
owner = "clinic-a"
epsilon_budget = 40.0
delta_budget = 1e-4

[datasets.survey]
kind = "csv"
path = "data/survey.csv"
label = "y"
"""


def _real_ledger(tmp_path: Path, composition: str) -> Path:
    """A home whose ledger has accounts with committed, reserved and released spends on two datasets."""
    from pandacead.accounting import curve_to_json, subsampled_gaussian_rdp
    from pandacead.config import load_settings
    from pandacead.ledger import Ledger

    home = _home(tmp_path, composition)
    with open(home / "pandacead.toml", "a") as f:
        f.write(DATASETS_TOML)
    led = Ledger.from_settings(load_settings(home, environ={}), actor="test")
    q, sigma, steps = 0.04, 3.0, 50

    def plan(eps: float) -> types.SimpleNamespace:
        return types.SimpleNamespace(epsilon=eps, delta=1e-6, noise_multiplier=sigma, sample_rate=q, steps=steps,
                                     accountant="rdp", rdp=curve_to_json(subsampled_gaussian_rdp(q, sigma, steps)))

    n = 0
    for user, dataset, jobs in (("alice", "patients", 4), ("bob", "survey", 2), ("carol", "patients", 3),
                                ("dave", None, 2)):
        for i in range(jobs):
            n += 1
            job_id = f"{user}-{i}"
            led.reserve(job_id, user, plan(0.05 + 0.01 * n), "opacus", dataset=dataset)
            if i % 3 == 0:
                led.commit(job_id, 0.04 + 0.01 * n, 1e-6)
            elif i % 3 == 1:
                led.release(job_id, "test: released")
            # else: left reserved (a job still running)
    led.set_budget("bob", 0.75)
    led.close()
    return home


@pytest.mark.slow
@pytest.mark.parametrize("composition", ["basic", "rdp"])
def test_budget_show_reads_a_real_ledger_as_click_does(tmp_path: Path, composition: str) -> None:
    home = _real_ledger(tmp_path, composition)
    for args in (["budget", "show"], ["budget", "show", "--json"], ["budget", "show", "alice"],
                 ["budget", "show", "--json", "carol"], ["budget", "show", "dave", "--json"],
                 ["budget", "show", "nobody"], ["budget", "show", "--json", "nobody"],
                 ["budget", "show", f"--home={home}", "bob"], ["budget", "show", "--home", str(home), "--json"]):
        fast = pandacead(*args, home=home, importtime=True)
        slow = pandacead(*args, fast=False, home=home)
        assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout), args
        assert fast.returncode == 0 and _fast_reader_used(fast), args
    rows = json.loads(pandacead("budget", "show", "--json", home=home).stdout)
    assert [r["user_id"] for r in rows] == ["alice", "bob", "carol", "dave"]
    assert all(r["composition"] == composition for r in rows)
    assert rows[0]["epsilon_reserved"] > 0 and rows[0]["epsilon_spent"] > 0  # the ledger is not trivial
    if composition == "rdp":
        assert all("best_order" in r for r in rows)


def _same_as_click_without_the_reader(home: Path, *args: str, env: dict[str, str] | None = None) -> None:
    fast = pandacead("budget", "show", *args, home=home, importtime=True, env_extra=env)
    slow = pandacead("budget", "show", *args, fast=False, home=home, env_extra=env)
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout), args
    if slow.returncode != 0:
        assert fast.stderr.splitlines()[-1] == slow.stderr.splitlines()[-1]
    assert not _fast_reader_used(fast), "the reader answered where it should have asked click"


@pytest.mark.slow
def test_budget_show_hands_unusual_homes_to_click(tmp_path: Path) -> None:
    import sqlite3

    home = _real_ledger(tmp_path, "basic")
    cfg = home / "pandacead.toml"
    text = cfg.read_text()
    # An environment override: load_settings merges it; the reader does not try.
    _same_as_click_without_the_reader(home, "--json", env={"PANDACEAD_BUDGET__COMPOSITION": "rdp"})
    # Odd configurations: click reports the error, or answers from what the reader does not mirror.
    for odd in ('\n[trainer.bogus]\n', '\n[budgett]\nx = 1\n', '\n[executor]\nnum_cpus = 2\n',
                '\n[datasets.bad]\nowner = 3\n', '\n[datasets.bad2]\nepsilon_budget = -1\n',
                '\n[daemon]\nworkers = 0\n'):
        cfg.write_text(text + odd)
        _same_as_click_without_the_reader(home)
    cfg.write_text(text.replace("default_epsilon = 10.0", "default_epsilon = -1.0"))
    _same_as_click_without_the_reader(home, "nobody")
    cfg.write_text(text.replace('composition = "basic"', 'composition = "renyi"'))
    _same_as_click_without_the_reader(home)
    cfg.write_text(text + "\n[trainer]\ndevice = \"cuda:7\"\n" if "[trainer]" not in text
                   else text.replace('device = "auto"', 'device = "cuda:7"'))
    _same_as_click_without_the_reader(home)
    cfg.write_text(text)
    # A migration pending: the click path applies it before reading.
    db = home / "state" / "ledger.db"
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_audit_by_account'")
    conn.commit()
    conn.close()
    _same_as_click_without_the_reader(home, "--json")
    # ... which it did: the reader answers again.
    assert _fast_reader_used(pandacead("budget", "show", home=home, importtime=True))
    # A ledger not in WAL mode (the click path switches it).
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    _same_as_click_without_the_reader(home)


def test_the_reader_never_writes_the_ledger(tmp_path: Path) -> None:
    home = _real_ledger(tmp_path, "rdp")
    state = home / "state"
    (state / "ledger.db.migrate.lock").unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.name.startswith("ledger.db")}
    os.chmod(state / "ledger.db", 0o444)
    try:
        r = pandacead("budget", "show", "--json", home=home, importtime=True)
        assert r.returncode == 0 and _fast_reader_used(r)
    finally:
        os.chmod(state / "ledger.db", 0o644)
    after = {p.name: p.read_bytes() for p in state.iterdir() if p.name.startswith("ledger.db")}
    assert "ledger.db.migrate.lock" not in after
    assert after["ledger.db"] == before["ledger.db"]


def test_reader_data_comes_from_the_real_modules() -> None:
    from pandacead import budget_read, config
    from pandacead.ledger import MIGRATIONS

    data = budget_read.reader_data()
    assert data["migrations"] == [fn.__name__ for fn in MIGRATIONS]
    assert set(data["known"]) == set(config.DEFAULTS)
    assert data["defaults"]["budget"] == config.DEFAULTS["budget"]
    import pandacead._cli_cache as cache

    assert cache.READER == data, "the cache is stale: python -m pandacead.entry --write-cache"


def test_the_reader_declines_where_the_ledger_could_not_be_opened_for_writing(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pandacead import budget_read

    home = _home(tmp_path)
    import pandacead._cli_cache as cache

    monkeypatch.delenv("PANDACEAD_HOME", raising=False)
    got = budget_read.show(str(home), None, cache.READER)
    assert got is not None and [r["user_id"] for r in got[0]] == ["alice", "bob"]
    # Not writable for this user (root passes every os.access, so the denial is simulated):
    # Ledger's open fails there, and the click command reports it.
    monkeypatch.setattr(budget_read.os, "access", lambda path, mode: not str(path).endswith("ledger.db"))
    assert budget_read.show(str(home), None, cache.READER) is None
    monkeypatch.setattr(budget_read.os, "access", lambda path, mode: not str(path).endswith(".migrate.lock"))
    assert budget_read.show(str(home), None, cache.READER) is None


def test_an_ascii_stdout_gets_what_click_writes(tmp_path: Path) -> None:
    home = _home(tmp_path)
    for args in (["budget", "show"], ["--help"]):
        fast = pandacead(*args, home=home, env_extra={"PYTHONIOENCODING": "ascii"})
        slow = pandacead(*args, home=home, fast=False, env_extra={"PYTHONIOENCODING": "ascii"})
        assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout) and fast.returncode == 0, fast.stderr
