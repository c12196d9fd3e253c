"""Ledger cost against history (issue #20 items 1 and 7): admission, `budget show`, `budget history`.

    .venv/bin/python bench/bench_ledger.py [--runs 25] [--big 10000] [--show-jobs 100000] [--write-docs]

- reserve under `rdp` on a ledger whose paying account (and dataset) has 10
  past jobs vs `--big` past jobs: the median `Ledger.reserve` (each followed,
  untimed, by its commit, so every reservation meets the same history);
  next to it the old path's cost at both sizes (`admit` over every past
  spend re-read with `_accounting_spends`, what `reserve` did before).
- `pandacead budget show` (whole processes, byte-compiled) on an rdp home
  with `--show-jobs` committed jobs over 10 accounts vs a home with the same
  10 accounts and no jobs, taking turns; and the in-process `Ledger.summary`
  of every account.
- the audit query of `budget history USER` with the account index vs a full scan, for an
  account with a tenth of the log and for one with two entries.
- the migration that builds the kept state for the `--show-jobs` ledger.

Histories are written by SQL in one transaction (rows as `reserve` + `commit`
write them, one Gaussian curve), then the kept state is built by the
migration's own function. Every figure is a median; the ratios are from the
same run. Prints one JSON object (load average included); `--write-docs`
also replaces its section of docs/benchmarks.md (between the bench_ledger markers).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PANDACEAD, bench_root, clean_env, make_home, median, rm_tree  # noqa: E402

from pandacead.accounting import Spend, admit, curve_to_json, job_curve, subsampled_gaussian_rdp  # noqa: E402
from pandacead.ledger import Ledger, filter_state  # noqa: E402

Q, SIGMA, STEPS = 0.01, 1.1, 500
RDP_TOML = 'composition = "rdp"\n'
BEGIN, END = "<!-- bench_ledger:begin -->", "<!-- bench_ledger:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def plan() -> SimpleNamespace:
    return SimpleNamespace(
        epsilon=0.5, delta=1e-7, rdp=curve_to_json(subsampled_gaussian_rdp(Q, SIGMA, STEPS)),
        noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS, accountant="rdp",
    )


def fill(path: Path, jobs: int, accounts: int, dataset: str = "bench") -> float:
    """`jobs` committed rdp spends (with their audit rows) over `accounts`; returns the migration's seconds."""
    led = Ledger(path, default_epsilon=1e9, default_delta=0.5, composition="rdp", dataset_epsilon=1e9,
                 dataset_delta=0.5)
    for a in range(accounts):
        led.add_account(f"u{a}", 1e9, 0.5)
    led.add_account("fresh", 1.0, 1e-5)  # an account with two audit entries on a big log
    p = plan()
    curve = json.dumps(job_curve(p.rdp, p.noise_multiplier, p.sample_rate, p.steps))
    ts = "2026-12-01T00:00:00.000000Z"
    conn = led.conn
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO spends (scope, job_id, user_id, dataset, state, backend, epsilon_reserved, delta_reserved,"
        " epsilon, delta, noise_multiplier, sample_rate, steps, accountant, rdp, composition, owner, reserved_at,"
        " settled_at) VALUES ('', ?, ?, ?, 'committed', 'opacus', ?, ?, ?, ?, ?, ?, ?, 'rdp', ?, 'rdp', 'b', ?, ?)",
        ((f"h{i}", f"u{i % accounts}", dataset, p.epsilon, p.delta, p.epsilon, p.delta, SIGMA, Q, STEPS, curve,
          ts, ts) for i in range(jobs)),
    )
    conn.executemany(
        "INSERT INTO audit (at, event, user_id, job_id, actor, detail) VALUES (?, ?, ?, ?, 'bench', '{}')",
        ((ts, ev, f"u{i % accounts}", f"h{i}") for i in range(jobs) for ev in ("reserved", "committed")),
    )
    conn.execute(f"UPDATE users SET epsilon_spent = {p.epsilon} * (SELECT count(*) FROM spends"
                 " WHERE spends.user_id = users.user_id)")
    conn.execute("DELETE FROM filter_state")
    t = time.perf_counter()
    filter_state.build_all(conn)  # what migration m005 runs on an existing ledger
    dt = time.perf_counter() - t
    conn.execute("COMMIT")
    led.close()
    return dt


def bench_reserve(tmp: Path, big: int, runs: int) -> dict[str, Any]:
    paths = {"small": tmp / "small.db", "big": tmp / "big.db"}
    fill(paths["small"], 10, 1)
    fill(paths["big"], big, 1)
    leds = {k: Ledger(p, default_epsilon=1e9, default_delta=0.5, composition="rdp", dataset_epsilon=1e9,
                      dataset_delta=0.5) for k, p in paths.items()}
    p = plan()
    times: dict[str, list[float]] = {k: [] for k in leds}
    old: dict[str, list[float]] = {k: [] for k in leds}
    curve = job_curve(p.rdp, p.noise_multiplier, p.sample_rate, p.steps)
    for i in range(runs + 2):
        for k, led in leds.items():
            t = time.perf_counter()
            led.reserve(f"r{i}", "u0", p, "opacus", owner="b", dataset="bench")
            dt = time.perf_counter() - t
            led.commit(f"r{i}", p.epsilon, p.delta)
            t = time.perf_counter()
            admit(led._accounting_spends("u0"), Spend(p.epsilon, p.delta, curve, "rdp"), 1e9, 0.5, mode="rdp")
            dt_old = time.perf_counter() - t
            if i >= 2:  # warm-up: first connection use, the curve cache
                times[k].append(dt)
                old[k].append(dt_old)
    for led in leds.values():
        led.close()
    small, large = median(times["small"]), median(times["big"])
    return {
        "past_jobs": [10, big],
        "reserve_ms": [round(small * 1e3, 3), round(large * 1e3, 3)],
        "ratio": round(large / small, 3),
        "old_account_filter_ms": [round(median(old["small"]) * 1e3, 3), round(median(old["big"]) * 1e3, 3)],
    }


def bench_show(tmp: Path, jobs: int, runs: int) -> dict[str, Any]:
    from pandacead.config import load_settings

    homes = {}
    for k in ("empty", "full"):
        h = make_home(tmp / f"home-{k}")
        cfg = h / "pandacead.toml"
        cfg.write_text(cfg.read_text().replace("[budget]\n", "[budget]\n" + RDP_TOML, 1))
        homes[k] = h
    full_path = Path(load_settings(homes["full"], environ={}).ledger_path)
    migration_s = fill(full_path, jobs, 10)
    fill(Path(load_settings(homes["empty"], environ={}).ledger_path), 0, 10)  # the same accounts, no history
    env = clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a real install is byte-compiled
    cli: dict[str, list[float]] = {k: [] for k in homes}
    inproc: dict[str, list[float]] = {k: [] for k in homes}
    for i in range(runs + 1):
        for k, h in homes.items():
            t = time.perf_counter()
            r = subprocess.run([str(PANDACEAD), "budget", "show", "--home", str(h), "--json"], env=env,
                               capture_output=True)
            dt = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(r.stderr.decode(errors="replace"))
            t = time.perf_counter()
            led = Ledger(load_settings(h, environ={}).ledger_path, composition="rdp")
            for b in led.budgets():
                led.summary(b.user_id)
            led.close()
            dt_in = time.perf_counter() - t
            if i:
                cli[k].append(dt)
                inproc[k].append(dt_in)
    conn = sqlite3.connect(full_path)
    hist: dict[str, list[float]] = {"busy_index": [], "busy_scan": [], "fresh_index": [], "fresh_scan": []}
    for _ in range(runs):
        for who, uid in (("busy", "u3"), ("fresh", "fresh")):
            for k, hint in (("index", ""), ("scan", " NOT INDEXED")):
                t = time.perf_counter()
                conn.execute(f"SELECT * FROM audit{hint} WHERE user_id = ? ORDER BY id", (uid,)).fetchall()
                hist[f"{who}_{k}"].append(time.perf_counter() - t)
    conn.close()
    e, f = median(cli["empty"]), median(cli["full"])
    ie, if_ = median(inproc["empty"]), median(inproc["full"])
    return {
        "jobs": jobs,
        "accounts": 10,
        "budget_show_ms": [round(e * 1e3, 1), round(f * 1e3, 1)],
        "budget_show_ratio": round(f / e, 3),
        "summary_in_process_ms": [round(ie * 1e3, 2), round(if_ * 1e3, 2)],
        "summary_in_process_ratio": round(if_ / ie, 3),
        "history_audit_query_ms": {k: round(median(v) * 1e3, 2) for k, v in hist.items()},
        "migration_builds_kept_state_s": round(migration_s, 2),
    }


def render(r: dict[str, Any], when: str) -> str:
    rs, bs = r["reserve"], r["budget_show"]
    h = bs["history_audit_query_ms"]
    return f"""{BEGIN}
## Ledger cost against history (bench/bench_ledger.py)

`rdp` composition, one Gaussian curve per job (q = {Q}, σ = {SIGMA}, {STEPS} steps), ledgers on
the scratch disk (synchronous = FULL); measured {when} (load average {r["loadavg_before_after"][0]} at
the start and {r["loadavg_before_after"][1]} at the end, {r["cpus"]} CPUs shared with other work). Ratios
are from the same run, the two sides taking turns.

| measurement | small history | large history | ratio | target |
|---|---|---|---|---|
| `Ledger.reserve` (account + dataset filter), median | {rs["reserve_ms"][0]} ms at {rs["past_jobs"][0]} past jobs | {rs["reserve_ms"][1]} ms at {rs["past_jobs"][1]} | {rs["ratio"]}× | ≤ 1.2× |
| the old path: the account's filter re-read from every spend | {rs["old_account_filter_ms"][0]} ms | {rs["old_account_filter_ms"][1]} ms | {rs["old_account_filter_ms"][1] / rs["old_account_filter_ms"][0]:.0f}× | |
| `pandacead budget show --json` (process, byte-compiled) | {bs["budget_show_ms"][0]} ms, 10 accounts, no jobs | {bs["budget_show_ms"][1]} ms, {bs["jobs"]:,} jobs | {bs["budget_show_ratio"]}× | ≤ 2× |
| `Ledger.summary` of every account, in process (open included) | {bs["summary_in_process_ms"][0]} ms | {bs["summary_in_process_ms"][1]} ms | {bs["summary_in_process_ratio"]}× | |
| audit query of `budget history USER`, an account with two entries | scan {h["fresh_scan"]} ms | index {h["fresh_index"]} ms | | |
| the same, an account with a tenth of the log | scan {h["busy_scan"]} ms | index {h["busy_index"]} ms | | |

Admission and `budget show` read the kept filter state (`filter_state` table,
pandacead/ledger/filter_state.py): per account and dataset, the fold of the committed
spends up to a checkpoint, plus the few spends after it (since the oldest reservation still
open); the subsampled-Gaussian curve is memoised and computed before the write lock. What
remains of `reserve` is its fsyncs. The decision is bit-for-bit the fold over every spend
(tests/test_ledger_kept_state.py). Migration `m005_filter_state` builds the state of an
existing ledger once: {bs["migration_builds_kept_state_s"]} s for the {bs["jobs"]:,}-job ledger here.
The audit index (`m006_audit_by_account`) turns the scan into a lookup; for an account that owns
a large share of the log, reading its rows dominates either way.
{END}
"""


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END) + 1
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--show-jobs", type=int, default=100_000)
    ap.add_argument("--write-docs", action="store_true", help="Replace this benchmark's section of docs/benchmarks.md.")
    args = ap.parse_args()
    tmp = bench_root() / f"bench-ledger-{os.getpid()}"
    rm_tree(tmp)
    tmp.mkdir(parents=True)
    try:
        load0 = os.getloadavg()
        out = {
            "reserve": bench_reserve(tmp, args.big, args.runs),
            "budget_show": bench_show(tmp, args.show_jobs, max(5, args.runs // 3)),
            "loadavg_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
            "cpus": os.cpu_count(),
        }
    finally:
        rm_tree(tmp)
    print(json.dumps(out, indent=2))
    if args.write_docs:
        write_docs(render(out, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))


if __name__ == "__main__":
    main()
