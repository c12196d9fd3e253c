"""The audit's `after` of a reservation and a commit is computed, not read back (#20 item 5): it must
be exactly the account row the transaction left, float for float, including the dust rounding."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

from pandacead.ledger import Ledger
from pandacead.ledger.core import _budget_fields


def test_audit_after_is_the_row_left_behind(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db", default_epsilon=1e6, default_delta=0.9)
    rng = random.Random(5)
    try:
        open_jobs: list[tuple[str, float, float]] = []
        for i in range(60):
            if open_jobs and rng.random() < 0.5:
                jid, e, d = open_jobs.pop(rng.randrange(len(open_jobs)))
                led.commit(jid, e * rng.choice([1.0, rng.random()]), d * rng.choice([1.0, rng.random()]),
                           durable=rng.random() < 0.5)
            else:
                e = rng.choice([0.1, 1e-5, 1 / 3, 0.7, rng.random() * 10, 1e-13])
                d = rng.choice([1e-5, 1e-7, 3e-19 + 1e-6, rng.random() * 1e-3])
                jid = f"j{i}"
                led.reserve(jid, f"u{i % 3}", SimpleNamespace(epsilon=e, delta=d), "mock", dataset="synthetic")
                open_jobs.append((jid, e, d))
            last = led.audit()[-1]
            row = led._user_row(last["user_id"])
            assert json.loads(last["after"]) == _budget_fields(row), last["event"]
            assert last["after"] == json.dumps(_budget_fields(row), sort_keys=True)
    finally:
        led.close()
