"""The kept filter state (ledger/filter_state.py) decides bit-for-bit as the fold over every past spend.

Random histories on a real ledger file: reservations with Gaussian curves and
with declared (ε, δ) only, commits below the reservation, releases, charges
on failure, account and dataset resets, legacy toggles, spends that name no
dataset, and switches between `basic` and `rdp` (a new Ledger on the same
file). After every step, for every account and dataset, the decision on a
probe job and the `budget show` figures computed from the kept state must
equal, to the last bit, those `accounting.admit` / `RenyiFilter.from_spends`
/ `summarize` compute from all the spends.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from pandacead.accounting import (
    RenyiFilter,
    Spend,
    admit,
    curve_to_json,
    job_curve,
    subsampled_gaussian_rdp,
    summarize,
)
from pandacead.errors import JobRejected
from pandacead.ledger import Ledger, filter_state

ACCOUNTS = ("ann", "bob", "cy")
DATASETS = ("d1", "d2", None)  # None: a spend that names no dataset (counts against every dataset)
SIGMAS = (0.8, 1.1, 2.0)
Q, STEPS = 0.02, 200


def plan(rng: random.Random) -> SimpleNamespace:
    eps = rng.choice((0.05, 0.2, 0.7, 1.3))
    if rng.random() < 0.6:
        sigma = rng.choice(SIGMAS)
        return SimpleNamespace(
            epsilon=eps, delta=1e-6, rdp=curve_to_json(subsampled_gaussian_rdp(Q, sigma, STEPS)),
            noise_multiplier=sigma, sample_rate=Q, steps=STEPS, accountant="rdp",
        )
    return SimpleNamespace(epsilon=eps, delta=rng.choice((1e-7, 1e-6)), rdp=None, noise_multiplier=None,
                           sample_rate=None, steps=None, accountant=None)


def exact(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    """repr of fn's result (float reprs round-trip: equal reprs are equal bits), or that it refused."""
    try:
        return repr(fn(*args, **kw))
    except ValueError:
        return "ValueError"


def check(led: Ledger, probe: SimpleNamespace) -> None:
    curve = job_curve(probe.rdp, probe.noise_multiplier, probe.sample_rate, probe.steps)
    job = Spend(probe.epsilon, probe.delta, curve, led.composition)
    targets: list[tuple[str | None, dict | None, float, float]] = []
    for uid in ACCOUNTS:
        b = led.budget(uid)
        targets.append((uid, None, b.epsilon_budget, b.delta_budget))
    for name in ("d1", "d2"):
        ds = led._dataset_view(led.policy(name))
        targets.append((None, ds, ds["epsilon_budget"], ds["delta_budget"]))
    for uid, ds, eb, db in targets:
        spends = led._accounting_spends(uid, ds)
        every, committed = led._kept(uid, ds)
        share = led.approx_delta_share
        assert exact(every.renyi, share) == exact(RenyiFilter.from_spends, spends, share)
        assert exact(committed.renyi, share) == exact(
            RenyiFilter.from_spends, [s for s in spends if not s.reserved], share)
        for mode in ("basic", "rdp"):
            assert exact(filter_state.admit_kept, every, job, eb, db, mode, share) == exact(
                admit, spends, job, eb, db, mode=mode, approx_share=share)
            assert exact(filter_state.summarize_kept, every, committed, eb, db, mode, share) == exact(
                summarize, spends, eb, db, mode, share)


def open_ledger(path: Path, mode: str) -> Ledger:
    return Ledger(path, default_epsilon=6.0, default_delta=1e-4, composition=mode, dataset_epsilon=8.0,
                  dataset_delta=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kept_state_equals_the_fold_over_every_spend(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "l.db"
    led = open_ledger(path, "rdp")
    reserved: list[tuple[str, float, float]] = []  # (job_id, ε reserved, δ reserved)
    admitted = refused = 0
    for step in range(160):
        r = rng.random()
        if r < 0.45 or not reserved:
            p = plan(rng)
            jid = f"j{step}"
            try:
                led.reserve(jid, rng.choice(ACCOUNTS), p, "mock", owner="t", dataset=rng.choice(DATASETS))
                reserved.append((jid, p.epsilon, p.delta))
                admitted += 1
            except JobRejected:
                refused += 1
        elif r < 0.70:
            jid, e, d = reserved.pop(rng.randrange(len(reserved)))
            led.commit(jid, e * rng.choice((1.0, 0.5, 0.9)), d * rng.choice((1.0, 0.3)))
        elif r < 0.82:
            jid, _, _ = reserved.pop(rng.randrange(len(reserved)))
            led.release(jid, "test")
        elif r < 0.88:
            jid, _, _ = reserved.pop(rng.randrange(len(reserved)))
            led.settle_failure(jid, None, "failed", "boom", [], owner="t", file=f"{jid}.json", charge=True)
        elif r < 0.91:
            led.reset(rng.choice(ACCOUNTS))
        elif r < 0.93:
            led.reset_dataset(rng.choice(("d1", "d2")), create=True)
        elif r < 0.95:
            led.set_legacy(rng.choice(("d1", "d2")), rng.random() < 0.5)
        else:  # the admin switches the composition mode: the kept state carries over
            led.close()
            led = open_ledger(path, "basic" if led.composition == "rdp" else "rdp")
        check(led, plan(rng))
    assert admitted > 30 and refused > 0
    # Every commit moved the checkpoint: at most the spends since the oldest open reservation stay in a tail.
    conn = sqlite3.connect(path)
    for uid in ACCOUNTS:
        upto = conn.execute("SELECT upto FROM filter_state WHERE kind = 'account' AND name = ?", (uid,)).fetchone()
        first_open = conn.execute(
            "SELECT min(rowid) FROM spends WHERE user_id = ? AND state = 'reserved'", (uid,)).fetchone()[0]
        last = conn.execute("SELECT max(rowid) FROM spends WHERE user_id = ? AND state = 'committed'"
                            " AND NOT account_forgotten", (uid,)).fetchone()[0]
        if upto is not None and last is not None and (first_open is None or last < first_open):
            assert upto[0] >= last
    conn.close()
    led.close()


def test_the_migration_builds_the_kept_state_for_an_existing_ledger(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    led = open_ledger(path, "rdp")
    rng = random.Random(7)
    for i in range(12):
        p = plan(rng)
        led.reserve(f"j{i}", ACCOUNTS[i % 3], p, "mock", owner="t", dataset=DATASETS[i % 3])
        if i % 4 != 3:
            led.commit(f"j{i}", p.epsilon, p.delta)
    before = {uid: led.summary(uid) for uid in ACCOUNTS}
    ds_before = led.dataset_summary("d1")
    led.close()
    # The ledger as the release before this one left it: no kept state, no migration record.
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE filter_state")
    conn.execute("DROP INDEX spends_user_rowid")
    conn.execute("DROP INDEX spends_dataset_rowid")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_filter_state'")
    conn.commit()
    conn.close()
    led = open_ledger(path, "rdp")
    n = led.conn.execute("SELECT count(*) FROM filter_state").fetchone()[0]
    assert n >= len(ACCOUNTS) + 2
    assert {uid: led.summary(uid) for uid in ACCOUNTS} == before
    assert led.dataset_summary("d1") == ds_before
    check(led, plan(rng))
    plans = led.conn.execute("EXPLAIN QUERY PLAN SELECT * FROM audit WHERE user_id = 'ann' ORDER BY id").fetchall()
    assert any("audit_user" in str(r) for r in plans)
    led.close()


def test_a_malformed_stored_curve_is_refused_as_before(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "bad.db", "rdp")
    rng = random.Random(3)
    p = plan(rng)
    while p.rdp is None:
        p = plan(rng)
    led.reserve("a", "ann", p, "mock", owner="t", dataset="d1")
    led.conn.execute("UPDATE spends SET rdp = '{\"2.0\": -1}' WHERE job_id = 'a'")
    with pytest.raises(JobRejected, match="cannot be computed"):
        led.reserve("b", "ann", p, "mock", owner="t", dataset="d1")
    check(led, p)
    led.close()
