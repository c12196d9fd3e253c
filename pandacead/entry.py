"""The `pandacead` console script: answers `--help`, `--version` and `budget show` without importing click.

Importing click (and the command tree of `pandacead.cli`) costs 3–5× a bare
`python -c pass`. The answers that need no command logic come from
`pandacead._cli_cache`, text that click itself rendered, and are used only
while they are provably current: the cache records a checksum of every
source that shapes the help text (`pandacead/cli.py`, `pandacead/_version.py`,
click's package), the terminal width it was rendered for and the program
name. Anything else — another width, a stale checksum, an unknown argument
— goes to click, so the output is always click's. `budget show` reads the
ledger with pandacead/budget_read.py (tomllib and a read-only sqlite3
connection: neither click nor `pandacead.config` nor `Ledger`) and prints the
same bytes as the click command, only while the code it mirrors is the code
it was written for (a checksum of that code's source, `BUDGET_SHOW_SOURCE_CRC`,
checked when the cache is built, and a checksum of the files it lives in,
checked at every run); on any doubt (an odd argument or configuration, a
migration pending, an error) it prints nothing and hands over to click, which
then reports as it always does.

The command itself is scripts/pandacead (installed as a wheel script), not a
console_scripts wrapper, whose `import re` alone costs half a `python -c pass`.

Regenerate the cache with ``python -m pandacead.entry --write-cache``
(`make install` does; tests/test_cli_fastpath.py fails when it is stale).
``PANDACEAD_CLI_FAST=0`` turns the fast paths off.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs more than the rest of `--help`
if TYPE_CHECKING:
    from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The sources whose bytes shape the help text, relative to the package.
_SOURCES = ("cli.py", "_version.py")


def _checksum(paths: list[str]) -> int:
    import zlib

    crc = 0
    for path in paths:
        with open(path, "rb") as f:
            crc = zlib.crc32(f.read(), crc)
    return crc


def _click_file() -> str:
    import importlib.util

    spec = importlib.util.find_spec("click")
    return os.path.abspath(spec.origin) if spec and spec.origin else ""


def _fingerprint(click_file: str) -> list[Any]:
    st = os.stat(click_file)
    return [_checksum([os.path.join(_HERE, s) for s in _SOURCES]), click_file, st.st_size, st.st_mtime_ns]


def _width() -> int:
    """The width click's HelpFormatter would use (shutil.get_terminal_size, capped at 80, minus 2)."""
    columns = 0
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        if columns <= 0:
            columns = 80
    return max(min(columns, 80) - 2, 50)


def _cached_answer(argv: list[str]) -> str | None:
    try:
        from pandacead import _cli_cache as cache
    except ImportError:
        return None
    text = cache.OUTPUTS.get(tuple(argv))
    if text is None or _width() != cache.WIDTH:
        return None
    try:
        if _fingerprint(str(cache.FINGERPRINT[1])) != cache.FINGERPRINT:
            return None
    except (OSError, IndexError, TypeError):
        return None
    return text


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    # The same text as pandacead.cli._table (tests/test_cli_fastpath.py compares the outputs).
    if not rows:
        return "(none)"
    cells = [[h for _, h in columns]] + [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


_BUDGET_COLUMNS = [
    ("user_id", "USER"), ("epsilon_budget", "ε BUDGET"), ("epsilon_spent", "ε SPENT"),
    ("epsilon_reserved", "ε RESERVED"), ("epsilon_remaining", "ε LEFT"),
    ("delta_budget", "δ BUDGET"), ("delta_spent", "δ SPENT"),
]


def _budget_show(args: list[str]) -> str | None:
    """`budget show [USER] [--home DIR] [--json]` as pandacead.cli.budget_show prints it, or None (ask click).

    Called only while `_budget_show_current()`; budget_read.show returns None wherever the
    click path could print anything else."""
    user = home = None
    as_json = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--json":
            as_json = True
        elif a == "--home" and i + 1 < len(args):
            home = args[i + 1]
            i += 1
        elif a.startswith("--home="):
            home = a[len("--home="):]
        elif a.startswith("-") or user is not None:
            return None
        else:
            user = a
        i += 1
    if home is not None and (home == "" or home.startswith("-") or os.path.isfile(home)):
        return None
    from pandacead import _cli_cache as cache
    from pandacead import budget_read

    got = budget_read.show(home, user, cache.READER)
    if got is None:
        return None
    rows, composition = got
    if as_json:
        import json

        return json.dumps(rows[0] if user else rows, indent=2, sort_keys=False, default=str) + "\n"
    cols = _BUDGET_COLUMNS + ([("basic_epsilon_spent", "ε IF ADDED")] if composition == "rdp" else [])
    out = _table(rows, cols) + "\n" + f"(composition: {composition})\n"
    if user and not rows[0]["known"]:
        out += f"({user} has no ledger entry yet: this is the default budget)\n"
    return out


def _budget_show_current() -> bool:
    """True while cli.py's `budget show` is the code `_budget_show` mirrors (checked when the cache was built)."""
    try:
        from pandacead import _cli_cache as cache
    except ImportError:
        return False
    if not getattr(cache, "BUDGET_SHOW_MIRRORED", False):
        return False
    from pandacead import budget_read

    try:
        return budget_read.sources_crc() == cache.READER["sources_crc"]
    except (OSError, AttributeError, KeyError, TypeError):
        return False


#: zlib.crc32 of the sources that `_budget_show` and pandacead/budget_read.py reproduce: cli.py's
#: `budget show` (its body, `_ledger`, `_settings`, `_table`, `_cell`, `_emit_json`, BUDGET_COLUMNS),
#: the settings it loads and checks (config.load_settings, resolve_home, check_known, _check,
#: Settings, devices/executor.check_config, policy.policy_for) and the ledger's open and
#: summary (Ledger.__init__, from_settings, _migrate, _pending_migrations, budget, budgets,
#: summary, _kept, Budget). When any differs, the cache says so and `budget show` goes to click:
#: make budget_read.py do what the new code does, then set this to `budget_show_source_crc()`.
BUDGET_SHOW_SOURCE_CRC = 2168868938


def budget_show_source_crc() -> int:
    import inspect
    import zlib

    from pandacead import cli, config, devices, executor
    from pandacead.ledger import core, policy

    L = core.Ledger
    funcs: list[Any] = [
        cli.budget_show.callback, cli._ledger, cli._settings, cli._table, cli._cell, cli._emit_json,
        config.load_settings, config.resolve_home, config.check_known, config._check, config._env_overrides_named,
        config.Settings,
        devices.check_config, executor.check_config, policy.policy_for, policy._amount,
        policy.policies_from_settings,
        L.__init__, L.from_settings, L._migrate, L._pending_migrations, L.budget, L.budgets, L.summary, L._kept,
        L._user_row, L.query, core.Budget, core._budget,
    ]
    parts = [inspect.getsource(f) for f in funcs]
    return zlib.crc32(("".join(parts) + repr(cli.BUDGET_COLUMNS)).encode())


def fast_answer(argv: list[str], prog: str) -> str | None:
    """What `pandacead ARGV` prints, when it can be answered without click; else None."""
    if prog != "pandacead" or os.environ.get("PANDACEAD_CLI_FAST", "1") == "0":
        return None
    if argv[:2] == ["budget", "show"] and "--help" not in argv and "-h" not in argv:
        if not _budget_show_current():
            return None
        try:
            return _budget_show(argv[2:])
        except Exception:  # any doubt: click runs the command and reports as usual
            return None
    return _cached_answer(argv)


def main() -> None:
    text = fast_answer(sys.argv[1:], os.path.basename(sys.argv[0]))
    if text is not None:
        try:
            sys.stdout.write(text)  # encodes the whole text first: nothing is written on an error
        except UnicodeEncodeError:
            pass  # e.g. PYTHONIOENCODING=ascii: click writes it its own way
        else:
            sys.stdout.flush()
            return
    from pandacead.cli import main as click_main

    click_main()


# ----------------------------------------------------------------------------- the cache


def _render(cli: Any, argv: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli.main(args=argv, prog_name="pandacead", standalone_mode=False)
        except SystemExit:
            pass
    return buf.getvalue()


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import click

    out = [prefix]
    if isinstance(group, click.Group):
        for name, cmd in sorted(group.commands.items()):
            out += _command_paths(cmd, (*prefix, name))
    return out


def build_cache() -> dict[str, Any]:
    """{"WIDTH", "FINGERPRINT", "OUTPUTS"} rendered by click at the width click would use now."""
    from pandacead.cli import cli

    outputs: dict[tuple[str, ...], str] = {}
    for path in _command_paths(cli):
        for flag in ("--help", "-h"):
            outputs[(*path, flag)] = _render(cli, [*path, flag])
    outputs[("--version",)] = _render(cli, ["--version"])
    from pandacead import budget_read

    return {"WIDTH": _width(), "FINGERPRINT": _fingerprint(_click_file()), "OUTPUTS": outputs,
            "BUDGET_SHOW_MIRRORED": budget_show_source_crc() == BUDGET_SHOW_SOURCE_CRC,
            "READER": budget_read.reader_data()}


def write_cache(path: str | None = None) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"  # the width of any terminal of 80 columns or more, and of pipes
    try:
        data = build_cache()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    path = path or os.path.join(_HERE, "_cli_cache.py")
    lines = [
        '"""Generated by `python -m pandacead.entry --write-cache`: click\'s own output, see pandacead/entry.py."""',
        "# ruff: noqa",
        "",
        f"WIDTH = {data['WIDTH']!r}",
        f"FINGERPRINT = {data['FINGERPRINT']!r}",
        f"BUDGET_SHOW_MIRRORED = {data['BUDGET_SHOW_MIRRORED']!r}",
        f"READER = {data['READER']!r}",
        "OUTPUTS = {",
        *(f"    {k!r}: {v!r}," for k, v in sorted(data["OUTPUTS"].items())),
        "}",
        "",
    ]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-cache"]:
        print(write_cache())
    else:
        main()
