"""Privacy accounting for one Gaussian release: exact (analytic) and Rényi-DP.

Everything here is a pure function of public numbers (ε, δ, the noise scale);
no data is involved, so `plan` can call it before training.

Notation: a Gaussian mechanism adds N(0, σ² I) to a function of L2
sensitivity Δ. Its privacy depends only on μ = Δ / σ (the inverse of the
*noise multiplier* z = σ / Δ).

* Exact profile (Balle & Wang 2018, "Improving the Gaussian mechanism for
  differential privacy", Theorem 8): the mechanism is (ε, δ)-DP iff

      δ ≥ Φ(μ/2 − ε/μ) − e^ε · Φ(−μ/2 − ε/μ).

  The right-hand side, δ(ε; μ), is increasing in μ and decreasing in ε.
* Rényi DP (Mironov 2017): it is (α, α μ² / 2)-RDP for every order α > 1,
  i.e. (μ²/2)-zCDP. Gaussian releases compose by adding μ²: k releases with
  μ₁ … μ_k together are one Gaussian mechanism with μ = sqrt(Σ μ_i²).
* RDP → (ε, δ): ε = rdp(α) + log((α−1)/α) − (log δ + log α)/(α−1)
  (Balle et al. 2020, Canonne, Kamath & Steinke 2020), minimised over the
  orders. This is what Opacus' RDP accountant uses; it is looser than the
  exact profile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

#: The orders at which a plan reports its RDP curve (shared with the ledger).
RDP_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0,
    16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)

_MU_MIN = 1e-9
_MU_MAX = 1e4
_EPS_MAX = 1e4


def log_ndtr(x: float) -> float:
    """log Φ(x) for the standard normal CDF, accurate far into the lower tail."""
    if x > -37.0:  # erfc does not underflow yet
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # Asymptotic series of erfc for large arguments (relative error < 1e-13 from here on).
    z = -x / math.sqrt(2.0)
    t = 1.0 / (2.0 * z * z)
    series = 1.0 - t + 3.0 * t**2 - 15.0 * t**3 + 105.0 * t**4
    return -z * z - math.log(z * math.sqrt(math.pi)) + math.log(series) - math.log(2.0)


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε; μ): the smallest δ for which the Gaussian mechanism with Δ/σ = μ is (ε, δ)-DP."""
    if mu <= 0:
        return 0.0
    if epsilon < 0:
        raise ValueError("epsilon must be >= 0")
    la = log_ndtr(mu / 2.0 - epsilon / mu)
    lb = log_ndtr(-mu / 2.0 - epsilon / mu)
    # Φ(a) − e^ε Φ(b) = Φ(a) · (1 − exp(ε + log Φ(b) − log Φ(a))), computed without cancellation.
    ratio = epsilon + lb - la
    if ratio >= 0.0:  # only from rounding: the true value is below 0
        return 0.0
    return math.exp(la) * -math.expm1(ratio)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest ε with δ(ε; μ) ≤ `delta` (exact, by bisection; the result errs upwards)."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, hi * 2.0
        if hi > _EPS_MAX:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, mu) <= delta:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-13 * hi:
            break
    return hi  # δ(hi; μ) ≤ delta holds for the returned value


def calibrate_mu(epsilon: float, delta: float) -> float:
    """The largest μ = Δ/σ (up to 1e-9 relative, erring low) with δ(ε; μ) ≤ δ: the least noise for (ε, δ)."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be finite and > 0")
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    lo, hi = _MU_MIN, 1.0
    if gaussian_delta(epsilon, lo) > delta:
        return 0.0
    while gaussian_delta(epsilon, hi) <= delta:
        lo, hi = hi, hi * 2.0
        if hi > _MU_MAX:
            return lo
    # Bisection on log μ keeping `lo` feasible.
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if gaussian_delta(epsilon, mid) <= delta:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 <= 1e-12:
            break
    return lo * (1.0 - 1e-9)


def rdp_curve(mu: float, orders: Iterable[float] = RDP_ORDERS) -> dict[str, float]:
    """The Gaussian mechanism's RDP curve {str(α): α μ²/2}."""
    return {str(float(a)): float(a) * mu * mu / 2.0 for a in orders}


def rdp_to_epsilon(rdp: dict[str, float], delta: float) -> float:
    """(ε, δ) from an RDP curve by the Balle et al. (2020) conversion, minimised over its orders."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    best = math.inf
    for key, value in rdp.items():
        a = float(key)
        if a <= 1:
            continue
        eps = value + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


def calibrate_mu_rdp(epsilon: float, delta: float, orders: Iterable[float] = RDP_ORDERS) -> float:
    """The largest μ whose RDP curve (at `orders`) converts to at most (ε, δ); 0.0 if none does."""
    orders = tuple(orders)

    def eps_of(mu: float) -> float:
        return rdp_to_epsilon(rdp_curve(mu, orders), delta)

    lo, hi = _MU_MIN, 1.0
    if eps_of(lo) > epsilon:
        return 0.0
    while eps_of(hi) <= epsilon:
        lo, hi = hi, hi * 2.0
        if hi > _MU_MAX:
            return lo
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if eps_of(mid) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 <= 1e-12:
            break
    return lo * (1.0 - 1e-9)
