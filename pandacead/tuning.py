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

Pure Python and `math` only (the daemon and the CLI may import it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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


def repeat_and_select(curve: Mapping[float, float], mean: float, shape: float) -> dict[float, float]:
    """The RDP curve of running a mechanism K ~ (mean, shape) times and releasing the best output.

    `curve` is the base mechanism's {order: ρ}; orders must be > 1 (the
    result is ∞ at orders ≤ 1). `shape` as in `distribution_shape`. See the
    module docstring for the theorems.
    """
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
    """P[K = k] for the law of the number of candidates."""
    eta = distribution_shape(distribution, shape)
    if math.isinf(eta):
        return math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1)) if k >= 0 else 0.0
    if k < 1:
        return 0.0
    gamma = tnb_gamma(eta, mean)
    if eta == 0:
        return (1 - gamma) ** k / (k * math.log(1 / gamma))
    # (1−γ)^k / (γ^{−η} − 1) · Π_{ℓ<k} (ℓ+η)/(ℓ+1)
    log_prod = math.lgamma(k + eta) - math.lgamma(eta) - math.lgamma(k + 1)
    return math.exp(k * math.log1p(-gamma) + log_prod) / (gamma**-eta - 1)


def sample_count(uniform: float, distribution: str, mean: float, shape: float | None = None) -> int:
    """K for one uniform draw in [0, 1) by inversion of the CDF (exact up to float rounding).

    The uniform must come from the job's secret generator: a K the buyer could
    predict would not be the random repetition the theorems assume.
    """
    if not 0 <= uniform < 1:
        raise ValueError("uniform must be in [0, 1)")
    eta = distribution_shape(distribution, shape)
    k = 0 if math.isinf(eta) else 1
    cdf = 0.0
    while True:
        cdf += count_pmf(k, distribution, mean, shape)
        if uniform < cdf or k > 100_000:
            return k
        k += 1


def describe(distribution: str, mean: float, shape: float | None = None) -> dict[str, Any]:
    """The law of K as the plan and the quote show it."""
    eta = distribution_shape(distribution, shape)
    d: dict[str, Any] = {"distribution": distribution, "mean": float(mean), "shape": None if math.isinf(eta) else eta}
    if not math.isinf(eta):
        d["gamma"] = tnb_gamma(eta, mean)
    return d
