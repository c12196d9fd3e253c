"""Private hyperparameter search: its price (Papernot & Steinke), its secrecy, and one released model."""

from __future__ import annotations

import math
import random
import types
from pathlib import Path

import numpy as np
import pytest

from pandacead import accounting, tuning
from pandacead.accounting import RDP_ORDERS, conversion_term, curve_to_json, order_weights
from pandacead.errors import Diverged, JobFailed, JobRejected
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


# --------------------------------------------------------------------------- the search itself


def _search_job(job_id: str, **kw):
    from conftest import job

    search = kw.pop("search", {"candidates": {"distribution": "logarithmic", "mean": 3},
                               "space": {"learning_rate": {"low": 0.02, "high": 0.5, "log": True},
                                         "epochs": [1, 2]}})
    return job(job_id, epsilon=kw.pop("epsilon", 2.0), epochs=2, batch_size=64, search=search, **kw)


@pytest.mark.opacus
def test_number_of_candidates_follows_the_host_secret_not_the_job():
    pytest.importorskip("opacus")
    from pandacead_opacus import search as search_mod
    from pandacead_opacus.trainer import OpacusTrainer
    from pandacead_opacus.training import train_arrays

    from pandacead import datasets
    from pandacead.jobs import Job
    from pandacead.trainers import TrainerContext

    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    ctx = TrainerContext(datasets={"synthetic": info}, state_dir=".", options={"home": "."})
    job = Job.from_dict({**_search_job("k", user_id="u"), "model": {"type": "linear", "hidden": []},
                         "backend": None})
    plan = OpacusTrainer().plan(job, ctx)
    X, y, Xt, yt = datasets.load(info, ".")
    arrays = {"X_train": X[:300], "y_train": y[:300], "X_test": Xt, "y_test": yt}
    counts = []
    for secret in range(8):
        calls = []

        def train_candidate(cj, cp, fit, seed, calls=calls):
            calls.append(seed)
            # Each candidate trains with its configuration's priced σ_c, on every training row.
            (cfg,) = [c for c in plan.details["search"]["configs"] if c["config"]["epochs"] == cj["epochs"]]
            assert cj["dp"]["noise_multiplier"] == cp["noise_multiplier"] == cfg["noise_multiplier"]
            assert (cp["sample_rate"], cp["steps"]) == (cfg["sample_rate"], cfg["steps"])
            assert len(fit["X_train"]) == len(arrays["X_train"])
            return train_arrays(cj, cp, fit, noise_seed=seed)

        events: list = []
        best = search_mod.run_search(job, plan, arrays, noise_seed=1000 + secret,
                                     train_candidate=train_candidate, progress=events.append)
        assert len(set(calls)) == len(calls)  # every candidate has its own secret noise
        # Constant work (the host's default): M candidates trained whatever K is, so the run
        # time does not depend on K; K (the ones that count) is in the admin's progress only.
        assert len(calls) == plan.details["search"]["max"] == 30
        counts.append(sum(1 for e in events if e.get("counted")))
        text = repr({k: v for k, v in best.items() if k != "model"})
        assert "best_score_so_far" not in text and "candidate" not in text.replace("best candidate", "")
    assert len(set(counts)) >= 2, counts  # same job, different host secrets: different K
    assert max(counts) <= 30
    assert plan.epsilon <= 2.0 and plan.accountant == "rdp-repeat-and-select"
    assert plan.details["search"]["naive_epsilon"] > plan.epsilon


@pytest.mark.opacus
@pytest.mark.slow
def test_search_job_through_the_daemon_releases_one_model_and_charges_the_search(tmp_path: Path):
    pytest.importorskip("opacus")
    from conftest import drop, ledger, make_home, outcomes, run_once

    home = make_home(tmp_path / "home", backend="opacus", timeout=300)
    drop(home, "s.json", _search_job("search-1"))
    drop(home, "m.json", {**_search_job("search-mock"), "backend": "mock"})
    r = run_once(home)
    assert r.returncode == 0, r.stderr.decode()
    out = outcomes(home)
    assert out["search-1"] == "artifact", out
    assert out["search-mock"] == "error"  # no silent run without the search
    art = __import__("json").loads((home / "outbox" / "search-1.json").read_text())
    assert art["backend"] == "opacus" and art["epsilon"] <= 2.0
    assert set(art["metrics"]) >= {"train_accuracy_dp"}  # scored on its training rows (the default)
    assert 0.0 <= art["metrics"]["train_accuracy_dp"] <= 1.0
    assert "candidates_run" not in __import__("json").dumps(art)
    spend = ledger(home).spend("search-1")
    assert spend["state"] == "committed" and spend["epsilon"] == pytest.approx(art["epsilon"])
    assert spend["accountant"] == "rdp-repeat-and-select"
    # One model only: one artifact and one envelope for the search, nothing else.
    assert sorted(p.name for p in (home / "outbox").iterdir() if p.name.startswith("search-1")) == [
        "search-1.dsse.json", "search-1.json"]


# --------------------------------------------------------------------------- the base mechanism Q


def _plan_search(search: dict, constant_work: bool | None = None, **kw):
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead import datasets
    from pandacead.jobs import Job
    from pandacead.trainers import TrainerContext

    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    options = {"home": "."} if constant_work is None else {"home": ".", "search_constant_work": constant_work}
    ctx = TrainerContext(datasets={"synthetic": info}, state_dir=".", options=options)
    job = Job.from_dict({**_search_job("q", user_id="u", search=search, **kw),
                         "model": {"type": "linear", "hidden": []}, "backend": None})
    _plan_search.last_job = job
    return OpacusTrainer().plan(job, ctx)


@pytest.mark.opacus
@pytest.mark.parametrize("fraction", [0.0, 0.2])
def test_charged_search_curve_is_dp_accountings_for_the_same_base_mechanism(fraction):
    """One configuration: Q = DP-SGD (q, σ, steps) composed with the Gaussian score N(0, σ_s²)
    on the same rows (validation_fraction 0), or the larger of the two (a disjoint split).
    The charged curve equals dp-accounting's RepeatAndSelectDpEvent of that Q (never below)."""
    pytest.importorskip("opacus")
    de = _dp_accounting().dp_event
    search = {"candidates": {"distribution": "logarithmic", "mean": 10}, "validation_fraction": fraction,
              "space": {"learning_rate": [0.05, 0.2], "epochs": [2], "batch_size": [64]}}
    plan = _plan_search(search, epsilon=3.0)
    s = plan.details["search"]
    (cfg,) = s["configs"]
    assert cfg["noise_multiplier"] == plan.noise_multiplier  # the only configuration keeps σ
    train = _base_event(cfg["sample_rate"], cfg["noise_multiplier"], cfg["steps"])
    score = de.GaussianDpEvent(s["score_noise"])
    charged = accounting.curve_from_json(plan.rdp)
    if fraction == 0:
        assert s["scored_on"] == "training rows" and s["n_validation_public"] == plan.n_train
        ref = _rdp(de.RepeatAndSelectDpEvent(de.ComposedDpEvent([train, score]), 10.0, 0.0), RDP_ORDERS)
    else:  # max(train, score) = train: σ_s is chosen so that the score never exceeds it
        assert s["scored_on"] == "validation split"
        ref = _rdp(de.RepeatAndSelectDpEvent(train, 10.0, 0.0), RDP_ORDERS)
    # K is capped at M = candidates.max (default 10 × mean): the charge is dp-accounting's curve
    # for the uncapped law plus the cap's penalty (tuning.truncation_penalty) — provably above it.
    pen = s["truncation"]
    assert s["max"] == 100 and 0 < pen["log_inv_one_minus_s"] < 0.1 and 0 < pen["log_inv_z"] < 0.01
    for a, got, r in zip(RDP_ORDERS, charged, ref):
        if math.isfinite(r):
            assert got >= r * (1 - 1e-9), (a, got, r)
            assert got == pytest.approx(r + pen["log_inv_z"] / (a - 1) + pen["log_inv_one_minus_s"], rel=1e-6)
    eps, _ = accounting.rdp_to_dp(dict(zip(RDP_ORDERS, charged)), plan.delta)
    assert eps == pytest.approx(plan.epsilon) and eps <= 3.0


@pytest.mark.opacus
def test_each_configuration_gets_the_least_noise_whose_curve_stays_under_the_reference():
    """Attack: a configuration trained with less noise than the plan's curve allows. Each
    configuration's own curve at its σ_c is at or below the curve charged for Q's training
    part at every order, and a cheaper schedule (fewer epochs) gets a smaller σ_c."""
    pytest.importorskip("opacus")
    from pandacead_opacus import search as search_mod

    search = {"candidates": {"distribution": "geometric", "mean": 4}, "validation_fraction": 0.2,
              "space": {"learning_rate": [0.1], "epochs": [1, 2, 4], "batch_size": [32, 64]}}
    plan = _plan_search(search, epsilon=3.0)
    cfgs = plan.details["search"]["configs"]
    ref = search_mod._train_curve(cfgs, plan.noise_multiplier)
    for c in cfgs:
        own = search_mod._config_curve(c, c["noise_multiplier"])
        assert all(own[a] <= ref[a] for a in ref), c["config"]
        assert c["noise_multiplier"] <= plan.noise_multiplier
        # σ_c is the least such σ (to the bisection's precision): 0.1 % less noise breaks the bound.
        if c["noise_multiplier"] < plan.noise_multiplier:
            tighter = search_mod._config_curve(c, c["noise_multiplier"] * 0.999)
            assert any(tighter[a] > ref[a] for a in ref if math.isfinite(ref[a]))
    by_epochs = {c["config"]["epochs"]: c["noise_multiplier"] for c in cfgs if c["config"]["batch_size"] == 64}
    assert by_epochs[1] < by_epochs[2] < by_epochs[4]
    # The charged curve covers the configurations as they actually train (score included).
    _, base, s_sigma = search_mod.search_curve(cfgs, plan.noise_multiplier, 4.0, 1.0, 0.2, 0.1,
                                               [c["noise_multiplier"] for c in cfgs])
    for c in cfgs:
        own = search_mod._config_curve(c, c["noise_multiplier"])
        assert all(own[a] <= base[a] for a in base)


@pytest.mark.opacus
def test_a_search_without_a_space_draws_around_the_jobs_own_values():
    """No `space`: the candidates are drawn around the job's values (lr scaled into
    DEFAULT_LR_RANGE, batch sizes times DEFAULT_BATCH_FACTORS, the job's epochs) — the plan
    prices exactly the configurations the run draws from."""
    pytest.importorskip("opacus")
    from pandacead_opacus import search as search_mod

    plan = _plan_search({"candidates": {"distribution": "logarithmic", "mean": 10}}, epsilon=3.0)
    s = plan.details["search"]
    lo, hi = search_mod.DEFAULT_LR_RANGE
    assert s["space"]["learning_rate"] == {"low": 0.05 * lo, "high": 0.05 * hi, "log": True}
    assert s["space"]["epochs"] == [2]
    assert sorted(c["config"]["batch_size"] for c in s["configs"]) == sorted(
        {round(64 * f) for f in search_mod.DEFAULT_BATCH_FACTORS})
    assert s["scored_on"] == "training rows" and s["score_share"] == search_mod.DEFAULT_SCORE_SHARE


# --------------------------------------------------------------------------- a cap on K, and constant work


def _best_of_law(q: list[float], pgf) -> list[float]:
    """Exact output law of "best of K i.i.d. draws of Q" (outcomes ordered by index): f(F_j) − f(F_{j−1})."""
    out, cdf_prev = [], 0.0
    for p in q:
        cdf = cdf_prev + p
        out.append(pgf(min(cdf, 1.0)) - pgf(cdf_prev))
        cdf_prev = cdf
    return out


def _renyi(p: list[float], r: list[float], order: float) -> float:
    return math.log(sum(a**order * b ** (1 - order) for a, b in zip(p, r) if a > 0)) / (order - 1)


@pytest.mark.parametrize("distribution,mean,cap", [("logarithmic", 10, 12), ("logarithmic", 10, 40),
                                                   ("geometric", 4, 6), ("poisson", 5, 7),
                                                   ("negative_binomial", 3, 5)])
def test_capping_k_costs_at_most_the_truncation_penalty_on_exact_laws(distribution, mean, cap):
    """The lemma behind `candidates.max`, checked exactly: for random pairs of base laws Q, Q′ on
    ordered outcomes, the Rényi divergence of best-of-K with K capped at M is at most the uncapped
    one plus log(1/Z)/(λ−1) + log(1/(1−s)) — and the bound is not vacuous (capping does cost)."""
    shape_arg = 0.5 if distribution == "negative_binomial" else None
    eta = tuning.distribution_shape(distribution, shape_arg)
    top = 400
    pmf = [tuning._pmf_by_shape(k, mean, eta) for k in range(top + 1)]
    z = sum(pmf[: cap + 1])

    def pgf(t):
        return sum(p * t**k for k, p in enumerate(pmf))

    def pgf_capped(t):
        return sum(p * t**k for k, p in enumerate(pmf[: cap + 1])) / z

    pen = tuning.truncation_penalty(mean, eta, cap)
    rng = random.Random(7)
    worst_slack = math.inf
    for _ in range(40):
        m = rng.randint(2, 6)
        q = [rng.random() + 0.05 for _ in range(m)]
        r = [x * math.exp(rng.uniform(-0.7, 0.7)) for x in q]
        q = [x / sum(q) for x in q]
        r = [x / sum(r) for x in r]
        for order in (1.5, 2.0, 4.0, 16.0):
            full = _renyi(_best_of_law(q, pgf), _best_of_law(r, pgf), order)
            capped = _renyi(_best_of_law(q, pgf_capped), _best_of_law(r, pgf_capped), order)
            bound = full + pen["log_inv_z"] / (order - 1) + pen["log_inv_one_minus_s"]
            assert capped <= bound + 1e-9, (order, capped, bound)
            worst_slack = min(worst_slack, bound - capped)
    assert worst_slack < pen["log_inv_one_minus_s"] + pen["log_inv_z"]  # the check can fail


def test_capped_count_follows_the_truncated_law_and_never_exceeds_the_cap():
    rng = random.Random(3)
    draws = [tuning.sample_count(rng.random(), "logarithmic", 10.0, max_count=15) for _ in range(20000)]
    assert max(draws) == 15 and min(draws) == 1
    pmf = [tuning.count_pmf(k, "logarithmic", 10.0) for k in range(1, 16)]
    z = sum(pmf)
    for k in (1, 2, 5, 15):
        expected = pmf[k - 1] / z
        assert abs(draws.count(k) / len(draws) - expected) < 4 * math.sqrt(expected / len(draws)) + 1e-3, k


def test_a_cap_below_the_mean_is_refused_and_the_default_cap_is_ten_means():
    with pytest.raises(JobRejected, match="cap of 5 candidates is below their mean 10"):
        _plan_search({"candidates": {"distribution": "logarithmic", "mean": 10, "max": 5}})
    plan = _plan_search({"candidates": {"distribution": "logarithmic", "mean": 4}})
    s = plan.details["search"]
    assert s["max"] == 40 and s["constant_work"] is True
    assert s["search_epsilon"] <= plan.epsilon + 1e-12  # calibrated with the cap priced in


@pytest.mark.opacus
def test_without_constant_work_a_search_trains_only_its_k_candidates():
    """The host may turn constant work off (`[trainer] search_constant_work = false`): K candidates
    are trained, so the run time reveals K (docs/privacy.md, "Residual channels")."""
    pytest.importorskip("opacus")
    from pandacead_opacus import search as search_mod

    plan = _plan_search({"candidates": {"distribution": "geometric", "mean": 3}}, constant_work=False)
    assert plan.details["search"]["constant_work"] is False
    job = _plan_search.last_job
    counts = set()
    for secret in range(10):
        calls, events = [], []

        def train_candidate(cj, cp, fit, seed, calls=calls):
            calls.append(seed)
            raise Diverged("Training diverged.", ["test"])

        with pytest.raises(JobFailed):
            search_mod.run_search(job, plan, {"X_train": np.zeros((4, 2)), "y_train": np.zeros(4)},
                                  noise_seed=secret, train_candidate=train_candidate, progress=events.append)
        assert len(calls) == sum(1 for e in events if e.get("counted")) <= plan.details["search"]["max"]
        counts.add(len(calls))
    assert len(counts) >= 2


def test_constant_work_refuses_a_search_whose_m_candidates_cannot_fit_in_the_timeout():
    """'No free work': under constant work a search trains M candidates; one whose M × (a lower
    bound of one candidate's time) exceeds the host's timeout is refused before it runs."""
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead import datasets
    from pandacead.jobs import Job
    from pandacead.trainers import TrainerContext

    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    job = Job.from_dict({**_search_job("slow", user_id="u", search={"candidates": {"distribution": "geometric",
                                                                                    "mean": 20}}),
                         "model": {"type": "linear", "hidden": []}, "backend": None, "epochs": 50,
                         "batch_size": 1})
    ctx = TrainerContext(datasets={"synthetic": info}, state_dir=".",
                         options={"home": ".", "timeout_seconds": 60.0})
    with pytest.raises(JobRejected, match="search trains 200 candidates"):
        OpacusTrainer().plan(job, ctx)
    ctx.options["search_constant_work"] = False  # K candidates only: no such refusal (nor protection)
    assert OpacusTrainer().plan(job, ctx).details["search"]["constant_work"] is False
