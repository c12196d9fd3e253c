"""Statistical lower bounds on ε from an attack's successes: the mathematics of the audit.

Pure Python and numpy; no torch, no scipy. docs/audit.md states the theorems.

Two estimators:

* **many runs** (Jagielski, Ullman & Oprea 2020, "Auditing Differentially
  Private Machine Learning: How Private is Private SGD?"; Nasr, Song,
  Thakurta, Papernot & Carlini 2021, "Adversary Instantiation: Lower Bounds
  for Differentially Private Machine Learning"): the trainer runs N times
  without the canary and N times with it; a threshold test on a statistic of
  each output guesses "canary in" or "out". An (ε, δ)-DP mechanism forces
  every test to satisfy FPR + e^ε·FNR ≥ 1 − δ and FNR + e^ε·FPR ≥ 1 − δ, so
  with one-sided Clopper–Pearson upper bounds FPR⁺, FNR⁺ (each at level
  α/2, jointly 1 − α)

      ε ≥ max( log((1 − δ − FNR⁺)/FPR⁺), log((1 − δ − FPR⁺)/FNR⁺) ).

  Choosing the best threshold on the same outputs would be a multiple
  comparison the bound does not cover, so the test (threshold and direction)
  is chosen on a calibration share of the runs and the bound is computed on
  the others (`many_runs_bound`).

* **one run** (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1)
  Training Run", its main theorem and p-value algorithm): m canaries, each included
  independently with probability 1/2, one training run; the auditor guesses
  "in" for the k₊ highest scores and "out" for the k₋ lowest (r = k₊ + k₋
  guesses) and counts the correct guesses W. For an (ε, δ)-DP mechanism

      P[W ≥ v] ≤ P[W' ≥ v] + 2mδ · max_{i=1..m} P[v > W' ≥ v − i] / i,
      W' ~ Binomial(r, e^ε / (1 + e^ε)),

  and ε̂ is the largest ε this p-value rejects at level α
  (`one_run_bound`; a fixed small grid of (k₊, k₋) with a Bonferroni split of α).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "ManyRunsResult",
    "OneRunResult",
    "binomial_sf",
    "clopper_pearson_upper",
    "clopper_pearson_lower",
    "epsilon_from_rates",
    "gaussian_delta",
    "gaussian_epsilon",
    "many_runs_bound",
    "many_runs_max",
    "one_run_bound",
    "one_run_max",
    "one_run_p_value",
]


# --------------------------------------------------------------------------- binomial tails


@lru_cache(maxsize=64)
def _log_factorials(n: int) -> np.ndarray:
    return np.array([math.lgamma(i + 1.0) for i in range(n + 1)], dtype=np.float64)


def _log_pmf_all(n: int, p: float) -> np.ndarray:
    """log P[Bin(n, p) = k] for k = 0..n."""
    lf = _log_factorials(n)
    k = np.arange(n + 1)
    if p <= 0.0:
        out = np.full(n + 1, -np.inf)
        out[0] = 0.0
        return out
    if p >= 1.0:
        out = np.full(n + 1, -np.inf)
        out[n] = 0.0
        return out
    return lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)


def binomial_sf(v: int, n: int, p: float) -> float:
    """P[Bin(n, p) ≥ v]."""
    if v <= 0:
        return 1.0
    if v > n:
        return 0.0
    lp = _log_pmf_all(n, p)[v:]
    top = float(lp.max())
    if top == -math.inf:
        return 0.0
    return float(min(1.0, math.exp(top) * np.exp(lp - top).sum()))


def binomial_pmf(n: int, p: float) -> np.ndarray:
    return np.exp(_log_pmf_all(n, p))


def _cdf_matrix(n: int, p: np.ndarray) -> np.ndarray:
    """P[Bin(n, p_k) ≤ k] for k = 0..n, one p per k (vectorised)."""
    lf = _log_factorials(n)
    j = np.arange(n + 1)
    pc = np.clip(p, 1e-300, 1 - 1e-16)[:, None]
    logc = lf[n] - lf[j] - lf[n - j]
    lpmf = logc[None, :] + j[None, :] * np.log(pc) + (n - j)[None, :] * np.log1p(-pc)
    mask = j[None, :] <= np.arange(n + 1)[:, None]
    lpmf = np.where(mask, lpmf, -np.inf)
    top = lpmf.max(axis=1, keepdims=True)
    return np.minimum(1.0, np.exp(top[:, 0]) * np.exp(lpmf - top).sum(axis=1))


@lru_cache(maxsize=32)
def _cp_upper_table(n: int, alpha: float) -> np.ndarray:
    """Clopper–Pearson one-sided upper bounds at level 1 − α for k = 0..n successes."""
    lo = np.zeros(n + 1)
    hi = np.ones(n + 1)
    for _ in range(60):  # P[Bin(n, p) ≤ k] decreases in p: find where it crosses α
        mid = (lo + hi) / 2
        above = _cdf_matrix(n, mid) > alpha
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    hi[n] = 1.0
    return hi


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """The smallest p with P[Bin(n, p) ≤ k] ≤ α: an upper bound on a rate at confidence 1 − α."""
    if n <= 0:
        return 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k = {k} successes out of n = {n}")
    if k == n:
        return 1.0
    if k == 0:  # closed form
        return 1.0 - alpha ** (1.0 / n)
    return float(_cp_upper_vec(np.array([k]), int(n), float(alpha))[0])


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """A lower bound on a rate at confidence 1 − α (the upper bound of the failures, mirrored)."""
    if n <= 0 or k == 0:
        return 0.0
    return 1.0 - clopper_pearson_upper(n - k, n, alpha)


def epsilon_from_rates(fpr: float, fnr: float, delta: float) -> float:
    """The largest ε any (ε, δ)-DP mechanism's test with these error rates rules out (≥ 0)."""
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        num = 1.0 - delta - b
        if num <= 0:
            continue
        best = max(best, math.inf if a <= 0 else math.log(num / a))
    return best


# --------------------------------------------------------------------------- many runs


@dataclass
class ManyRunsResult:
    """A many-runs bound: the chosen test and what it shows on the evaluation runs."""

    epsilon_lower: float
    epsilon_point: float
    epsilon_upper: float
    epsilon_max: float
    threshold: float
    direction: str  # "high" (score ≥ threshold ⇒ guess "canary in") or "low"
    fpr: float
    fnr: float
    fpr_upper: float
    fnr_upper: float
    false_positives: int
    false_negatives: int
    evaluation_out: int
    evaluation_in: int
    calibration_out: int
    calibration_in: int
    confidence: float
    delta: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _rule_counts(out: np.ndarray, inn: np.ndarray, t: float, direction: str) -> tuple[int, int]:
    """(false positives among `out`, false negatives among `inn`) of the rule."""
    if direction == "high":
        return int(np.sum(out >= t)), int(np.sum(inn < t))
    return int(np.sum(out <= t)), int(np.sum(inn > t))


def _cp_epsilon(fp: int, fn: int, n_out: int, n_in: int, alpha: float, delta: float) -> float:
    fpr_u = clopper_pearson_upper(fp, n_out, alpha / 2)
    fnr_u = clopper_pearson_upper(fn, n_in, alpha / 2)
    return epsilon_from_rates(fpr_u, fnr_u, delta)


def many_runs_max(n_out: int, n_in: int, delta: float, confidence: float = 0.95) -> float:
    """The most a many-runs test on this many evaluation runs can certify (perfect separation)."""
    return _cp_epsilon(0, 0, n_out, n_in, 1.0 - confidence, delta)


def _cp_upper_vec(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """`clopper_pearson_upper` for an array of success counts."""
    k = np.asarray(k, dtype=np.int64)
    try:  # scipy (the dev extra, and a dependency of syft) is much faster for large n
        from scipy.special import betaincinv
    except ImportError:
        table = _cp_upper_table(int(n), float(alpha)).copy()
        table[0] = 1.0 - alpha ** (1.0 / n)
        return table[k]
    kk = np.minimum(k, n - 1)
    out = betaincinv(kk + 1.0, float(n) - kk, 1.0 - alpha)
    out = np.where(k == 0, 1.0 - alpha ** (1.0 / n), out)
    return np.where(k >= n, 1.0, out)


def _eps_vec(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(fpr > 0, np.log(np.maximum(1.0 - delta - fnr, 1e-300) / fpr), np.inf)
        a = np.where(1.0 - delta - fnr > 0, a, 0.0)
        b = np.where(fnr > 0, np.log(np.maximum(1.0 - delta - fpr, 1e-300) / fnr), np.inf)
        b = np.where(1.0 - delta - fpr > 0, b, 0.0)
    return np.maximum(0.0, np.maximum(a, b))


def _best_rule(out: np.ndarray, inn: np.ndarray, alpha: float, delta: float) -> tuple[float, str, float]:
    """The threshold test with the best Clopper–Pearson bound on these runs (used on the calibration share)."""
    values = np.unique(np.concatenate([out, inn]))
    if len(values) == 1:
        return float(values[0]), "high", 0.0
    # Midpoints between neighbouring distinct values, plus the two outer edges.
    cands = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    best = (float(cands[0]), "high", -1.0)
    so, si = np.sort(out), np.sort(inn)
    for direction in ("high", "low"):
        if direction == "high":
            fps = len(so) - np.searchsorted(so, cands, side="left")
            fns = np.searchsorted(si, cands, side="left")
        else:
            fps = np.searchsorted(so, cands, side="right")
            fns = len(si) - np.searchsorted(si, cands, side="right")
        eps = _eps_vec(_cp_upper_vec(fps, len(so), alpha / 2), _cp_upper_vec(fns, len(si), alpha / 2), delta)
        i = int(np.argmax(eps))
        if eps[i] > best[2]:
            best = (float(cands[i]), direction, float(eps[i]))
    return best


def many_runs_bound(
    scores_out: Any,
    scores_in: Any,
    *,
    delta: float,
    confidence: float = 0.95,
    calibration: float = 0.5,
) -> ManyRunsResult:
    """ε̂ from runs without (`scores_out`) and with (`scores_in`) the canary.

    The first `calibration` share of each list chooses the test (the threshold
    and direction with the best Clopper–Pearson bound there); the rest gives
    the bound, at `confidence`. Run order must not depend on the scores.
    """
    out = np.asarray(scores_out, dtype=np.float64)
    inn = np.asarray(scores_in, dtype=np.float64)
    if len(out) < 2 or len(inn) < 2:
        raise ValueError("a many-runs audit needs at least 2 runs with and 2 without the canary")
    if not (np.all(np.isfinite(out)) and np.all(np.isfinite(inn))):
        raise ValueError("the audit's test statistic has non-finite values")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    alpha = 1.0 - confidence
    co = max(1, min(len(out) - 1, int(round(len(out) * calibration))))
    ci = max(1, min(len(inn) - 1, int(round(len(inn) * calibration))))
    cal_out, ev_out = out[:co], out[co:]
    cal_in, ev_in = inn[:ci], inn[ci:]
    t, direction, cal_eps = _best_rule(cal_out, cal_in, alpha, delta)
    fp, fn = _rule_counts(ev_out, ev_in, t, direction)
    n_out, n_in = len(ev_out), len(ev_in)
    fpr_u = clopper_pearson_upper(fp, n_out, alpha / 2)
    fnr_u = clopper_pearson_upper(fn, n_in, alpha / 2)
    fpr_l = clopper_pearson_lower(fp, n_out, alpha / 2)
    fnr_l = clopper_pearson_lower(fn, n_in, alpha / 2)
    return ManyRunsResult(
        epsilon_lower=epsilon_from_rates(fpr_u, fnr_u, delta),
        epsilon_point=epsilon_from_rates(fp / n_out, fn / n_in, delta),
        epsilon_upper=epsilon_from_rates(fpr_l, fnr_l, 0.0),
        epsilon_max=many_runs_max(n_out, n_in, delta, confidence),
        threshold=t,
        direction=direction,
        fpr=fp / n_out,
        fnr=fn / n_in,
        fpr_upper=fpr_u,
        fnr_upper=fnr_u,
        false_positives=fp,
        false_negatives=fn,
        evaluation_out=n_out,
        evaluation_in=n_in,
        calibration_out=co,
        calibration_in=ci,
        confidence=confidence,
        delta=delta,
        details={"calibration_epsilon": cal_eps},
    )


# --------------------------------------------------------------------------- one run


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Steinke, Nasr & Jagielski 2023, main theorem: a bound on P[≥ v correct of r guesses] under (ε, δ)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 ≤ v ≤ r ≤ m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = binomial_sf(v, r, q)
    if delta <= 0 or v == 0:
        return min(1.0, beta)
    pmf = binomial_pmf(r, q)
    # Σ_{j=v−i}^{v−1} pmf[j] = P[v > W' ≥ v − i]; for i > v the sum stops growing, so i ≤ v suffices.
    below = pmf[:v][::-1]  # pmf[v−1], pmf[v−2], …, pmf[0]
    sums = np.cumsum(below)
    alpha = float(np.max(sums / np.arange(1, v + 1)))
    return min(1.0, beta + 2.0 * m * delta * alpha)


def _one_run_epsilon(m: int, r: int, v: int, delta: float, level: float) -> float:
    """The largest ε whose p-value is below `level` (0 if none)."""
    if one_run_p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi * 2
        if hi > 64:
            return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_grid(m: int) -> list[tuple[int, int]]:
    """The (k₊, k₋) guess counts tried, fixed before the scores are seen."""
    ks = sorted({max(1, m // d) for d in (50, 20, 10, 5, 2)})
    return [(k, k) for k in ks if 2 * k <= m]


@dataclass
class OneRunResult:
    epsilon_lower: float
    epsilon_max: float
    canaries: int
    included: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    confidence: float
    delta: float
    tests: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


def one_run_bound(scores: Any, included: Any, *, delta: float, confidence: float = 0.95) -> OneRunResult:
    """ε̂ from one run: canary scores (higher ⇒ more likely included) and who was included."""
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    m = len(s)
    if m < 4 or len(inc) != m:
        raise ValueError("a one-run audit needs at least 4 canaries and one inclusion flag each")
    if not np.all(np.isfinite(s)):
        raise ValueError("the audit's test statistic has non-finite values")
    grid = one_run_grid(m)
    level = (1.0 - confidence) / len(grid)
    order = np.argsort(s, kind="stable")  # ascending
    best: tuple[float, int, int, int, int] = (0.0, grid[0][0], grid[0][1], 0, 0)
    tried = []
    for kp, km in grid:
        top, bottom = order[m - kp :], order[:km]
        v = int(inc[top].sum() + (~inc[bottom]).sum())
        r = kp + km
        e = _one_run_epsilon(m, r, v, delta, level)
        tried.append({"k_plus": kp, "k_minus": km, "correct": v, "epsilon": e})
        if e > best[0] or not tried[:-1]:
            best = (e, kp, km, v, r)
    e, kp, km, v, r = best
    return OneRunResult(
        epsilon_lower=e,
        epsilon_max=one_run_max(m, delta, confidence),
        canaries=m,
        included=int(inc.sum()),
        guesses=r,
        correct=v,
        k_plus=kp,
        k_minus=km,
        confidence=confidence,
        delta=delta,
        tests=len(grid),
        details={"grid": tried},
    )


def one_run_max(m: int, delta: float, confidence: float = 0.95) -> float:
    """The most a one-run audit with m canaries can certify (every guess right)."""
    grid = one_run_grid(m)
    level = (1.0 - confidence) / len(grid)
    return max(_one_run_epsilon(m, kp + km, kp + km, delta, level) for kp, km in grid)


# --------------------------------------------------------------------------- the ideal Gaussian mechanism


def _log_ndtr(x: float) -> float:
    if x > -37.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    z = -x / math.sqrt(2.0)
    t = 1.0 / (2.0 * z * z)
    return -z * z - math.log(z * math.sqrt(math.pi)) + math.log(1.0 - t + 3.0 * t**2 - 15.0 * t**3) - math.log(2.0)


def gaussian_delta(epsilon: float, mu: float) -> float:
    """Balle & Wang 2018: the exact δ(ε) of the Gaussian mechanism with Δ/σ = μ."""
    la = _log_ndtr(mu / 2.0 - epsilon / mu)
    lb = _log_ndtr(-mu / 2.0 - epsilon / mu)
    ratio = epsilon + lb - la
    return 0.0 if ratio >= 0 else math.exp(la) * -math.expm1(ratio)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact ε of the Gaussian mechanism with Δ/σ = μ at δ (bisection)."""
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if gaussian_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
    return hi
