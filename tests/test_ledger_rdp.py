"""The ledger in `rdp` mode: a Rényi filter admits many more DP-SGD jobs, never one too many."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pandacead.accounting import (
    RDP_ORDERS,
    curve_to_json,
    gaussian_noise_for,
    subsampled_gaussian_rdp,
)
from pandacead.errors import JobRejected
from pandacead.ledger import Ledger

Q, STEPS, JOB_DELTA = 32 / 800, 250, 1e-6


@pytest.fixture(scope="module")
def sigma() -> float:
    return gaussian_noise_for(1.0, JOB_DELTA, Q, STEPS)


def dpsgd_plan(sigma: float) -> types.SimpleNamespace:
    curve = subsampled_gaussian_rdp(Q, sigma, STEPS)
    return types.SimpleNamespace(
        epsilon=1.0, delta=JOB_DELTA, noise_multiplier=sigma, sample_rate=Q, steps=STEPS,
        accountant="rdp", rdp=curve_to_json(curve),
    )


def fill(led: Ledger, user: str, plan, prefix: str) -> int:
    n = 0
    while n < 1000:
        try:
            led.reserve(f"{prefix}{n}", user, plan, "opacus", owner="t")
        except JobRejected:
            return n
        led.commit(f"{prefix}{n}", plan.epsilon, plan.delta)
        n += 1
    raise AssertionError("the filter never closed")


def test_rdp_admits_at_least_six_times_as_many_jobs_as_basic(tmp_path: Path, sigma):
    basic = Ledger(tmp_path / "b.db", default_epsilon=10, default_delta=1e-5, composition="basic")
    rdp = Ledger(tmp_path / "r.db", default_epsilon=10, default_delta=1e-5, composition="rdp")
    n_basic = fill(basic, "u", dpsgd_plan(sigma), "b")
    n_rdp = fill(rdp, "u", dpsgd_plan(sigma), "r")
    assert n_basic == 10
    assert n_rdp >= 6 * n_basic
    s = rdp.summary("u")
    assert s["composition"] == "rdp" and s["epsilon_spent"] <= 10.0 * (1 + 1e-9)
    assert s["basic_epsilon_spent"] == pytest.approx(n_rdp)


def test_filter_refuses_exactly_when_the_next_job_would_break_it(tmp_path: Path, sigma):
    led = Ledger(tmp_path / "r.db", default_epsilon=10, default_delta=1e-5, composition="rdp")
    n = fill(led, "u", dpsgd_plan(sigma), "j")
    before = led.summary("u")
    with pytest.raises(JobRejected, match="rdp"):
        led.reserve("one-more", "u", dpsgd_plan(sigma), "opacus")
    assert led.summary("u") == before and led.spend("one-more") is None
    # a much smaller job may still fit in what is left
    small = types.SimpleNamespace(**{**vars(dpsgd_plan(sigma * 8)), "epsilon": 0.05})
    small.rdp = curve_to_json(subsampled_gaussian_rdp(Q, sigma * 8, 10))
    small.steps = 10
    led.reserve("small", "u", small, "opacus")
    assert led.summary("u")["epsilon_spent"] + led.summary("u")["epsilon_reserved"] <= 10.0 * (1 + 1e-9)
    assert n > 60


def test_mixed_backends_and_switching_modes_stay_conservative(tmp_path: Path, sigma):
    path = tmp_path / "m.db"
    led = Ledger(path, default_epsilon=10, default_delta=1e-5, composition="basic")
    mock = types.SimpleNamespace(epsilon=1.0, delta=1e-7)  # declares only (ε, δ)
    for i in range(3):
        led.reserve(f"basic{i}", "u", mock, "mock")
        led.commit(f"basic{i}", 1.0, 1e-7)
    led.close()
    led = Ledger(path, default_epsilon=10, default_delta=1e-5, composition="rdp")
    s = led.summary("u")
    assert s["epsilon_spent"] == pytest.approx(3.0)  # basic-era spends stay charged in full
    n = fill(led, "u", dpsgd_plan(sigma), "r")
    assert 10 < n < 70  # more than basic would allow in what is left, fewer than a fresh budget
    final = led.summary("u")
    assert final["epsilon_spent"] <= 10.0 * (1 + 1e-9)


def test_rdp_curves_are_stored_with_each_spend(tmp_path: Path, sigma):
    led = Ledger(tmp_path / "c.db", composition="rdp", default_delta=1e-5)
    led.reserve("x", "u", dpsgd_plan(sigma), "opacus")
    row = led.spend("x")
    assert row["noise_multiplier"] == pytest.approx(sigma) and row["steps"] == STEPS
    assert row["composition"] == "rdp" and str(RDP_ORDERS[0]) in row["rdp"]
