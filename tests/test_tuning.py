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

        best = search_mod.run_search(job, plan, arrays, noise_seed=1000 + secret,
                                     train_candidate=train_candidate, progress=lambda e: None)
        assert len(set(calls)) == len(calls)  # every candidate has its own secret noise
        counts.append(len(calls))
        text = repr({k: v for k, v in best.items() if k != "model"})
        assert "best_score_so_far" not in text and "candidate" not in text.replace("best candidate", "")
    assert len(set(counts)) >= 2, counts  # same job, different host secrets: different K
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


def _plan_search(search: dict, **kw):
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead import datasets
    from pandacead.jobs import Job
    from pandacead.trainers import TrainerContext

    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    ctx = TrainerContext(datasets={"synthetic": info}, state_dir=".", options={"home": "."})
    job = Job.from_dict({**_search_job("q", user_id="u", search=search, **kw),
                         "model": {"type": "linear", "hidden": []}, "backend": None})
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
    for a, got, r in zip(RDP_ORDERS, charged, ref):
        if math.isfinite(r):
            assert got >= r * (1 - 1e-9), (a, got, r)
            assert got == pytest.approx(r, rel=1e-6)
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
