"""Private hyperparameter search: its price (Papernot & Steinke), its secrecy, and one released model."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest

from pandacead import accounting, tuning
from pandacead.accounting import RDP_ORDERS, conversion_term, curve_to_json, order_weights
from pandacead.errors import JobRejected
from pandacead.jobs import parse_job

SHAPES = {"logarithmic": 0.0, "geometric": 1.0, "negative_binomial": 0.5, "poisson": math.inf}


def _dp_accounting():
    return pytest.importorskip("dp_accounting")


def _base_event(q: float, sigma: float, steps: int):
    de = _dp_accounting().dp_event
    return de.SelfComposedDpEvent(de.PoissonSampledDpEvent(q, de.GaussianDpEvent(sigma)), steps)


def _rdp(event, orders):
    from dp_accounting.rdp import rdp_privacy_accountant as ra

    acc = ra.RdpAccountant(orders=list(orders))
    acc.compose(event)
    return list(acc._rdp)


@pytest.mark.parametrize("distribution", sorted(SHAPES))
@pytest.mark.parametrize("sigma", [2.6, 1.5, 1.1])
def test_search_curve_equals_dp_accounting_repeat_and_select(distribution, sigma):
    de = _dp_accounting().dp_event
    base_event = _base_event(0.04, sigma, 250)
    base = dict(zip(RDP_ORDERS, _rdp(base_event, RDP_ORDERS)))
    ours = tuning.repeat_and_select(base, 10.0, SHAPES[distribution])
    ref = _rdp(de.RepeatAndSelectDpEvent(base_event, 10.0, SHAPES[distribution]), RDP_ORDERS)
    for a, r in zip(RDP_ORDERS, ref):
        if math.isfinite(r):
            assert ours[a] >= r * (1 - 1e-12), (a, ours[a], r)  # never below the reference
            assert ours[a] == pytest.approx(r, rel=1e-9)


def test_a_search_of_ten_costs_a_small_multiple_of_one_run_not_ten():
    de = _dp_accounting().dp_event
    for sigma in (2.6, 1.5, 1.1):
        base = accounting.subsampled_gaussian_rdp(0.04, sigma, 250)
        one, _ = accounting.rdp_to_dp(base, 1e-5)
        for distribution, hi in (("logarithmic", 1.9), ("geometric", 2.2), ("poisson", 2.4)):
            search = tuning.repeat_and_select(base, 10.0, SHAPES[distribution])
            eps, _ = accounting.rdp_to_dp(search, 1e-5)
            assert 1.3 * one < eps <= hi * one, (sigma, distribution, eps / one)
            assert eps < 3 * one < 10 * one
    assert de  # dp-accounting is the reference the curves are checked against above


@pytest.mark.parametrize("distribution,shape", [("logarithmic", None), ("geometric", None),
                                                ("negative_binomial", 2.0), ("poisson", None)])
def test_candidate_count_law_has_the_requested_mean(distribution, shape):
    total = sum(tuning.count_pmf(k, distribution, 10.0, shape) for k in range(0, 4000))
    mean = sum(k * tuning.count_pmf(k, distribution, 10.0, shape) for k in range(0, 4000))
    assert total == pytest.approx(1.0, abs=1e-6)
    assert mean == pytest.approx(10.0, rel=1e-5)
    import random

    rng = random.Random(7)
    draws = [tuning.sample_count(rng.random(), distribution, 10.0, shape) for _ in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(10.0, rel=0.15)


def test_search_block_is_validated_with_every_problem_named():
    bad = (
        b'{"job_id": "s", "user_id": "u", "dp": {"epsilon": 1},'
        b' "search": {"candidates": {"distribution": "negative_binomial", "mean": 0.5},'
        b' "space": {"learning_rate": {"low": 1.0, "high": 0.1}}}}'
    )
    with pytest.raises(JobRejected) as exc:
        parse_job(bad)
    text = "\n".join(exc.value.details)
    assert "search.candidates.mean" in text and "shape" in text and "learning_rate" in text
    job = parse_job(b'{"job_id": "s", "user_id": "u", "dp": {"epsilon": 1}, "search": {"candidates": {"mean": 10}}}')
    assert job.search == {"candidates": {"mean": 10}}


def test_search_charged_under_rdp_fits_the_filter_exactly_at_the_boundary(tmp_path: Path):
    from pandacead.ledger import Ledger

    base = accounting.subsampled_gaussian_rdp(0.04, 2.6, 250)
    search = tuning.repeat_and_select(base, 10.0, 0.0)
    one_search_eps, _ = accounting.rdp_to_dp(search, 1e-6)
    plan = types.SimpleNamespace(epsilon=one_search_eps, delta=1e-6, noise_multiplier=None, sample_rate=None,
                                 steps=None, accountant="rdp-repeat-and-select", rdp=curve_to_json(search))
    budget_eps, budget_delta = 12.0, 1e-5
    led = Ledger(tmp_path / "r.db", default_epsilon=budget_eps, default_delta=budget_delta, composition="rdp")
    n = 0
    while n < 200:
        try:
            led.reserve(f"s{n}", "u", plan, "opacus", owner="t")
        except JobRejected:
            break
        led.commit(f"s{n}", plan.epsilon, plan.delta)
        n += 1
    # The filter's rule computed independently: n searches fit, n + 1 do not.
    d_r = budget_delta * (1 - accounting.APPROX_DELTA_SHARE)
    w = order_weights(budget_eps, d_r)

    def eps_for(k: int) -> float:
        return min(k * search[a] + conversion_term(a, wa * d_r) for a, wa in zip(RDP_ORDERS, w))

    assert eps_for(n) <= budget_eps < eps_for(n + 1)
    assert n > budget_eps / one_search_eps  # the filter beats adding the searches' ε
    stored = accounting.curve_from_json(led.spend("s0")["rdp"])
    assert stored == pytest.approx(tuple(search[a] for a in RDP_ORDERS))
