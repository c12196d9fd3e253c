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
              importtime: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDACEAD_")}
    env.update(COLUMNS=columns, PANDACEAD_CLI_FAST="1" if fast else "0")
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
        "cli.py's `budget show` changed: make pandacead/entry.py's _budget_show print the same, "
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
