"""(d) CLI start-up: `pandacead --help` and `pandacead budget show` against `python -c pass`.

    .venv/bin/python bench/bench_startup.py [--runs 15]

Wall time of whole processes (spawn to exit), the venv's `python` and its
`pandacead` command (the wheel script scripts/pandacead), on a home whose ledger has a few users. The
commands take turns, run after run, and each figure is the median of
`--runs` runs. Also reported, as context rather than targets: `python -c
"import click"` (the CLI framework alone) and the slowest imports of
`budget show` from `python -X importtime` (cumulative microseconds).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BIN, PANDACEAD, bench_root, clean_env, make_home, median, rm_tree  # noqa: E402


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.decode(errors='replace').strip()}")
    return dt


def import_profile(cmd: list[str], env: dict[str, str], top: int = 6) -> list[dict[str, Any]]:
    """The slowest top-level imports of a command (cumulative ms, `-X importtime`), each with its slowest child."""
    r = subprocess.run([str(BIN / "python"), "-X", "importtime", *cmd], capture_output=True, env=env)
    tops: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # importtime prints children before their parent
    for line in r.stderr.decode(errors="replace").splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        depth = len(m.group(3)) // 2
        entry = {"module": m.group(4), "cumulative_ms": int(m.group(2)) / 1000}
        if depth == 1:
            pending.append(entry)
        elif depth == 0:
            entry["slowest_child"] = max(pending, key=lambda e: e["cumulative_ms"]) if pending else None
            tops.append(entry)
            pending = []
    tops.sort(key=lambda e: -e["cumulative_ms"])
    return tops[:top]


def run(runs: int = 15) -> dict[str, Any]:
    root = bench_root()
    home = make_home(root / "home")
    from pandacead.config import load_settings
    from pandacead.ledger import Ledger

    led = Ledger.from_settings(load_settings(home, environ={}), actor="bench")
    for u in ("alice", "bob", "carol"):
        led.set_budget(u, 5.0)
    led.close()
    env = clean_env(PANDACEAD_HOME=str(home))
    cmds = {
        "python -c pass": [str(BIN / "python"), "-c", "pass"],
        "pandacead --help": [str(PANDACEAD), "--help"],
        "pandacead budget show": [str(PANDACEAD), "budget", "show"],
        "python -c 'import click'": [str(BIN / "python"), "-c", "import click"],
    }
    for cmd in cmds.values():  # page cache, .pyc files
        _time(cmd, env)
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            samples[name].append(_time(cmd, env))
    base = median(samples["python -c pass"])
    res = {
        "runs": runs,
        "median_s": {k: median(v) for k, v in samples.items()},
        "ratios": {
            "help": median(samples["pandacead --help"]) / base,
            "budget_show": median(samples["pandacead budget show"]) / base,
            "import_click": median(samples["python -c 'import click'"]) / base,
        },
        # What the command imports (its click-free paths), and what the click command would.
        "budget_show_imports": import_profile([str(PANDACEAD), "budget", "show"], env),
        "help_imports": import_profile([str(PANDACEAD), "--help"], env),
        "budget_show_imports_click": import_profile(["-m", "pandacead.cli", "budget", "show"], env),
    }
    rm_tree(root)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    print(json.dumps(run(a.runs), indent=2))


if __name__ == "__main__":
    main()
