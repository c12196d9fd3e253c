"""Checks of DESIGN.md's invariants on a home after a run, shared by the reliability tests.

Each check raises AssertionError naming what broke; `check_settled_home` runs
them all and returns figures for the test's report.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import ledger

SLACK = 1e-9


@dataclass
class Outbox:
    artifacts: set[str] = field(default_factory=set)
    envelopes: set[str] = field(default_factory=set)
    errors: set[str] = field(default_factory=set)
    temp: list[str] = field(default_factory=list)

    @property
    def outcomes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for j in self.artifacts:
            out[j] = "artifact"
        for j in self.errors:
            out[j] = out.get(j, "") + "error"
        return out


def read_outbox(home: Path) -> Outbox:
    ob = Outbox()
    for name in os.listdir(home / "outbox"):
        if name.startswith("."):
            ob.temp.append(name)
        elif name.endswith(".error.json"):
            ob.errors.add(name[: -len(".error.json")])
        elif name.endswith(".dsse.json"):
            ob.envelopes.add(name[: -len(".dsse.json")])
        elif name.endswith(".json"):
            ob.artifacts.add(name[:-5])
    return ob


def spool_files(home: Path) -> list[Path]:
    root = home / "state" / "spool"
    if not root.exists():
        return []
    return [p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if not p.name.startswith(".")]


def inbox_candidates(home: Path) -> list[str]:
    return [n for n in os.listdir(home / "inbox") if n.endswith(".json") and not n.startswith(".")]


def check_nothing_pending(home: Path) -> None:
    assert inbox_candidates(home) == [], f"job files left in the inbox: {inbox_candidates(home)[:5]}"
    left = spool_files(home)
    assert left == [], f"job files left in the spool: {[p.name for p in left][:5]}"
    temp = read_outbox(home).temp
    assert temp == [], f"temporary files left in the outbox: {temp[:5]}"


def verify_all(home: Path, job_ids: set[str]) -> int:
    """Run `pandacead verify` (the click command, in this process) on each artifact."""
    from click.testing import CliRunner

    from pandacead.cli import cli

    runner = CliRunner()
    for jid in sorted(job_ids):
        r = runner.invoke(cli, ["verify", str(home / "outbox" / f"{jid}.json"), "--home", str(home)])
        assert r.exit_code == 0, f"{jid}.json does not verify: {r.output}"
    return len(job_ids)


def check_ledger_matches_outbox(home: Path, ob: Outbox | None = None) -> dict[str, Any]:
    """Charged exactly once: committed spends are exactly the artifacts, with their ε and δ."""
    ob = ob or read_outbox(home)
    led = ledger(home)
    try:
        reserved = led.spends(state="reserved")
        assert reserved == [], f"reservations left: {[s['job_id'] for s in reserved]}"
        committed = {s["job_id"]: s for s in led.spends(state="committed")}
        assert set(committed) == ob.artifacts, (
            f"committed without artifact: {sorted(set(committed) - ob.artifacts)[:5]};"
            f" artifact without commit: {sorted(ob.artifacts - set(committed))[:5]}"
        )
        assert ob.envelopes == ob.artifacts, (
            f"envelope without artifact: {sorted(ob.envelopes - ob.artifacts)[:5]};"
            f" artifact without envelope: {sorted(ob.artifacts - ob.envelopes)[:5]}"
        )
        per_user: dict[str, list[float]] = defaultdict(list)
        per_user_delta: dict[str, list[float]] = defaultdict(list)
        for jid, s in committed.items():
            art = json.loads((home / "outbox" / f"{jid}.json").read_text())
            assert art["user_id"] == s["user_id"]
            assert s["epsilon"] == art["epsilon"], f"{jid}: charged ε {s['epsilon']} but artifact says {art['epsilon']}"
            assert s["delta"] == art["dp"]["delta"]
            assert s["epsilon"] <= s["epsilon_reserved"] * (1 + SLACK)
            per_user[s["user_id"]].append(s["epsilon"])
            per_user_delta[s["user_id"]].append(s["delta"])
        for b in led.budgets():
            assert b.epsilon_reserved == 0 and b.delta_reserved == 0, f"{b.user_id} keeps a reservation"
        released = led.spends(state="released")
        for s in released:
            assert s["job_id"] not in ob.artifacts, f"{s['job_id']} was released but has an artifact"
        return {
            "committed": len(committed), "released": len(released),
            "spent": {u: math.fsum(v) for u, v in per_user.items()},
            "delta_spent": {u: math.fsum(v) for u, v in per_user_delta.items()},
        }
    finally:
        led.close()


def check_audit(home: Path) -> dict[str, Any]:
    """No lost update and no overspend, from the append-only audit log alone.

    * Every audited change of a user row starts from the state the previous one
      left (`before` == previous `after`): no write was lost or interleaved.
    * At every reservation, spent + reserved <= budget (basic composition).
    * Replaying committed spends and resets gives the final `epsilon_spent`, and
      the sum of all committed ε equals epsilon_spent plus what resets forgot.
    """
    led = ledger(home)
    try:
        events = led.audit()
        users = {b.user_id: b for b in led.budgets()}
    finally:
        led.close()
    last: dict[str, dict[str, Any]] = {}
    replay: dict[str, float] = defaultdict(float)
    committed: dict[str, list[float]] = defaultdict(list)
    forgotten: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for ev in events:
        uid = ev["user_id"]
        counts[ev["event"]] += 1
        before = json.loads(ev["before"]) if ev["before"] else None
        after = json.loads(ev["after"]) if ev["after"] else None
        if uid is None or after is None:
            continue
        if before is not None:
            assert uid in last, f"audit event {ev['id']} ({ev['event']}) for {uid} before the user was created"
            assert before == last[uid], (
                f"lost update: audit event {ev['id']} ({ev['event']}, {uid}) started from {before},"
                f" but the previous event left {last[uid]}"
            )
        last[uid] = after
        detail = json.loads(ev["detail"]) if ev["detail"] else {}
        if ev["event"] == "reserved":
            used = after["epsilon_spent"] + after["epsilon_reserved"]
            assert used <= after["epsilon_budget"] * (1 + SLACK) + 1e-12, f"overspend at audit event {ev['id']}: {after}"
            used_d = after["delta_spent"] + after["delta_reserved"]
            assert used_d <= after["delta_budget"] * (1 + SLACK) + 1e-18, f"δ overspend at audit event {ev['id']}"
        elif ev["event"] == "committed":
            replay[uid] += detail["epsilon"]
            committed[uid].append(detail["epsilon"])
        elif ev["event"] == "budget_reset":
            forgotten[uid].append(before["epsilon_spent"] if before else 0.0)
            replay[uid] = 0.0
    for uid, b in users.items():
        assert last.get(uid) is not None, f"{uid} has no audit trail"
        assert math.isclose(replay[uid], b.epsilon_spent, rel_tol=1e-9, abs_tol=1e-12), (
            f"{uid}: replaying the audit log gives ε spent {replay[uid]}, the ledger says {b.epsilon_spent}"
        )
        assert math.isclose(
            math.fsum(committed[uid]), b.epsilon_spent + math.fsum(forgotten[uid]), rel_tol=1e-9, abs_tol=1e-12
        ), f"{uid}: committed spends do not add up to ε spent plus resets"
        assert last[uid]["epsilon_spent"] == b.epsilon_spent and last[uid]["epsilon_reserved"] == b.epsilon_reserved
    return {"events": len(events), **dict(counts)}


def check_jobs_table(home: Path) -> dict[str, int]:
    """One terminal `jobs` row per spooled file: no file processed twice, none left running."""
    led = ledger(home)
    try:
        rows = led.jobs()
    finally:
        led.close()
    files = [r["file"] for r in rows]
    dup = {f for f in files if files.count(f) > 1}
    assert not dup, f"files with more than one jobs row: {sorted(dup)[:5]}"
    running = [r["job_id"] for r in rows if r["status"] not in ("succeeded", "rejected", "failed")]
    assert not running, f"jobs not settled: {running[:5]}"
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r["status"]] += 1
    return dict(out)


def check_settled_home(home: Path, *, verify: bool = True) -> dict[str, Any]:
    ob = read_outbox(home)
    check_nothing_pending(home)
    figures = {"ledger": check_ledger_matches_outbox(home, ob), "audit": check_audit(home),
               "jobs": check_jobs_table(home)}
    if verify:
        figures["verified"] = verify_all(home, ob.artifacts)
    return figures


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. a home path): no orphans left."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(int(pid))
    return out


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every entry under root, not following links."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            snap[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return snap
