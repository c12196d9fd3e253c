"""`pandacead budget show` read straight from the ledger file: no click, no `pandacead.config`, no `Ledger`.

The click command (pandacead/cli.py `budget_show`) loads the settings
(`config.load_settings`: defaults < pandacead.toml < environment, every key
checked), opens the ledger through `Ledger` (which takes the migration lock,
applies pending migrations and switches the file to WAL) and prints
`Ledger.summary` of one account or of every account. Importing what that
needs costs more than the rest of the command; this module does the same
read with `tomllib` and `sqlite3` on a read-only connection, in one snapshot,
and prints the same bytes.

It answers only when the answer is certainly the click command's, and
returns None (click runs the command, and reports as it always does) on
anything else:

* a `PANDACEAD_<SECTION>__<KEY>` override in the environment, Python < 3.11;
* a configuration that does not parse, has a key `config.check_known` would
  refuse, or a value of the checks `config._check` runs that is not plainly
  valid (the budget keys, `[datasets.NAME]` registrations and
  `daemon.workers` are checked here as there; the trainer's device keys and
  `[executor]` must be absent or their defaults);
* no ledger file, one this user could not open for writing (nor its
  migration lock), a ledger not in WAL mode, a migration pending (the click
  path would apply it first), any SQLite error, any other exception.

What it reads from the real modules (known keys, defaults, migration names,
the dataset rules) comes from `pandacead._cli_cache`, written by
``python -m pandacead.entry --write-cache`` (`make install`), which records
a checksum of the sources it came from (`READER["sources_crc"]`) and whether
the code mirrored here is the code it was written for
(`entry.BUDGET_SHOW_SOURCE_CRC`); `pandacead.entry` checks both before
calling `show`. Under `rdp` the account figures are the kept filter state's
(`pandacead.ledger.filter_state`, the same functions `Ledger.summary` calls).
tests/test_cli_fastpath.py compares the output with click's on real ledgers.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's (see entry.py)
if TYPE_CHECKING:
    from typing import Any

#: Sources whose content the reader's data and mirrored code come from (relative to the package).
SOURCES = ("cli.py", "config.py", "devices.py", "executor.py", "ledger/core.py", "ledger/policy.py",
           "ledger/filter_state.py", "budget_read.py")

_CONFIG_NAME = "pandacead.toml"
#: `[trainer]` and `[executor]` keys that `devices.check_config` / `executor.check_config` check:
#: not mirrored here, so they must be absent or equal to their defaults.
_CHECKED_ELSEWHERE = {
    "trainer": ("device", "world_size", "cuda_memory_fraction", "max_physical_batch_size", "device_memory_mb"),
    "executor": ("kind", "address", "num_cpus", "num_gpus", "max_retries"),
}


def reader_data() -> dict[str, Any]:
    """What `show` needs from the real modules, for the cache (run at install, never on the fast path)."""
    from pandacead import config
    from pandacead.ledger.core import MIGRATION_SET, MIGRATIONS
    from pandacead.ledger.policy import BUILTIN_PUBLIC

    known = config.known_keys()
    return {
        "known": {s: None if k is None else sorted(k) for s, k in known.items()},
        "free_form": sorted(f"{s}.{k}" for s, t in config.DEFAULTS.items() if isinstance(t, dict)
                            for k in t if config._free_form(s, k)),
        "dataset_keys": sorted(config.DATASET_KEYS),
        "defaults": {s: dict(config.DEFAULTS[s]) for s in ("paths", "budget", "daemon", "trainer", "executor")},
        "builtin_public": sorted(BUILTIN_PUBLIC),
        "migration_set": MIGRATION_SET,
        "migrations": [fn.__name__ for fn in MIGRATIONS],
        "sources_crc": sources_crc(),
    }


def sources_crc() -> int:
    import zlib

    here = os.path.dirname(os.path.abspath(__file__))
    crc = 0
    for rel in SOURCES:
        with open(os.path.join(here, rel), "rb") as f:
            crc = zlib.crc32(f.read(), crc)
    return crc


# --------------------------------------------------------------------------- the configuration

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")


class _Unsure(Exception):
    """The subset parser does not handle this text: tomllib decides."""


def _bare_key(text: str) -> str:
    key = text.strip(" \t")
    if not key or not set(key) <= _BARE:
        raise _Unsure
    return key


def _digits(text: str) -> bool:
    return bool(text) and set(text) <= _DIGITS


def _number(text: str) -> int | float:
    """TOML decimal integers and floats without underscores, signs on the mantissa only; else _Unsure."""
    body = text[1:] if text[:1] == "-" else text
    mant, e, exp = body.replace("E", "e").partition("e")
    whole, dot, frac = mant.partition(".")
    if not _digits(whole) or (len(whole) > 1 and whole[0] == "0"):
        raise _Unsure  # leading zeros, "inf", "nan", hex, underscores, "+" ...: tomllib
    if dot and not _digits(frac):
        raise _Unsure
    if e:
        if exp[:1] in ("+", "-"):
            exp = exp[1:]
        if not _digits(exp):
            raise _Unsure
    return float(text) if (dot or e) else int(text)


def _value(text: str) -> tuple[Any, str]:
    """(value, the rest of the line) for a string, boolean, number or one-line flat array at the start of `text`."""
    c = text[:1]
    if c == '"' or c == "'":
        end = text.find(c, 1)
        if end < 0 or (c == '"' and "\\" in text[1:end]):
            raise _Unsure  # escapes, multi-line strings: tomllib
        return text[1:end], text[end + 1:]
    if c == "[":
        items: list[Any] = []
        rest = text[1:].lstrip(" \t")
        while rest[:1] != "]":
            item, rest = _value(rest)
            if items and type(item) is not type(items[0]):
                raise _Unsure
            items.append(item)
            rest = rest.lstrip(" \t")
            if rest[:1] == ",":
                rest = rest[1:].lstrip(" \t")
            elif rest[:1] != "]":
                raise _Unsure
        return items, rest[1:]
    end = len(text)
    for stop in (" ", "\t", "#", ",", "]"):
        i = text.find(stop)
        if 0 <= i < end:
            end = i
    word, rest = text[:end], text[end:]
    if word == "true":
        return True, rest
    if word == "false":
        return False, rest
    return _number(word), rest


def parse_simple_toml(text: str) -> dict[str, Any] | None:
    """What `tomllib.loads(text)` returns, for the plain TOML a pandacead.toml is written in; None
    (ask tomllib) for anything else: escapes, multi-line values, inline tables, dotted or quoted
    keys, dates, underscores in numbers, arrays of tables, control characters. Never a different
    value: tests/test_cli_fastpath.py checks it against tomllib. (tomllib imports `re`, `typing`
    and `datetime`: alone more than a `python -c pass`.)"""
    root: dict[str, Any] = {}
    table = root
    headers: set[tuple[str, ...]] = set()
    try:
        for raw in text.split("\n"):
            if any(ch < " " and ch != "\t" for ch in raw) or "\x7f" in raw:
                raise _Unsure
            line = raw.strip(" \t")
            if not line or line[0] == "#":
                continue
            if line[0] == "[":
                close = line.find("]")
                if line[:2] == "[[" or close < 0:
                    raise _Unsure
                after = line[close + 1:].lstrip(" \t")
                if after and after[0] != "#":
                    raise _Unsure
                path = tuple(_bare_key(part) for part in line[1:close].split("."))
                if path in headers:
                    raise _Unsure
                headers.add(path)
                table = root
                for part in path:
                    table = table.setdefault(part, {})
                    if not isinstance(table, dict):
                        raise _Unsure
                continue
            key_text, eq, value_text = line.partition("=")
            if not eq:
                raise _Unsure
            key = _bare_key(key_text)
            if key in table:
                raise _Unsure
            value, rest = _value(value_text.lstrip(" \t"))
            rest = rest.lstrip(" \t")
            if rest and rest[0] != "#":
                raise _Unsure
            table[key] = value
    except _Unsure:
        return None
    if any(p[:-1] != () and not _header_parents_are_tables(root, p) for p in headers):
        return None
    return root


def _header_parents_are_tables(root: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = root
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False
    return True



def _strict_equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _amount_ok(v: Any) -> bool:
    """config._check's budget amounts and policy._amount: a finite number >= 0, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and v == v and v != float("inf")


def settings(root: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """{"budget": merged [budget], "ledger": path} of the home `root`, or None where load_settings might differ."""
    cfg = os.path.join(root, _CONFIG_NAME)
    raw: dict[str, Any] = {}
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            text = f.read()
        got = parse_simple_toml(text)
        if got is None:
            import tomllib

            got = tomllib.loads(text)
        raw = got
    known = data["known"]
    for section, table in raw.items():
        if section not in known or not isinstance(table, dict):
            return None
        keys = known[section]
        if keys is None:  # [datasets.NAME]
            for spec in table.values():
                if not isinstance(spec, dict) or any(k not in data["dataset_keys"] for k in spec):
                    return None
            continue
        for key, value in table.items():
            if key not in keys or (f"{section}.{key}" in data["free_form"] and not isinstance(value, dict)):
                return None
    defaults = data["defaults"]
    for section, keys in _CHECKED_ELSEWHERE.items():
        for key in keys:
            if key in raw.get(section, {}) and not _strict_equal(raw[section][key], defaults[section][key]):
                return None
    budget = {**defaults["budget"], **raw.get("budget", {})}
    for key in ("default_epsilon", "default_delta", "dataset_epsilon", "dataset_delta"):
        if not _amount_ok(budget.get(key)):
            return None
    if budget.get("composition") not in ("basic", "rdp"):
        return None
    for name, spec in raw.get("datasets", {}).items():  # policy.policy_for
        public = spec.get("public", name in data["builtin_public"])
        owner = spec.get("owner")
        eps = spec.get("epsilon_budget", budget["dataset_epsilon"])
        delta = spec.get("delta_budget", budget["dataset_delta"])
        if (not isinstance(public, bool) or (owner is not None and not isinstance(owner, str))
                or not _amount_ok(eps) or not _amount_ok(delta) or float(delta) >= 1):
            return None
    workers = {**defaults["daemon"], **raw.get("daemon", {})}.get("workers")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        return None
    state = {**defaults["paths"], **raw.get("paths", {})}.get("state")
    if not isinstance(state, str):
        return None
    float(budget.get("approx_delta_share", 0.1))  # Ledger.from_settings: raises (click reports) where it would
    state = os.path.expanduser(os.path.expandvars(state))  # Settings._path
    return {"budget": budget, "ledger": os.path.join(root, state, "ledger.db")}


def resolve_home(home: str | None) -> str:
    """config.resolve_home without pathlib: `Path(h).expanduser().resolve()` is `os.path.realpath`."""
    if home is None:
        home = os.environ.get("PANDACEAD_HOME") or os.getcwd()
    return os.path.realpath(os.path.expanduser(home))


# --------------------------------------------------------------------------- the ledger

_USER_COLUMNS = "user_id, epsilon_budget, delta_budget, epsilon_spent, delta_spent, epsilon_reserved, delta_reserved"


def _summary(conn: Any, row: tuple[Any, ...] | None, user_id: str, budget: dict[str, Any]) -> dict[str, Any]:
    """`Ledger.summary(user_id)`: `Budget.to_dict()` of the row (or of the defaults), then the mode's figures."""
    if row is None:
        uid, eb, db, es, ds, er, dr, known = (user_id, float(budget["default_epsilon"]),
                                              float(budget["default_delta"]), 0.0, 0.0, 0.0, 0.0, False)
    else:
        uid, eb, db, es, ds, er, dr = row
        known = True
    out: dict[str, Any] = {
        "user_id": uid, "epsilon_budget": eb, "epsilon_spent": es, "epsilon_reserved": er,
        "epsilon_remaining": max(0.0, eb - es - er), "delta_budget": db, "delta_spent": ds,
        "delta_reserved": dr, "delta_remaining": max(0.0, db - ds - dr), "known": known,
        "composition": budget["composition"],
    }
    if budget["composition"] == "rdp" and known:
        from pandacead.ledger import filter_state

        s = filter_state.summarize_kept(
            *filter_state.kept_state(conn, "account", user_id), eb, db, "rdp",
            float(budget.get("approx_delta_share", 0.1)),
        )
        out.update(
            epsilon_spent=s.epsilon_spent, epsilon_reserved=s.epsilon_reserved,
            epsilon_remaining=s.epsilon_remaining, delta_spent=s.delta_spent,
            delta_reserved=s.delta_reserved, best_order=s.best_order,
        )
    out["basic_epsilon_spent"] = es
    out["basic_delta_spent"] = ds
    return out


def _uri(path: str) -> str:
    return "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=ro"


def read(ledger: str, user: str | None, budget: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rows `budget show [USER]` prints, from one read-only snapshot; None where the click path may differ."""
    try:  # the C module itself: `sqlite3` adds only the date/time adapters (and imports datetime)
        import _sqlite3 as sqlite3
    except ImportError:  # pragma: no cover
        import sqlite3  # type: ignore[no-redef]

    conn = sqlite3.connect(_uri(ledger), uri=True, timeout=60.0, isolation_level=None)
    try:
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            return None  # Ledger switches it to WAL first
        conn.execute("BEGIN")
        applied = {r[0] for r in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (data["migration_set"],))}
        if any(name not in applied for name in data["migrations"]):
            return None  # Ledger would migrate first
        if user:  # cli.py: `if user` (an empty USER shows every account)
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user,)).fetchone()
            rows = [_summary(conn, row, user, budget)]
        else:
            users = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY user_id").fetchall()
            rows = [_summary(conn, r, r[0], budget) for r in users]
        conn.execute("COMMIT")
        return rows
    finally:
        conn.close()


def show(home: str | None, user: str | None, data: dict[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """(rows, composition) of `budget show [USER] [--home HOME]`, or None: ask click."""
    if sys.version_info < (3, 11):
        return None
    if any(k.startswith("PANDACEAD_") and "__" in k for k in os.environ):
        return None
    s = settings(resolve_home(home), data)
    if s is None or not os.path.exists(s["ledger"]):
        return None
    # Ledger opens its migration lock for appending and the file read-write: where this user could
    # not, the click command fails; it reports that, not this reader.
    lock = s["ledger"] + ".migrate.lock"
    if not (os.access(lock, os.W_OK) if os.path.exists(lock) else os.access(os.path.dirname(lock), os.W_OK)):
        return None
    if not os.access(s["ledger"], os.W_OK):
        return None
    rows = read(s["ledger"], user, s["budget"], data)
    return None if rows is None else (rows, s["budget"]["composition"])
