"""Attacks, wave 4: the cap on the number of candidates K (`candidates.max`, priced by
`tuning.truncation_penalty`) and constant work (`[trainer] search_constant_work`).

Each test performs one attack on the real code and asserts that it fails. The exact
checks use mpmath (60 digits) on the law the code actually samples (its float γ).
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from pandacead import accounting, tuning
from pandacead.errors import Diverged, JobFailed, JobRejected
from pandacead.jobs import parse_job

mpmath = pytest.importorskip("mpmath")

@pytest.fixture(autouse=True)
def _restore_mpmath_precision():
    dps = mpmath.mp.dps
    yield
    mpmath.mp.dps = dps


# (mean, η, M): the edges — a mean at or near 1 (γ → 1), M = the mean, a tiny and a huge η,
# the largest M the schema allows, Poisson with K = 0.
EDGES = [
    (1.0, 0.0, 1), (1.0, 0.0, 2), (1.0 + 1e-9, 0.0, 1), (1.000001, 0.0, 1), (1.0, 2.0, 1), (1.0, 0.5, 1),
    (1.0, 100.0, 1), (1.0001, 0.0, 2), (1.0, 1.0, 1), (1.5, 1.0, 2), (3.0, 1e-3, 3), (3.0, 5e-324, 3),
    (10.0, 0.0, 100), (10.0, 1.0, 100), (10.0, 0.0, 10), (100.0, 0.0, 100), (100.0, 100.0, 100),
    (100.0, 100.0, 10000), (100.0, 1e-6, 100), (1.0, math.inf, 1), (100.0, math.inf, 100), (5.0, math.inf, 7),
]


def _exact_law(mean: float, eta: float, top: int):
    """[P[K = k] for k ≤ top] and E[K] of the law the code samples, at 60 digits (its float γ)."""
    mp = mpmath.mp
    mp.dps = 60
    if math.isinf(eta):
        mu = mp.mpf(mean)
        return [mp.exp(-mu) * mu**k / mp.factorial(k) for k in range(top + 1)], mu
    g = mp.mpf(tuning.tnb_gamma(eta, mean))
    if g >= 1:
        return [mp.mpf(int(k == 1)) for k in range(top + 1)], mp.mpf(1)
    if eta == 0:
        norm = -mp.log(g)
        return [mp.mpf(0)] + [(1 - g) ** k / k / norm for k in range(1, top + 1)], (1 - g) / (g * norm)
    e = mp.mpf(eta)
    norm = mp.expm1(-e * mp.log(g))  # γ^{−η} − 1, exact for a tiny η too
    pmf = [mp.mpf(0)] + [(1 - g) ** k * mp.rf(e, k) / mp.factorial(k) / norm for k in range(1, top + 1)]
    return pmf, e * (1 - g) / g / -mp.expm1(e * mp.log(g))


# --------------------------------------------------------------------------- float error in the penalty


@pytest.mark.parametrize("mean,eta,cap", EDGES)
def test_the_charged_truncation_penalty_is_never_below_the_exact_one(mean, eta, cap):
    """Attack: find a law (a mean at or near 1, where γ → 1; a tiny or huge η; M = the mean;
    M = 10 000) for which float error makes the charged log(1/Z) or log(1/(1−s)) smaller than
    the exact value for the law `sample_count` draws from. Succeeded before the fix (mean 1:
    Z computed as 1, the exact 1 − 4.7e-10; η = 5e-324: a division by zero): the pmf's
    normaliser log(1/γ), γ^{−η} − 1 cancelled catastrophically; now in log space, accurate."""
    pen = tuning.truncation_penalty(mean, eta, cap)
    pmf, full = _exact_law(mean, eta, cap)
    z = mpmath.fsum(pmf)
    one_minus_s = mpmath.fsum(k * p for k, p in enumerate(pmf)) / full
    assert pen["log_inv_z"] >= -mpmath.log(z), (pen, z)
    assert pen["log_inv_one_minus_s"] >= -mpmath.log(one_minus_s), (pen, one_minus_s)
    # ... and not uselessly above it either (the 1e-12 guard, no more)
    assert pen["log_inv_z"] - float(-mpmath.log(z)) < 1e-11
    assert pen["log_inv_one_minus_s"] - float(-mpmath.log(one_minus_s)) < 1e-11


@pytest.mark.parametrize("mean,eta", [(1.0, 100.0), (1.0, 2.0), (1.5, 100.0), (10.0, 100.0), (10.0, 0.0)])
def test_theorem_2s_mean_term_is_the_mean_of_the_sampled_law(mean, eta):
    """Attack: `tnb_gamma` returns the bisection's lower end, whose law has a mean up to a
    relative 5e-8 above the job's (η = 100, mean 1); Theorem 2's log(E[K])/(λ−1) with the
    job's nominal mean undercharged it. Succeeded before the fix; now E[K] is the sampled law's
    (exact, via mpmath), so the curve is at or above Theorem 2 for the law actually drawn."""
    rho = {a: 0.05 * a for a in accounting.RDP_ORDERS if a > 1}
    got = tuning.repeat_and_select(rho, mean, eta)
    _, full = _exact_law(mean, eta, 1)
    g = mpmath.mpf(tuning.tnb_gamma(eta, mean))
    hats = sorted(rho)
    c = (1 + eta) * min((1 - 1 / mpmath.mpf(a)) * rho[a] - mpmath.log(g) / a for a in hats)
    raw = {a: rho[a] + mpmath.log(full) / (a - 1) + c for a in hats}
    for i, a in enumerate(hats):
        # up to the float rounding of the formula itself (1e-16); the undercharge was 2e-7 at λ = 1.25
        assert got[a] >= min(raw[b] for b in hats[i:]) * (1 - 1e-14), (a, got[a], raw[a])


def test_a_tiny_shape_is_priced_not_crashed():
    """Attack: `shape` has only exclusiveMinimum 0 in the schema; η = 5e-324 made the pmf divide
    by zero (an unhandled ZeroDivisionError, not a refusal). Now it is the logarithmic law."""
    a = tuning.truncation_penalty(10.0, 5e-324, 100)
    b = tuning.truncation_penalty(10.0, 0.0, 100)
    assert a["log_inv_z"] == pytest.approx(b["log_inv_z"], rel=1e-9)
    assert tuning.sample_count(0.5, "negative_binomial", 10.0, 5e-324, 100) == tuning.sample_count(
        0.5, "logarithmic", 10.0, None, 100)
    # The geometric law of mean 1 (γ = 1): K = 1 always, no penalty beyond the guard.
    g = tuning.truncation_penalty(1.0, 1.0, 1)
    assert g["log_inv_z"] < 1e-11 and g["log_inv_one_minus_s"] < 1e-11
    assert tuning.sample_count(0.999, "geometric", 1.0, None, 1) == 1


# --------------------------------------------------------------------------- the lemma on exact laws


def _best_of(q, ties, pgf):
    """Exact law of best-of-K (K ~ pgf) of draws from q, outcomes in increasing score; `ties[j]`
    is outcome j's score class (equal scores: the first draw among the best wins, i.e. the
    class's mass split in proportion to q). The last entry is ⊥ (K = 0), probability pgf(0)."""
    out, classes = [], sorted(set(ties))
    cdf = {c: mpmath.fsum(p for p, t in zip(q, ties) if t <= c) for c in classes}
    prev = {c: mpmath.fsum(p for p, t in zip(q, ties) if t < c) for c in classes}
    mass = {c: cdf[c] - prev[c] for c in classes}
    for p, t in zip(q, ties):
        out.append(p / mass[t] * (pgf(min(cdf[t], mpmath.mpf(1))) - pgf(prev[t])))
    out.append(pgf(mpmath.mpf(0)))
    return out


def _renyi(p, r, order):
    order = mpmath.mpf(order)
    return mpmath.log(mpmath.fsum(a**order * b ** (1 - order) for a, b in zip(p, r) if a > 0)) / (order - 1)


@pytest.mark.parametrize("distribution,mean,cap", [("poisson", 1.0, 1), ("poisson", 2.0, 3), ("logarithmic", 3.0, 3),
                                                   ("geometric", 2.0, 2), ("negative_binomial", 1.0, 1)])
def test_the_cap_lemma_holds_on_exact_laws_with_ties_bottom_and_extreme_orders(distribution, mean, cap):
    """Attack on the proof: exact best-of-K laws (40 digits) of random discrete base laws with
    TIED scores (first-draw tie-breaking), Poisson's K = 0 output ⊥, the tightest cap (M =
    the mean), orders from 1.01 to 1024; the capped divergence stays within the uncapped one
    plus the charged penalty. The law is the one the code samples (its float γ)."""
    eta = tuning.distribution_shape(distribution, 0.5 if distribution == "negative_binomial" else None)
    pmf, _ = _exact_law(mean, eta, 250)  # the "uncapped" law: its mass above 250 is below 1e-18
    assert 1 - mpmath.fsum(pmf) < 1e-18
    mpmath.mp.dps = 40
    z = mpmath.fsum(pmf[: cap + 1])

    def pgf(t):
        return mpmath.fsum(p * t**k for k, p in enumerate(pmf))

    def pgf_capped(t):
        return mpmath.fsum(p * t**k for k, p in enumerate(pmf[: cap + 1])) / z

    pen = tuning.truncation_penalty(mean, eta, cap)
    rng = random.Random(11)
    tightest = math.inf
    for _ in range(6):
        m = rng.randint(2, 5)
        q = [mpmath.mpf(rng.random() + 0.05) for _ in range(m)]
        r = [x * mpmath.exp(rng.uniform(-0.8, 0.8)) for x in q]
        q = [x / mpmath.fsum(q) for x in q]
        r = [x / mpmath.fsum(r) for x in r]
        ties = sorted(rng.randint(0, m - 2) for _ in range(m))  # at least two outcomes share a score
        for order in (1.01, 1.1, 2.0, 8.0, 64.0, 1024.0):
            for a, b in ((q, r), (r, q)):
                full = _renyi(_best_of(a, ties, pgf), _best_of(b, ties, pgf), order)
                capped = _renyi(_best_of(a, ties, pgf_capped), _best_of(b, ties, pgf_capped), order)
                bound = full + pen["log_inv_z"] / (order - 1) + pen["log_inv_one_minus_s"]
                assert capped <= bound + 1e-12, (order, capped, bound)
                tightest = min(tightest, float(bound - capped))
    assert tightest < pen["log_inv_one_minus_s"] + pen["log_inv_z"]  # the check could fail


@pytest.mark.parametrize("distribution,mean,shape,cap", [("poisson", 1.0, None, 1), ("poisson", 4.0, None, 9),
                                                         ("logarithmic", 10.0, None, 10), ("logarithmic", 1.0, None, 2),
                                                         ("geometric", 3.0, None, 4),
                                                         ("negative_binomial", 2.0, 3.0, 5)])
def test_capped_sample_count_is_exactly_the_conditioned_law(distribution, mean, shape, cap):
    """Attack: is `sample_count(u, …, max_count=M)` exactly the law conditioned on K ≤ M (the
    one priced), not e.g. "clip at M" (all the tail's mass on M)? Each threshold of the
    inversion must sit at the exact conditioned CDF P[K ≤ k | K ≤ M]."""
    eta = tuning.distribution_shape(distribution, shape)
    pmf, _ = _exact_law(mean, eta, cap)
    z = mpmath.fsum(pmf)
    lo = 0 if math.isinf(eta) else 1
    cdf = mpmath.mpf(0)
    for k in range(lo, cap):
        cdf += pmf[k]
        t = float(cdf / z)
        if t - 1e-9 > 0:
            assert tuning.sample_count(t - 1e-9, distribution, mean, shape, cap) <= k, k
        assert tuning.sample_count(min(t + 1e-9, 1 - 2**-53), distribution, mean, shape, cap) > k, k
    assert tuning.sample_count(1 - 2**-53, distribution, mean, shape, cap) == cap
    assert tuning.sample_count(0.0, distribution, mean, shape, cap) == lo


# --------------------------------------------------------------------------- the penalty in the plan


def _plan(tmp_path: Path, search: dict, **ctx_options):
    pytest.importorskip("opacus")
    from pandacead_opacus.trainer import OpacusTrainer
    from test_attacks_wave3 import _private_csv, _search_job

    from pandacead.trainers import TrainerContext

    tmp_path.mkdir(parents=True, exist_ok=True)
    info = _private_csv(tmp_path, "classification")
    job = _search_job("classification", search_extra=search)
    ctx = TrainerContext(datasets={info.name: info}, state_dir=str(tmp_path),
                         options={"home": str(tmp_path), **ctx_options})
    return job, OpacusTrainer().plan(job, ctx), info


@pytest.mark.opacus
@pytest.mark.parametrize("fraction", [0, 0.3])
def test_the_cap_is_charged_at_every_order_in_both_scoring_modes_and_in_the_calibration(tmp_path, fraction):
    """Attack: look for an order, a scoring mode or the σ calibration that leaves the cap's
    penalty out. The charged curve must be the uncapped search curve of the σ_c actually
    trained plus log(1/Z)/(λ−1) + log(1/(1−s)) at EVERY order (λ ≤ 1 included: ∞), with σ
    calibrated so that this penalised curve — not the uncapped one — fits dp.epsilon."""
    from pandacead_opacus import search as search_mod

    job, plan, _ = _plan(tmp_path, {"candidates": {"distribution": "poisson", "mean": 3, "max": 3},
                                    "validation_fraction": fraction})
    s = plan.details["search"]
    pen = s["truncation"]
    assert s["max"] == 3 and pen["log_inv_z"] > 0.1  # a tight cap: a big penalty to forget
    sigmas = [c["noise_multiplier"] for c in s["configs"]]
    uncapped, _, _ = search_mod.search_curve(s["configs"], plan.noise_multiplier, 3.0, math.inf, fraction,
                                             s["score_share"] or search_mod.DEFAULT_SCORE_SHARE, sigmas)
    charged = dict(zip(accounting.RDP_ORDERS, accounting.curve_from_json(plan.rdp)))
    for a in accounting.RDP_ORDERS:
        want = uncapped[a] + pen["log_inv_z"] / (a - 1) + pen["log_inv_one_minus_s"] if a > 1 else math.inf
        if math.isfinite(want):
            assert charged[a] >= want * (1 - 1e-12), (a, charged[a], want)
        else:
            assert not math.isfinite(charged[a]) or charged[a] >= 1e300, a
    eps, _ = accounting.rdp_to_dp({a: v for a, v in charged.items() if math.isfinite(v)}, plan.delta)
    assert eps == pytest.approx(plan.epsilon) and plan.epsilon <= job.dp.epsilon * (1 + 1e-9)
    assert s["uncapped_epsilon"] < plan.epsilon  # the cap was priced into σ: calibrated to the capped curve
    assert plan.epsilon >= job.dp.epsilon - max(1e-3, 0.005 * job.dp.epsilon) - 1e-9


# --------------------------------------------------------------------------- constant work


def _secret_with_k(plan, want):
    """A host secret whose K (drawn exactly as run_search draws it) is `want`."""
    from pandacead_opacus import search as search_mod

    s = plan.details["search"]
    for secret in range(20000):
        rng = np.random.default_rng(search_mod._derived(secret, "search"))
        k = tuning.sample_count(float(rng.random()), s["distribution"], float(s["mean"]),
                                s["shape"] if s["distribution"] == "negative_binomial" else None, int(s["max"]))
        if k == want:
            return secret
    raise AssertionError(f"no secret draws K = {want}")


def _trace_run(monkeypatch, job, plan, arrays, fixed, secret, fail=None):
    """run_search with a fake, deterministic candidate; every operation it does, in order."""
    from pandacead_opacus import models
    from pandacead_opacus import search as search_mod

    ops: list = []
    monkeypatch.undo()  # each run wraps the real functions, never a previous run's wrapper
    real_load, real_predict = models.load_model, models.predict
    monkeypatch.setattr(models, "load_model", lambda b: ops.append("load") or real_load(b))
    monkeypatch.setattr(models, "predict", lambda m, a, X: ops.append(("predict", len(X))) or real_predict(m, a, X))
    fits: list = []

    def train_candidate(cj, cp, fit, seed):
        i = len(fits)
        fits.append(id(fit["X_train"]))
        ops.append(("train", sorted(cj), sorted(cp), len(fit["X_train"])))
        if fail is not None:
            fail(i)
        return copy.deepcopy(fixed)

    events: list = []
    try:
        best = search_mod.run_search(job, plan, arrays, noise_seed=secret, train_candidate=train_candidate,
                                     progress=events.append)
    except Exception as exc:  # noqa: BLE001 - the attack compares how each run ends
        best = exc
    shape_of_events = [sorted(k for k in e if k not in ("counted", "best_score_so_far")) for e in events]
    k = sum(1 for e in events if e.get("counted"))
    return best, ops, shape_of_events, len(set(fits)), k


@pytest.mark.opacus
def test_constant_work_does_the_same_operations_for_k_1_and_k_m(tmp_path, monkeypatch):
    """Attack (timing): a buyer times the search; with constant work a run that counts K = 1
    candidate and one that counts K = M must do exactly the same work: the same trainings (same
    inputs), model loads, scorings over the same rows, progress reports — in the same order.
    Counted, not timed (the machine is loaded): operations, not durations."""
    from test_attacks_wave3 import _one_model

    from pandacead import datasets

    job, plan, info = _plan(tmp_path, {"candidates": {"distribution": "geometric", "mean": 3, "max": 5}})
    X, y, _, _ = datasets.load(info, str(tmp_path))
    arrays = {"X_train": X, "y_train": y, "X_test": X[:0], "y_test": y[:0]}
    fixed = _one_model(job, plan, arrays)
    runs = {}
    for want in (1, 5):
        secret = _secret_with_k(plan, want)
        best, ops, events, n_fit, k = _trace_run(monkeypatch, job, plan, arrays, fixed, secret)
        assert k == want and isinstance(best, dict)
        runs[want] = (ops, events, n_fit)
    assert runs[1] == runs[5]
    assert sum(1 for o in runs[1][0] if o[0] == "train") == 5


@pytest.mark.opacus
def test_failures_under_constant_work_do_not_depend_on_k(tmp_path, monkeypatch):
    """Attack (early exits): (a) every candidate that counts diverges but the extra ones do not;
    (b) a hard fault in candidate 3; (c) Poisson's K = 0. Each must end the same way — same
    error words, same number of trainings — whatever K, so how and when the search ends does
    not reveal it; (a) and (c) release nothing (the first K are all that can be released)."""
    from test_attacks_wave3 import _one_model

    from pandacead import datasets

    job, plan, info = _plan(tmp_path, {"candidates": {"distribution": "geometric", "mean": 3, "max": 5}})
    X, y, _, _ = datasets.load(info, str(tmp_path))
    arrays = {"X_train": X, "y_train": y, "X_test": X[:0], "y_test": y[:0]}
    fixed = _one_model(job, plan, arrays)
    ends = {}
    for want in (1, 3, 5):
        secret = _secret_with_k(plan, want)

        def first_k_diverge(i, want=want):
            if i < want:
                raise Diverged("Training diverged.", [f"diverged at step 2 of {i}"])

        def fault(i):
            if i == 3:
                raise RuntimeError("host fault")

        a = _trace_run(monkeypatch, job, plan, arrays, fixed, secret, first_k_diverge)
        b = _trace_run(monkeypatch, job, plan, arrays, fixed, secret, fault)
        assert isinstance(a[0], JobFailed) and isinstance(b[0], RuntimeError)
        ends[want] = (str(a[0]), getattr(a[0], "details", None), sum(1 for o in a[1] if o[0] == "train"),
                      str(b[0]), sum(1 for o in b[1] if o[0] == "train"))
    assert len(set(map(repr, ends.values()))) == 1, ends
    assert ends[1][2] == 5 and ends[1][4] == 4

    # (c) Poisson: K = 0 trains all M too, and fails with the words of (a).
    job, plan, info = _plan(tmp_path / "p", {"candidates": {"distribution": "poisson", "mean": 1, "max": 3}})
    zero = _trace_run(monkeypatch, job, plan, arrays, fixed, _secret_with_k(plan, 0))
    three = _trace_run(monkeypatch, job, plan, arrays, fixed, _secret_with_k(plan, 3))
    assert isinstance(zero[0], JobFailed) and str(zero[0]) == ends[1][0]
    assert zero[1] == three[1] and zero[2] == three[2] and zero[4] == 0 and three[4] == 3


# --------------------------------------------------------------------------- what the buyer controls


def _parse(search: dict):
    from conftest import job

    return parse_job(json.dumps({**job("b", user_id="u", search=search),
                                 "model": {"type": "linear", "hidden": []}}).encode())


@pytest.mark.parametrize("search", [
    {"candidates": {"mean": 10, "constant_work": False}},
    {"candidates": {"mean": 10}, "constant_work": False},
    {"candidates": {"mean": 10, "max": 10001}},
    {"candidates": {"mean": 10, "max": 0}},
    {"candidates": {"mean": 10, "max": 12.5}},
    {"candidates": {"mean": 10, "max": True}},
    {"candidates": {"mean": 10, "max": "100"}},
])
def test_a_buyer_cannot_turn_constant_work_off_or_set_a_cap_outside_the_schema(search):
    """Attack (denial of service / a cheaper cap): switch constant work off from the job, or set
    `max` beyond 10 000, to 0, fractional, a bool or a string. The job is refused at parsing."""
    with pytest.raises(JobRejected) as exc:
        _parse(search)
    text = str(exc.value) + " ".join(exc.value.details or [])
    assert "search" in text, text
    _parse({"candidates": {"mean": 10, "max": 10000}})  # the same job with an allowed cap parses


@pytest.mark.opacus
def test_a_huge_cap_that_cannot_fit_the_timeout_is_refused_uncharged(tmp_path):
    """Attack (denial of service): `max` 10 000 on a host with constant work makes every search
    train 10 000 candidates; put one cheap configuration (64 rows a batch, 1 epoch: 4 steps)
    in the space so that its rounded estimate reads 0.0 s and M × 0 fits any timeout. Succeeded
    before the fix (the search was planned and would run until the 5-s timeout, charged for
    nothing); now a candidate costs at least CANDIDATE_FLOOR_SECONDS and the plan refuses it
    (nothing run, nothing charged) — and the same job with a small cap is accepted."""
    from pandacead_opacus import search as search_mod

    with pytest.raises(JobRejected, match="search trains 10000 candidates") as exc:
        _plan(tmp_path, {"candidates": {"distribution": "logarithmic", "mean": 10, "max": 10000}}, timeout_seconds=5.0)
    assert "nothing was run or charged" in str(exc.value)
    _, plan, _ = _plan(tmp_path / "ok", {"candidates": {"distribution": "logarithmic", "mean": 10, "max": 10}},
                       timeout_seconds=5.0)
    assert min(c["details"]["estimated_seconds_min"] for c in plan.details["search"]["configs"]) == 0.0
    assert 10000 * search_mod.CANDIDATE_FLOOR_SECONDS > 5.0
    assert plan.details["search"]["max"] == 10 and plan.details["search"]["constant_work"] is True


@pytest.mark.parametrize("distribution,mean,shape", [("poisson", 100.0, None), ("poisson", 1.0, None),
                                                     ("logarithmic", 100.0, None), ("geometric", 100.0, None),
                                                     ("negative_binomial", 100.0, 100.0),
                                                     ("negative_binomial", 100.0, 1e-6),
                                                     ("negative_binomial", 1.0, 100.0)])
def test_the_tightest_cap_keeps_z_and_one_minus_s_positive_and_finite(distribution, mean, shape):
    """Attack: choose the smallest cap the plan allows (M = ⌈mean⌉) and the law that puts the
    most mass above it, hoping Z or 1 − s underflow to 0 (a log of 0) or go negative; the
    penalty stays finite and positive, and a cap below the mean is refused."""
    eta = tuning.distribution_shape(distribution, shape)
    cap = int(math.ceil(mean))
    pen = tuning.truncation_penalty(mean, eta, cap)
    assert 0.3 < pen["z"] <= 1 and 0 < 1 - pen["s"] <= 1
    assert 0 < pen["log_inv_z"] < 2 and 0 < pen["log_inv_one_minus_s"] < 2
    curve = tuning.repeat_and_select({a: 0.01 * a for a in accounting.RDP_ORDERS}, mean, eta, cap)
    assert all(math.isfinite(v) and v > 0 for a, v in curve.items() if a > 1)


# --------------------------------------------------------------------------- the admin-only flag


@pytest.mark.opacus
@pytest.mark.slow
def test_the_admin_only_counted_flag_never_reaches_the_buyer(tmp_path):
    """Attack: the progress events now say which candidates count (`counted`, i.e. K). Run a
    constant-work search through the real daemon from a buyer's inbox and read everything the
    buyer can: its outbox (artifact, envelope, decoded model), and the history file's place —
    under state/ (mode 0700), never the outbox. The admin's history has K; the buyer's bytes
    have neither `counted`, nor a candidate count, nor the cap's work split."""
    pytest.importorskip("opacus")
    from conftest import drop, make_home, outcomes, run_once
    from test_privacy_boundary import DATASET_TOML, PRIVACY_PLUGINS, released_bytes, write_csv

    from pandacead.config import load_settings

    home = make_home(tmp_path / "h", backend="opacus", timeout=300, plugin_dirs=(PRIVACY_PLUGINS,),
                     extra=DATASET_TOML)
    write_csv(home / "patients.csv")
    from conftest import job

    search = {"candidates": {"distribution": "geometric", "mean": 2, "max": 4},
              "space": {"learning_rate": [0.05, 0.1], "epochs": [1], "batch_size": [16]}}
    drop(home, "s.json", {**job("w4-flag", dataset="patients", epsilon=3.0, search=search), "backend": "opacus",
                          "model": {"type": "linear", "hidden": []}, "epochs": 1, "batch_size": 16})
    r = run_once(home)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert outcomes(home)["w4-flag"] == "artifact"
    settings = load_settings(home, environ={})
    hist = [json.loads(x) for p in (settings.state / "history").iterdir() for x in p.read_text().splitlines()]
    counted = [h for h in hist if h.get("stage") == "search" and "counted" in h]
    assert len(counted) == 4 and 1 <= sum(h["counted"] for h in counted) <= 4  # the admin sees K
    assert (settings.state.stat().st_mode & 0o077) == 0  # ... and only the admin
    assert not (settings.outbox / "history").exists()
    for name, blob in released_bytes(home):
        text = blob.decode("utf-8", "replace")
        for word in ("counted", "best_score_so_far", "candidate\"", "\"of\""):
            assert word not in text, (name, word)
