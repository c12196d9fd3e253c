"""The audit's statistics against mechanisms whose ε is known exactly (pure numpy, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pandacead.audit import estimators as est


def gaussian_runs(mu: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ideal Gaussian mechanism with sensitivity/σ = μ: N(0, 1) without the canary, N(μ, 1) with it."""
    return rng.standard_normal(n), mu + rng.standard_normal(n)


def test_clopper_pearson_matches_known_values():
    # scipy.stats.beta.ppf(0.95, k + 1, n - k), independently computed
    assert est.clopper_pearson_upper(3, 100, 0.05) == pytest.approx(0.0757108, abs=1e-6)
    assert est.clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert est.clopper_pearson_upper(100, 100, 0.05) == 1.0
    assert est.clopper_pearson_lower(97, 100, 0.05) == pytest.approx(1 - 0.0757108, abs=1e-6)
    # the numpy-only fallback gives the same bounds as the scipy path
    table = est._cp_upper_table(100, 0.05)
    assert table[3] == pytest.approx(0.0757108, abs=1e-6)
    assert table[50] == pytest.approx(est.clopper_pearson_upper(50, 100, 0.05), abs=1e-6)


def test_exact_gaussian_epsilon_matches_the_analytic_profile():
    # Balle & Wang 2018: δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ)
    eps = est.gaussian_epsilon(1.0, 1e-5)
    assert est.gaussian_delta(eps, 1.0) == pytest.approx(1e-5, rel=1e-6)
    assert eps == pytest.approx(4.377, abs=2e-3)


def test_epsilon_from_rates_uses_both_directions_and_delta():
    assert est.epsilon_from_rates(0.1, 0.5, 0.0) == pytest.approx(math.log(5))
    assert est.epsilon_from_rates(0.5, 0.1, 0.0) == pytest.approx(math.log(5))
    assert est.epsilon_from_rates(0.1, 0.5, 0.1) == pytest.approx(math.log(4))
    assert est.epsilon_from_rates(0.5, 0.5, 0.0) == 0.0


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_many_runs_bound_stays_below_the_exact_gaussian_epsilon(mu):
    delta = 1e-5
    exact = est.gaussian_epsilon(mu, delta)
    rng = np.random.default_rng(int(mu * 100))
    bounds = [est.many_runs_bound(*gaussian_runs(mu, 1000, rng), delta=delta).epsilon_lower for _ in range(20)]
    assert max(bounds) <= exact
    assert min(bounds) >= 0.0


def test_many_runs_bound_approaches_the_exact_epsilon_as_trials_grow():
    delta, mu = 1e-5, 1.0
    exact = est.gaussian_epsilon(mu, delta)  # 4.38
    rng = np.random.default_rng(7)
    means = []
    for n in (100, 1000, 30_000):
        means.append(np.mean([est.many_runs_bound(*gaussian_runs(mu, n, rng), delta=delta).epsilon_lower
                              for _ in range(3)]))
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert means[-1] <= exact
    assert means[-1] >= 0.4 * exact, means  # ≈ 2.1 of 4.38 with 3·10⁴ runs per side (2.7 with 10⁵)


def test_a_mechanism_without_noise_gives_exactly_the_most_the_runs_can_certify():
    out, inn = np.zeros(100), np.ones(100)
    res = est.many_runs_bound(out, inn, delta=1e-5)
    assert res.false_positives == res.false_negatives == 0
    assert res.epsilon_lower == pytest.approx(res.epsilon_max)
    assert res.epsilon_max == pytest.approx(est.many_runs_max(50, 50, 1e-5))
    # log((1 − δ − (1 − 0.025^(1/50))) / (1 − 0.025^(1/50)))
    u = 1 - 0.025 ** (1 / 50)
    assert res.epsilon_max == pytest.approx(math.log((1 - 1e-5 - u) / u))


def test_the_test_is_chosen_on_calibration_runs_only():
    # Scores that separate perfectly only in the evaluation share: the rule
    # chosen on the calibration share (where they overlap fully) certifies nothing
    # at a threshold that happens to work there.
    rng = np.random.default_rng(3)
    cal_out, cal_in = rng.standard_normal(50), rng.standard_normal(50)
    res = est.many_runs_bound(np.concatenate([cal_out, np.zeros(50)]), np.concatenate([cal_in, np.zeros(50)]),
                              delta=1e-5)
    assert res.epsilon_lower == 0.0
    assert res.calibration_out == res.calibration_in == 50


@pytest.mark.parametrize("mu", [1.0, 2.0, 4.0])
def test_one_run_bound_stays_below_the_exact_gaussian_epsilon(mu):
    delta = 1e-5
    exact = est.gaussian_epsilon(mu, delta)
    rng = np.random.default_rng(int(mu * 10))
    for _ in range(10):
        included = rng.random(1000) < 0.5
        scores = mu * included + rng.standard_normal(1000)
        res = est.one_run_bound(scores, included, delta=delta)
        assert 0.0 <= res.epsilon_lower <= exact
        assert res.epsilon_lower <= res.epsilon_max


def test_one_run_bound_grows_with_canaries():
    rng = np.random.default_rng(11)
    means = []
    for m in (100, 1000, 10_000):
        vals = []
        for _ in range(3):
            included = rng.random(m) < 0.5
            vals.append(est.one_run_bound(2.0 * included + rng.standard_normal(m), included, delta=1e-5).epsilon_lower)
        means.append(np.mean(vals))
    assert means[0] < means[1] < means[2] <= est.gaussian_epsilon(2.0, 1e-5)


def test_one_run_p_value_is_randomized_response_tail_without_delta():
    # Steinke et al. 2023, main theorem with δ = 0: P[Binomial(r, e^ε/(1+e^ε)) ≥ v]
    q = 1 / (1 + math.exp(-1.0))
    tail = sum(math.comb(20, j) * q**j * (1 - q) ** (20 - j) for j in range(17, 21))
    assert est.one_run_p_value(100, 20, 17, 1.0, 0.0) == pytest.approx(tail)
    assert est.one_run_p_value(100, 20, 17, 1.0, 1e-3) > tail  # δ adds 2mδ·max_i P[v > W' ≥ v − i]/i


def test_one_run_bound_of_randomized_response_stays_below_its_epsilon():
    # ε-DP randomized response on each canary's membership bit: the exact ε is known.
    eps = 2.0
    rng = np.random.default_rng(5)
    m = 5000
    included = rng.random(m) < 0.5
    keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    reported = np.where(keep, included, ~included).astype(float) + 1e-9 * rng.standard_normal(m)
    res = est.one_run_bound(reported, included, delta=0.0)
    assert 0.5 * eps <= res.epsilon_lower <= eps
