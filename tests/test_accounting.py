"""pandacead.accounting: the RDP port against opacus, and the Rényi filter's rules."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pandacead import accounting as A
from pandacead.accounting import RDP_ORDERS, Charge, RenyiFilter, Spend

BUDGET = (10.0, 1e-5)

# Opacus-shaped ε=1 jobs (δ=1e-6 each): (sample rate, steps, σ). σ is what opacus 1.6's
# get_noise_multiplier(target_epsilon=1, target_delta=1e-6, epsilon_tolerance=1e-3) returns
# with the PRV accountant (the backend's default) and with the RDP accountant (the RDP one is
# re-checked below; the PRV accountant imports torch, too slow for this file).
JOB_SHAPES = {
    "800 rows, batch 32, 10 epochs, prv": (32 / 800, 250, 2.9028),
    "800 rows, batch 32, 10 epochs, rdp": (32 / 800, 250, 3.0835),
    "10000 rows, batch 256, 10 epochs, prv": (256 / 10000, 390, 2.3608),
    "800 rows, batch 64, 5 epochs, prv": (64 / 800, 60, 2.9541),
}


@functools.cache
def opacus_rdp():
    """opacus.accountants.analysis.rdp, loaded from its file: it needs only numpy and scipy,
    while importing the opacus package would import torch (seconds)."""
    spec = importlib.util.find_spec("opacus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("opacus is not installed")
    path = Path(spec.submodule_search_locations[0], "accountants", "analysis", "rdp.py")
    pytest.importorskip("scipy")
    module_spec = importlib.util.spec_from_file_location("_opacus_rdp", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def gaussian_job(q: float, steps: int, sigma: float) -> Spend:
    return Spend(1.0, 1e-6, A.curve_to_json(A.subsampled_gaussian_rdp(q, sigma, steps)), "rdp")


def fill(spends: list[Spend], job: Spend, mode: str, budget=BUDGET, limit=1000) -> int:
    """Reserve copies of ``job`` until one is refused; return how many were admitted."""
    n = 0
    while n < limit:
        decision = A.admit(spends, job, *budget, mode=mode)
        if not decision.ok:
            return n
        spends.append(Spend(job.epsilon, job.delta, job.rdp, mode))
        n += 1
    raise AssertionError("the budget never ran out")


# --------------------------------------------------------------------------- port vs opacus


@pytest.mark.parametrize(
    "q,sigma",
    list(itertools.product([1e-4, 0.004, 0.04, 0.3, 0.9, 1.0], [0.4, 0.8, 1.5, 4.0, 20.0])),
)
def test_subsampled_gaussian_rdp_matches_opacus_compute_rdp(q, sigma):
    rdp = opacus_rdp()
    for steps in (1, 10_000):
        theirs = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(RDP_ORDERS))
        ours = A.subsampled_gaussian_rdp(q, sigma, steps)
        for order, expected in zip(RDP_ORDERS, theirs):
            got = ours[order]
            if math.isinf(expected):
                assert got == expected
                continue
            # Both evaluate the same series in double precision; where ρ is tiny the
            # log of a sum close to 1 leaves ~1e-14 absolute error per step in either.
            assert abs(got - expected) <= 1e-9 * abs(expected) + 1e-13 * steps, (order, steps)


def test_subsampled_gaussian_rdp_edge_cases():
    assert A.subsampled_gaussian_rdp(0.0, 1.0, 100) == {a: 0.0 for a in RDP_ORDERS}
    assert all(math.isinf(v) for v in A.subsampled_gaussian_rdp(0.1, 0.0, 1).values())
    full = A.subsampled_gaussian_rdp(1.0, 2.0, 3)
    assert full[4.0] == pytest.approx(3 * 4.0 / (2 * 4.0))
    with pytest.raises(ValueError):
        A.subsampled_gaussian_rdp(1.5, 1.0, 1)
    with pytest.raises(ValueError):
        A.subsampled_gaussian_rdp(0.1, 1.0, 1, orders=[1.0])


def test_rdp_to_dp_matches_opacus_get_privacy_spent():
    rdp = opacus_rdp()

    cases = [
        (0.04, 2.9, 250),
        (0.01, 1.1, 10_000),
        (1.0, 30.0, 50),
        (0.3, 0.7, 10),
    ]
    for (q, sigma, steps), delta in itertools.product(cases, [1e-5, 1e-6, 2.5e-7, 0.1]):
        curve = A.subsampled_gaussian_rdp(q, sigma, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha"
            eps, order = rdp.get_privacy_spent(
                orders=list(RDP_ORDERS), rdp=[curve[a] for a in RDP_ORDERS], delta=delta
            )
        ours, our_order = A.rdp_to_dp(curve, delta)
        assert ours == pytest.approx(float(eps), rel=1e-12)
        assert our_order == float(order)
    # an order with an infinite bound is simply never the best
    curve = dict.fromkeys(RDP_ORDERS, 1.0) | {256.0: math.inf}
    assert A.rdp_to_dp(curve, 1e-5)[1] == 128.0
    assert A.rdp_to_dp({2.0: math.nan}, 1e-5)[0] == math.inf


def test_gaussian_noise_for_calibrates_with_the_rdp_conversion():
    sigma = A.gaussian_noise_for(1.0, 1e-6, 0.04, 250)
    assert A.rdp_to_dp(A.subsampled_gaussian_rdp(0.04, sigma, 250), 1e-6)[0] <= 1.0
    assert A.rdp_to_dp(A.subsampled_gaussian_rdp(0.04, sigma * 0.999, 250), 1e-6)[0] > 1.0


def test_rdp_calibrated_job_shape_has_epsilon_one_under_opacus_rdp_accountant():
    # The PRV-calibrated σ's come from opacus's PRV accountant, which needs torch to import;
    # the RDP-calibrated one is re-checked here with opacus's RDP analysis and default orders.
    rdp = opacus_rdp()
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    q, steps, sigma = JOB_SHAPES["800 rows, batch 32, 10 epochs, rdp"]
    curve = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    eps, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=1e-6)
    assert 1.0 - 2e-3 <= eps <= 1.0  # get_noise_multiplier's epsilon_tolerance=1e-3


def test_accounting_imports_no_heavy_library():
    code = (
        "import sys, pandacead.accounting; "
        "heavy = {'torch', 'opacus', 'scipy', 'numpy'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- declared curves


def randomized_response_divergence(eps: float, order: float) -> float:
    p = math.exp(eps) / (1 + math.exp(eps))
    return math.log(p**order * (1 - p) ** (1 - order) + (1 - p) ** order * p ** (1 - order)) / (
        order - 1
    )


@pytest.mark.parametrize("eps", [0.01, 0.3, 1.0, 3.0])
def test_pure_dp_curve_is_randomized_response_and_below_the_classic_bounds(eps):
    curve = A.pure_dp_rdp(eps)
    previous = 0.0
    for order in RDP_ORDERS:
        rho = curve[order]
        if order <= 64:  # beyond, the direct formula overflows
            assert rho == pytest.approx(randomized_response_divergence(eps, order), rel=1e-9)
        assert rho <= eps and rho <= order * eps * eps / 2  # Bun & Steinke 2016, Prop. 3.3
        assert rho >= previous  # Rényi divergence grows with the order
        previous = rho
    assert A.pure_dp_rdp(0.0) == dict.fromkeys(RDP_ORDERS, 0.0)


def test_declared_jobs_are_charged_their_curve_and_delta():
    pure = A.charge_for(1.0, 0.0)
    assert pure.kind == "pure" and pure.approx_delta == 0 and pure.max_divergence == 1.0
    approx = A.charge_for(1.0, 1e-7)
    assert approx.kind == "approx" and approx.approx_delta == 1e-7
    assert approx.curve == tuple(A.curve_for_declared(1.0, 1e-7)[a] for a in RDP_ORDERS)
    gaussian = A.charge_for(1.0, 1e-6, A.subsampled_gaussian_rdp(0.04, 3.0, 250))
    assert gaussian.kind == "rdp" and gaussian.approx_delta == 0
    assert gaussian.max_divergence == math.inf


def test_pure_dp_jobs_fit_at_least_as_many_as_under_basic():
    job = Spend(1.0, 0.0, None, "rdp")
    assert fill([], job, "rdp") == fill([], Spend(1.0, 0.0), "basic") == 10
    state, small, n = RenyiFilter(), A.charge_for(0.1, 0.0), 0
    while (decision := state.admit(small, *BUDGET)).ok:
        state, n = decision.state, n + 1
    assert n > 300  # many small ones compose better than their sum


def test_approximate_dp_jobs_share_a_capped_delta_bucket():
    eps_b, delta_b = BUDGET
    cap = A.APPROX_DELTA_SHARE * delta_b
    job = Spend(1.0, cap / 2, None, "rdp")
    spends: list[Spend] = []
    assert fill(spends, job, "rdp") == 2
    refusal = A.admit(spends, job, *BUDGET, mode="rdp")
    assert not refusal.ok and "share" in refusal.reason
    # a job whose δ alone is over the cap never fits, whatever is left of ε
    assert not A.admit([], Spend(0.1, cap * 1.001, None, "rdp"), *BUDGET, mode="rdp").ok
    # the cap does not touch jobs that bring their own curve
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    assert A.admit(spends, gaussian_job(*shape), *BUDGET, mode="rdp").ok


# --------------------------------------------------------------------------- the filter


def test_a_job_that_just_fits_is_admitted_and_one_slightly_more_is_refused():
    eps_b, delta_b = BUDGET
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    spends = [gaussian_job(*shape) for _ in range(20)]
    state = RenyiFilter.from_spends(spends)
    deltas = state.order_deltas(eps_b, delta_b)
    # The room left at each order; a job using exactly the room at order 4 and more than
    # the room everywhere else fits only through order 4.
    room = [
        eps_b - rho - A.conversion_term(a, d) for a, rho, d in zip(RDP_ORDERS, state.curve, deltas)
    ]
    i = RDP_ORDERS.index(4.0)

    def job(extra: float) -> Spend:
        curve = [max(r, 0.0) + 1.0 for r in room]
        curve[i] = room[i] + extra
        return Spend(1.0, 1e-6, A.curve_to_json(curve), "rdp")

    fits = A.admit(spends, job(0.0), *BUDGET, mode="rdp")
    assert fits.ok and fits.best_order == 4.0
    assert fits.epsilon_after == pytest.approx(eps_b, rel=1e-12)
    over = A.admit(spends, job(1e-9), *BUDGET, mode="rdp")
    assert not over.ok and over.epsilon_after > eps_b


def test_one_order_under_budget_is_enough_and_exhausted_orders_stay_exhausted():
    eps_b, delta_b = BUDGET
    state = RenyiFilter()
    deltas = state.order_deltas(eps_b, delta_b)
    room = {a: eps_b - A.conversion_term(a, d) for a, d in zip(RDP_ORDERS, deltas)}
    assert room[8.0] > 0 and room[256.0] > 0
    # first job: uses up every order but 8.0 and 256.0
    first = {a: (room[a] * 0.5 if a in (8.0, 256.0) else max(room[a], 0) + 1) for a in RDP_ORDERS}
    d1 = state.admit(A.charge_for(1.0, 0.0, first), *BUDGET)
    assert d1.ok
    # second job: pushes 8.0 over, 256.0 survives -> admitted
    second = {a: (room[a] * 0.6 if a == 8.0 else max(room[a], 0) * 0.4) for a in RDP_ORDERS}
    d2 = d1.state.admit(A.charge_for(1.0, 0.0, second), *BUDGET)
    assert d2.ok and d2.best_order == 256.0
    # a job free at 8.0 cannot revive it (8.0 is already over) and is too much for 256.0
    third = {a: (0.0 if a == 8.0 else max(room[a], 0)) for a in RDP_ORDERS}
    assert not d2.state.admit(A.charge_for(1.0, 0.0, third), *BUDGET).ok


def test_admitted_sequences_satisfy_the_filter_condition_recomputed_independently():
    eps_b, delta_b = BUDGET
    shapes = list(JOB_SHAPES.values())
    spends: list[Spend] = []
    for k in range(400):
        q, steps, sigma = shapes[k % len(shapes)]
        job = (
            gaussian_job(q, steps, sigma)
            if k % 5
            else Spend(0.5, 2e-7 if k % 10 == 0 else 0.0, None, "rdp")
        )
        if A.admit(spends, job, *BUDGET, mode="rdp").ok:
            spends.append(job)
    assert len(spends) > 30
    # recompute by hand: δ split, weights, sums, conversion
    d_a = A.APPROX_DELTA_SHARE * delta_b
    d_r = delta_b - d_a
    assert sum(s.delta for s in spends if s.rdp is None) <= d_a * (1 + 1e-12)
    weights = A.order_weights(eps_b, d_r)
    assert sum(weights) == pytest.approx(1.0)
    ok_orders = []
    for i, a in enumerate(RDP_ORDERS):
        total = 0.0
        for s in spends:
            if s.rdp is not None:
                total += json.loads(json.dumps(s.rdp))[str(a)]
            else:
                total += randomized_response_divergence(s.epsilon, a) if a <= 64 else s.epsilon
        eps = total + (-(math.log(weights[i] * d_r) + math.log(a)) / (a - 1)) + math.log(1 - 1 / a)
        if eps <= eps_b * (1 + 1e-12):
            ok_orders.append(a)
    assert ok_orders, "no order certifies the admitted jobs"


def test_reported_spent_epsilon_is_what_the_filter_checks():
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    spends: list[Spend] = []
    fill(spends, gaussian_job(*shape), "rdp")
    spent = A.spent_epsilon(spends, *BUDGET)
    assert spent <= BUDGET[0]
    refused = A.admit(spends, gaussian_job(*shape), *BUDGET, mode="rdp")
    assert refused.epsilon_after > BUDGET[0] > spent
    summary = A.summarize(spends, *BUDGET, mode="rdp")
    assert summary.epsilon_spent == spent
    assert summary.epsilon_remaining == pytest.approx(BUDGET[0] - spent)
    assert summary.basic_epsilon_spent == pytest.approx(len(spends))
    assert summary.epsilon_reserved == 0.0
    assert A.summarize([], *BUDGET, mode="rdp").epsilon_spent == 0.0


def test_summary_separates_reserved_from_committed():
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    job = gaussian_job(*shape)
    committed = [job] * 10
    reserved = Spend(job.epsilon, job.delta, job.rdp, "rdp", reserved=True)
    both = A.summarize([*committed, reserved], *BUDGET, mode="rdp")
    only = A.summarize(committed, *BUDGET, mode="rdp")
    assert both.epsilon_spent == only.epsilon_spent
    assert both.epsilon_reserved > 0
    assert both.epsilon_remaining == pytest.approx(
        BUDGET[0] - both.epsilon_spent - both.epsilon_reserved
    )
    basic = A.summarize([*committed, reserved], *BUDGET, mode="basic")
    assert (basic.epsilon_spent, basic.epsilon_reserved) == (pytest.approx(10.0), 1.0)
    assert basic.epsilon_remaining == 0.0
    row = {"epsilon": 1.0, "delta": 1e-6, "rdp": None, "mode": "rdp", "state": "reserved"}
    assert Spend.from_row(row) == Spend(1.0, 1e-6, None, "rdp", reserved=True)


# --------------------------------------------------------------------------- what is checked


@pytest.mark.parametrize("shape", sorted(JOB_SHAPES))
def test_rdp_admits_at_least_six_times_as_many_epsilon_one_jobs_as_basic(shape):
    job = gaussian_job(*JOB_SHAPES[shape])
    basic = fill([], Spend(job.epsilon, job.delta, job.rdp, "basic"), "basic")
    rdp = fill([], job, "rdp")
    assert basic == 10
    assert rdp >= 6 * basic, (shape, rdp)


# --------------------------------------------------------------------------- mode switch


def test_spends_from_basic_stay_charged_at_full_epsilon_after_switching_to_rdp():
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    job = gaussian_job(*shape)
    spends = [Spend(job.epsilon, job.delta, job.rdp, "basic") for _ in range(5)]
    state = RenyiFilter.from_spends(spends)
    assert (state.prefix_epsilon, state.jobs) == (5.0, 0)  # stored curves are not used
    assert state.prefix_delta == pytest.approx(5e-6)
    assert A.spent_epsilon(spends, *BUDGET) == pytest.approx(5.0)
    more = fill(spends, job, "rdp")
    fresh = fill([], job, "rdp")
    assert 0 < more < fresh
    assert A.spent_epsilon(spends, *BUDGET) <= BUDGET[0]
    # the rdp phase only had what basic left: its own Rényi sum converts within ε_B − 5
    phase = RenyiFilter.from_spends(spends[5:])
    assert phase.prefix_epsilon == 0 and phase.jobs == more


def test_a_basic_spend_after_rdp_spends_moves_everything_before_it_to_the_prefix():
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    job = gaussian_job(*shape)
    spends = [job] * 30 + [Spend(1.0, 1e-6, None, "basic")] + [job] * 2
    state = RenyiFilter.from_spends(spends)
    assert state.prefix_epsilon == pytest.approx(31.0) and state.jobs == 2
    # over budget by basic composition: nothing more is admitted in either mode
    assert not A.admit(spends, job, *BUDGET, mode="rdp").ok
    assert not A.admit(spends, job, *BUDGET, mode="basic").ok


def test_switching_back_to_basic_counts_every_job_at_its_epsilon():
    shape = JOB_SHAPES["800 rows, batch 32, 10 epochs, prv"]
    spends: list[Spend] = []
    n = fill(spends, gaussian_job(*shape), "rdp")
    assert n > 10
    assert A.basic_spent(spends)[0] == pytest.approx(n)
    assert not A.admit(spends, Spend(0.01, 0.0), *BUDGET, mode="basic").ok


# --------------------------------------------------------------------------- fail closed


def test_basic_mode_refuses_exactly_at_the_boundary():
    spends = [Spend(1.0, 1e-6)] * 9
    assert A.admit(spends, Spend(1.0, 1e-6), *BUDGET).ok
    assert not A.admit(spends, Spend(1.0 + 1e-9, 1e-6), *BUDGET).ok
    assert not A.admit(spends, Spend(1.0, 1.0001e-6), *BUDGET).ok
    tenths = [Spend(0.1, 0.0)] * 2  # 0.1 + 0.1 + 0.1 > 0.3 in floating point
    assert A.admit(tenths, Spend(0.1, 0.0), 0.3, 0.0).ok


@pytest.mark.parametrize(
    "curve",
    [
        {"2.0": float("nan")},
        {"2.0": -1.0},
        {"1.0": 0.5},
        {},
        "not json",
        {"two": 1.0},
    ],
)
def test_malformed_curves_are_refused(curve):
    with pytest.raises(ValueError):
        A.admit([], Spend(1.0, 1e-6, curve, "rdp"), *BUDGET, mode="rdp")


def test_a_curve_at_other_orders_is_read_conservatively():
    curve = A.curve_from_json({"3": 0.3, "10": 1.0})
    assert curve is not None
    by_order = dict(zip(RDP_ORDERS, curve))
    assert by_order[1.25] == by_order[3.0] == 0.3  # next larger order it has
    assert by_order[4.0] == by_order[10.0] == 1.0
    assert by_order[12.0] == math.inf  # unknown: unusable
    assert A.curve_from_json(json.dumps(A.curve_to_json(curve))) == curve


def test_job_curve_never_charges_less_than_the_stated_dp_sgd_parameters():
    honest = A.subsampled_gaussian_rdp(0.04, 3.0, 250)
    low = {str(a): v / 2 for a, v in honest.items()}
    stored = A.job_curve(low, noise_multiplier=3.0, sample_rate=0.04, steps=250)
    assert stored == A.curve_to_json(honest)
    assert A.job_curve(None, 3.0, 0.04, 250) is None  # parameters alone are no curve


@pytest.mark.parametrize(
    "eps_b,delta_b", [(math.nan, 1e-5), (10.0, math.inf), (-1.0, 1e-5), (10.0, 1.0)]
)
def test_invalid_budgets_raise(eps_b, delta_b):
    with pytest.raises(ValueError):
        A.admit([], Spend(1.0, 1e-6), eps_b, delta_b, mode="rdp")


@pytest.mark.parametrize(
    "eps,delta", [(math.inf, 1e-6), (math.nan, 1e-6), (1.0, -1e-6), (1.0, 1.0)]
)
def test_invalid_jobs_raise(eps, delta):
    for mode in ("basic", "rdp"):
        with pytest.raises(ValueError):
            A.admit([], Spend(eps, delta), *BUDGET, mode=mode)


def test_unknown_mode_raises():
    with pytest.raises(ValueError):
        A.admit([], Spend(1.0, 1e-6), *BUDGET, mode="advanced")
    with pytest.raises(ValueError):
        RenyiFilter.from_spends([Spend(1.0, 1e-6, None, "zcdp")])


def test_charge_type_is_exported():
    assert Charge in (getattr(A, name) for name in A.__all__)
