"""Private hyperparameter search: the price of "run a random number of candidates, release the best".

Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential Privacy"
(ICLR 2022, arXiv 2110.03620). If a base algorithm Q — here: draw
hyperparameters, train with DP-SGD, score the model with a DP mechanism — is
(λ, ε(λ))-RDP at every order, and it is run K times with K drawn from one of
the distributions below *independently of the data*, then releasing only the
best candidate (by its DP score) is RDP with the curve `repeat_and_select`
computes. docs/accounting.md ("Private hyperparameter search") states the two
theorems used:

* Theorem 2 (truncated negative binomial D_{η,γ}, η > −1, γ ∈ (0, 1); η = 0 is
  the logarithmic distribution, η = 1 the geometric): for every λ > 1 and
  every λ̂ ≥ 1,
  ε'(λ) = ε(λ) + (1+η)(1 − 1/λ̂) ε(λ̂) + (1+η) log(1/γ)/λ̂ + log(E[K])/(λ−1).
  We take the minimum over λ̂ in the curve's orders.
* Theorem 6 (Poisson, mean μ): if Q is also (ε̂, δ̂)-DP with
  ε̂ = log(1 + 1/(λ−1)), then ε'(λ) = ε(λ) + μ·δ̂ + log(μ)/(λ−1); δ̂ is obtained
  from Q's curve by the RDP→DP conversion of Canonne, Kamath & Steinke
  (arXiv 2004.00010, Prop. 12), the one dp-accounting uses.

Then RDP's monotonicity in λ lowers each order's value to the smallest value
at any higher order. The result equals dp-accounting's
`RepeatAndSelectDpEvent` on the same orders (tests/test_tuning.py checks it).

**A cap on K** (`max_count` = M: the law conditioned on K ≤ M, so a search
has a bounded run time and can do a K-independent amount of work). With
Z = P[K ≤ M] and s = E[K·1{K > M}] / E[K] (the size-biased tail), the capped
search's curve is the uncapped one plus log(1/Z)/(λ−1) + log(1/(1−s)) at every
order (`truncation_penalty`; proof in docs/accounting.md: the probability of
each outcome of best-of-K is ∫ f′ over an interval of [0, 1], f the law's
probability generating function; capping multiplies f′ pointwise by a factor
in [(1−s)/Z, 1/Z], because the tail's share of f′(t) grows with t).

Pure Python and `math` only (the daemon and the CLI may import it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "DISTRIBUTIONS",
    "count_pmf",
    "distribution_shape",
    "gaussian_rdp",
    "repeat_and_select",
    "rdp_delta",
    "sample_count",
    "tnb_gamma",
    "tnb_mean",
    "truncation_penalty",
]

#: Supported laws of the number of candidates K, and their shape η
#: (dp-accounting's `shape`): logarithmic η = 0, geometric η = 1, Poisson η = ∞,
#: truncated negative binomial any η in (0, ∞) given as `shape`.
DISTRIBUTIONS = ("logarithmic", "geometric", "poisson", "negative_binomial")

#: Largest mean number of candidates a job may ask for (the schema says the same).
MAX_MEAN = 100.0


def distribution_shape(distribution: str, shape: float | None = None) -> float:
    """η of a named distribution (`shape` only for the negative binomial)."""
    if distribution == "logarithmic":
        return 0.0
    if distribution == "geometric":
        return 1.0
    if distribution == "poisson":
        return math.inf
    if distribution == "negative_binomial":
        if shape is None or not (math.isfinite(shape) and shape > 0):
            raise ValueError("a negative_binomial search needs a finite shape > 0")
        return float(shape)
    raise ValueError(f"unknown distribution {distribution!r} (use one of {', '.join(DISTRIBUTIONS)})")


def _logx_over_xm1(x: float) -> float:
    """log(x)/(x−1), continuous at x = 1."""
    if abs(x - 1) < 1e-6:
        y = x - 1
        return 1 - y / 2 + y * y / 3
    return math.log(x) / (x - 1)


def _expm1_over_x(x: float) -> float:
    """(e^x − 1)/x, continuous at x = 0."""
    if abs(x) < 1e-6:
        return 1 + x / 2 + x * x / 6
    return math.expm1(x) / x


def tnb_mean(gamma: float, shape: float) -> float:
    """E[K] for the truncated negative binomial D_{η=shape, γ}."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma {gamma!r} is not in (0, 1]")
    if shape == 1:
        return 1 / gamma
    if shape == 0:
        return 1 / (gamma * _logx_over_xm1(gamma))
    return 1 / (gamma * _expm1_over_x(shape * math.log(gamma)) * _logx_over_xm1(gamma))


def tnb_gamma(shape: float, mean: float, tolerance: float = 1e-9) -> float:
    """γ of the truncated negative binomial with this shape and mean.

    Bisection as dp-accounting does; returns the lower end of the final
    bracket (a smaller γ means a larger mean, so the price is not understated).
    """
    if shape < 0 or not math.isfinite(shape):
        raise ValueError(f"shape {shape!r} must be finite and >= 0")
    if not (math.isfinite(mean) and mean >= 1):
        raise ValueError(f"mean {mean!r} must be >= 1")
    if shape == 1:
        return 1 / mean
    lo, hi = 0.0, min(1.0, 2 * (shape + 1) / mean)
    while hi > lo * (1 + tolerance):
        mid = (lo + hi) / 2
        if tnb_mean(mid, shape) < mean:
            hi = mid
        else:
            lo = mid
    return lo


def rdp_delta(curve: Mapping[float, float], epsilon: float) -> float:
    """The δ at which a mechanism with this RDP curve is (ε, δ)-DP (Canonne et al. 2020, Prop. 12).

    δ = min over orders of min( sqrt(1 − e^{−ρ}) , exp((α−1)(ρ − ε + log(1 − 1/α)) − log α) ),
    the second term only for α > 1.01 — the formula dp-accounting's
    `compute_delta` implements.
    """
    if epsilon < 0:
        raise ValueError("epsilon must be >= 0")
    best = math.inf
    for order, rho in curve.items():
        a, r = float(order), float(rho)
        if r < 0 or r == 0:
            log_delta = -math.inf
        elif math.isinf(r):
            log_delta = 0.0
        else:
            log_delta = 0.5 * math.log1p(-math.exp(-r))
        if a > 1.01 and math.isfinite(r):
            log_delta = min(log_delta, (a - 1) * (r - epsilon + math.log1p(-1 / a)) - math.log(a))
        best = min(best, log_delta)
    return min(math.exp(best), 1.0)


def gaussian_rdp(noise_multiplier: float, order: float) -> float:
    """RDP of the Gaussian mechanism with sensitivity 1 and noise σ: α/(2σ²) (Mironov 2017)."""
    return float(order) / (2 * noise_multiplier**2)


def _law(mean: float, shape: float) -> Callable[[int], float]:
    """k ↦ P[K = k] for the law of shape η (∞: Poisson, which has K = 0 too).

    γ (a bisection) and the normaliser are computed once per law, not once per k."""
    if math.isinf(shape):
        log_mean = math.log(mean)
        return lambda k: math.exp(-mean + k * log_mean - math.lgamma(k + 1)) if k >= 0 else 0.0
    gamma = tnb_gamma(shape, mean)
    if gamma >= 1:  # the geometric law of mean 1: K = 1 always
        return lambda k: 1.0 if k == 1 else 0.0
    # In log space, with a normaliser that stays accurate as γ → 1 (a mean near 1) and for a tiny
    # η: log(1/γ) and γ^{−η} − 1 cancel catastrophically there (a relative error of 1e-7 at
    # mean 1), and that error is common to every k, so it went straight into Z = P[K ≤ M].
    neg_log_gamma = -math.log(gamma)
    log1m_gamma = math.log1p(-gamma)
    if shape == 0:  # (1−γ)^k / (k · log(1/γ))
        log_nlg = math.log(neg_log_gamma)
        return lambda k: math.exp(k * log1m_gamma - math.log(k) - log_nlg) if k >= 1 else 0.0
    # (1−γ)^k Γ(k+η) / (Γ(η) k! (γ^{−η} − 1)), with Γ(η)(γ^{−η} − 1) = Γ(η+1) log(1/γ) (e^x − 1)/x, x = η log(1/γ)
    log_norm = math.lgamma(shape + 1) + math.log(neg_log_gamma) + math.log(_expm1_over_x(shape * neg_log_gamma))
    return lambda k: (math.exp(k * log1m_gamma + math.lgamma(k + shape) - math.lgamma(k + 1) - log_norm)
                      if k >= 1 else 0.0)


def _pmf_by_shape(k: int, mean: float, shape: float) -> float:
    """P[K = k] for the law of shape η (∞: Poisson, which has K = 0 too)."""
    return _law(mean, shape)(k)


def truncation_penalty(mean: float, shape: float, max_count: int) -> dict[str, float]:
    """What capping K at `max_count` adds to the search's curve (module docstring).

    Returns Z = P[K ≤ M], s = E[K·1{K > M}]/E[K], and the two added terms:
    `log_inv_z` (divided by λ−1 at order λ) and `log_inv_one_minus_s` (added at
    every order). Both sums run over k ≤ M, so Z and 1 − s are computed from
    the kept mass (not as 1 minus a tail), rounded down by a relative 1e-12 so
    that float error cannot make the penalty smaller.
    """
    return dict(_truncation_penalty(float(mean), float(shape), int(max_count)))


@functools.lru_cache(maxsize=256)
def _truncation_penalty(mean: float, shape: float, m: int) -> tuple[tuple[str, float], ...]:
    """`truncation_penalty`, cached: a pure function of the law and the cap, asked for once per
    step of σ's calibration (an O(M) sum each time)."""
    if m < 1:
        raise ValueError(f"the cap on the number of candidates {m!r} must be >= 1")
    law = _law(mean, shape)
    pmf = [law(k) for k in range(0, m + 1)]
    z = min(1.0, math.fsum(pmf) * (1 - 1e-12))
    kept_mean = math.fsum(k * p for k, p in enumerate(pmf)) * (1 - 1e-12)
    # E[K] of the law actually sampled (its γ is the bisection's lower end: a mean >= the nominal).
    full_mean = mean if math.isinf(shape) else max(mean, tnb_mean(tnb_gamma(shape, mean), shape))
    one_minus_s = min(1.0, kept_mean / full_mean)
    if not (z > 0 and one_minus_s > 0):
        raise ValueError(f"a cap of {m} candidates keeps no usable mass of the law (mean {mean:g})")
    return tuple({"max_count": m, "z": z, "s": 1 - one_minus_s,
                  "log_inv_z": -math.log(z), "log_inv_one_minus_s": -math.log(one_minus_s)}.items())


def repeat_and_select(curve: Mapping[float, float], mean: float, shape: float,
                      max_count: int | None = None) -> dict[float, float]:
    """The RDP curve of running a mechanism K ~ (mean, shape) times and releasing the best output.

    `curve` is the base mechanism's {order: ρ}; orders must be > 1 (the
    result is ∞ at orders ≤ 1). `shape` as in `distribution_shape`. See the
    module docstring for the theorems. `max_count`: K capped at this value
    (the law conditioned on K ≤ max_count), priced by `truncation_penalty`.
    """
    out = _repeat_and_select(curve, mean, shape)
    if max_count is None:
        return out
    pen = truncation_penalty(mean, shape, max_count)
    return {a: (v + pen["log_inv_z"] / (a - 1) + pen["log_inv_one_minus_s"]) if a > 1 else math.inf
            for a, v in out.items()}


def _repeat_and_select(curve: Mapping[float, float], mean: float, shape: float) -> dict[float, float]:
    if not (math.isfinite(mean) and mean >= 1):
        raise ValueError(f"the mean number of candidates {mean!r} must be >= 1")
    if math.isnan(shape) or shape < 0:
        raise ValueError(f"shape {shape!r} must be >= 0")
    orders = sorted(float(a) for a in curve)
    rho = {float(a): float(v) for a, v in curve.items()}
    out: dict[float, float] = {}
    if math.isinf(shape):  # Poisson, Theorem 6
        for a in orders:
            if a <= 1:
                out[a] = math.inf
                continue
            eps_hat = math.log1p(1 / (a - 1))
            delta_hat = rdp_delta(rho, eps_hat)
            out[a] = rho[a] + mean * delta_hat + math.log(mean) / (a - 1)
        # No monotonicity step here, exactly as dp-accounting: the charged curve
        # is then equal to (never below) the reference implementation's.
        return out
    else:  # truncated negative binomial, Theorem 2
        gamma = tnb_gamma(shape, mean)
        # Theorem 2's E[K] is the mean of the law actually sampled, whose γ is the bisection's
        # lower end: up to a relative 5e-8 above the nominal mean (η = 100, mean 1).
        mean = max(mean, tnb_mean(gamma, shape))
        # λ̂ >= 1 only (Theorem 2): below 1, (1 − 1/λ̂)·ε(λ̂) is negative and would undercharge.
        hats = [a for a in orders if a >= 1]
        if not hats:
            raise ValueError("the base curve has no order >= 1")
        c = (1 + shape) * min((1 - 1 / a) * rho[a] - math.log(gamma) / a for a in hats)
        for a in orders:
            out[a] = rho[a] + math.log(mean) / (a - 1) + c if a > 1 else math.inf
    # Monotonicity of Rényi divergences in the order (as dp-accounting, TNB only).
    result: dict[float, float] = {}
    for i, a in enumerate(orders):
        result[a] = min(out[b] for b in orders[i:])
    return result


def count_pmf(k: int, distribution: str, mean: float, shape: float | None = None) -> float:
    """P[K = k] for the law of the number of candidates (the law `sample_count` draws from)."""
    return _pmf_by_shape(k, mean, distribution_shape(distribution, shape))


def sample_count(uniform: float, distribution: str, mean: float, shape: float | None = None,
                 max_count: int | None = None) -> int:
    """K for one uniform draw in [0, 1) by inversion of the CDF (exact up to float rounding).

    The uniform must come from the job's secret generator: a K the buyer could
    predict would not be the random repetition the theorems assume. With
    `max_count` = M, K follows the law conditioned on K ≤ M (the uniform is
    scaled by P[K ≤ M]): never above M, and priced by `truncation_penalty`.
    Without it the inversion stops at 100 000 (a cap of probability far below
    float rounding for the means the schema allows).
    """
    if not 0 <= uniform < 1:
        raise ValueError("uniform must be in [0, 1)")
    eta = distribution_shape(distribution, shape)
    lo = 0 if math.isinf(eta) else 1
    cap = 100_000 if max_count is None else int(max_count)
    law = _law(mean, eta)
    if max_count is not None:
        uniform *= math.fsum(law(j) for j in range(0, cap + 1))
    cdf = 0.0
    for k in range(lo, cap + 1):
        cdf += law(k)
        if uniform < cdf:
            return k
    return cap


def describe(distribution: str, mean: float, shape: float | None = None,
             max_count: int | None = None) -> dict[str, Any]:
    """The law of K as the plan and the quote show it."""
    eta = distribution_shape(distribution, shape)
    d: dict[str, Any] = {"distribution": distribution, "mean": float(mean), "shape": None if math.isinf(eta) else eta}
    if not math.isinf(eta):
        d["gamma"] = tnb_gamma(eta, mean)
    if max_count is not None:
        pen = truncation_penalty(mean, eta, max_count)
        d["max"] = pen["max_count"]
        d["truncation"] = {k: pen[k] for k in ("z", "s", "log_inv_z", "log_inv_one_minus_s")}
    return d
