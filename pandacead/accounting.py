"""Per-user privacy accounting: `basic` (add ε's and δ's) and `rdp` (a Rényi filter).

Pure Python and `math` only: the daemon, the CLI and the ledger import this
module, so it must not pull in torch, opacus or scipy. docs/accounting.md
states the theorems implemented here and why each rule is sound; this file
carries the formulas and points there.

Vocabulary
----------
*curve*
    A job's Rényi-DP curve: ``ρ(α)`` at the fixed orders ``RDP_ORDERS`` — the
    job is ``(α, ρ(α))``-RDP for every order. Stored as JSON ``{str(α): ρ}``.
*charge*
    What one job costs under ``rdp``: a curve added order-wise to the user's
    sum, plus (for jobs that only declare approximate DP) a δ added to a
    separate, capped bucket. See `charge_for`.
*spend*
    One row of the ledger's ``spends`` table as this module needs it
    (`Spend`): the job's ε, δ, stored curve, and the mode in force when the
    job was reserved.

The `rdp` rule (docs/accounting.md, "What exactly is checked")
---------------------------------------------------------------
Spends reserved before the last switch to ``rdp`` form a *prefix* charged by
basic composition: ``(Σε, Σδ)``. The rest of the budget,
``ε_rem = ε_B − Σε_pre`` and ``δ_rem = δ_B − Σδ_pre``, is split once, before
any job of the rdp phase, into ``δ_A = APPROX_DELTA_SHARE·δ_rem`` (jobs that
declare only approximate DP) and ``δ_R = δ_rem − δ_A`` (the Rényi part), and
``δ_R`` over the orders: ``δ_α = w_α·δ_R`` with ``Σ w_α = 1`` (`order_weights`).
A job is admitted iff, after adding it,

1. ``Σ δ_i ≤ δ_A`` over the declared approximate-DP jobs of the rdp phase, and
2. there is an order α in ``RDP_ORDERS`` with
   ``Σ_i ρ_i(α) + conversion_term(α, δ_α) ≤ ε_rem``, or (order ∞) every job
   of the phase declared (ε_i, δ_i) and ``Σ_i ε_i ≤ ε_rem``.

Condition 2 is, at each order, the Rényi filter of Feldman & Zrnic 2021,
converted to (ε, δ) as in Balle et al. 2020 (the conversion opacus uses); the
split of δ_R over the orders is a union bound, which keeps the filter valid
although the order that ends up under budget depends on earlier outputs
(Lécuyer 2021 filters at several orders at once). Declared (ε, δ) jobs add
the randomized-response curve of their ε at every order and their δ to δ_A.

Floating point: every "≤" above is ``x ≤ limit + REL_SLACK·|limit|`` with
``REL_SLACK = 1e-12``, so a job that fits exactly is not refused because of
summation order; the guarantee is therefore ``(ε_B·(1+1e-12), δ_B·(1+1e-12))``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ANCHOR_WEIGHT",
    "APPROX_DELTA_SHARE",
    "RDP_ORDERS",
    "REL_SLACK",
    "Charge",
    "Decision",
    "RenyiFilter",
    "Spend",
    "Summary",
    "admit",
    "basic_spent",
    "charge_for",
    "conversion_term",
    "curve_for_declared",
    "curve_from_json",
    "curve_to_json",
    "gaussian_noise_for",
    "job_curve",
    "order_weights",
    "pure_dp_rdp",
    "rdp_to_dp",
    "spent_epsilon",
    "subsampled_gaussian_rdp",
    "summarize",
]

#: The fixed Rényi orders every curve is kept at (the opacus backend uses the same list).
RDP_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)  # fmt: skip

#: Relative slack of every budget comparison (see the module docstring).
REL_SLACK = 1e-12

#: Share of the rdp phase's δ reserved for jobs that declare only approximate DP.
APPROX_DELTA_SHARE = 0.1

#: Share of the Rényi part's δ given to the anchor order in the union bound over orders.
ANCHOR_WEIGHT = 0.5

MODES = ("basic", "rdp")

_INF = math.inf


def _fits(total: float, limit: float) -> bool:
    return total <= limit + REL_SLACK * abs(limit)


# ---------------------------------------------------------------------------
# Log-space arithmetic (a port of opacus.accountants.analysis.rdp)
# ---------------------------------------------------------------------------


def _log_add(logx: float, logy: float) -> float:
    a, b = min(logx, logy), max(logx, logy)
    if a == -_INF:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sub(logx: float, logy: float) -> float:
    if logx < logy:
        raise ValueError("The result of subtraction must be non-negative.")
    if logy == -_INF:
        return logx
    if logx == logy:
        return -_INF
    try:
        return math.log(math.expm1(logx - logy)) + logy
    except OverflowError:
        return logx


_ERFC_DIRECT_MAX = 25.0  # math.erfc is accurate and > 1e-280 up to here


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate also where erfc(x) underflows.

    opacus computes ``log(2) + scipy.special.log_ndtr(-x*sqrt(2))``; here the
    libm erfc is used where it is representable and the asymptotic series
    erfc(x) = exp(-x²)/(x√π)·Σ_n (-1)^n (2n-1)!!/(2x²)^n beyond (at x ≥ 25
    the terms fall below 1e-17 after a dozen).
    """
    if x < _ERFC_DIRECT_MAX:
        return math.log(math.erfc(x))
    inv = 1.0 / (2.0 * x * x)
    term, total = 1.0, 1.0
    for n in range(1, 40):
        term *= -(2 * n - 1) * inv
        total += term
        if abs(term) < 1e-18:
            break
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log(total)


def _log_binom_int(n: int, k: int) -> float:
    return math.log(math.comb(n, k))


def _compute_log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -_INF
    for i in range(alpha + 1):
        log_coef_i = _log_binom_int(alpha, i) + i * math.log(q) + (alpha - i) * math.log(1 - q)
        s = log_coef_i + (i * i - i) / (2 * (sigma**2))
        log_a = _log_add(log_a, s)
    return float(log_a)


def _compute_log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # Mironov, Talwar & Zhang 2019, Section 3.3: A_α split at z0 into two series.
    log_a0, log_a1 = -_INF, -_INF
    i = 0
    coef = 1.0  # binom(alpha, 0); updated by the product formula below
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    while True:
        log_coef = math.log(abs(coef))
        j = alpha - i

        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)

        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))

        log_s0 = log_t0 + (i * i - i) / (2 * (sigma**2)) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * (sigma**2)) + log_e1

        if coef > 0:
            log_a0 = _log_add(log_a0, log_s0)
            log_a1 = _log_add(log_a1, log_s1)
        else:
            log_a0 = _log_sub(log_a0, log_s0)
            log_a1 = _log_sub(log_a1, log_s1)

        coef *= (alpha - i) / (i + 1)
        i += 1
        if max(log_s0, log_s1) < -30:
            break
    return _log_add(log_a0, log_a1)


def _subsampled_gaussian_rdp_one(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0:
        return _INF
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if math.isinf(alpha):
        return _INF
    if float(alpha).is_integer():
        log_a = _compute_log_a_int(q, sigma, int(alpha))
    else:
        log_a = _compute_log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1)


def subsampled_gaussian_rdp(
    q: float, sigma: float, steps: int, orders: Sequence[float] = RDP_ORDERS
) -> dict[float, float]:
    """RDP of ``steps`` Poisson-subsampled Gaussian steps: {order: ρ(order)}.

    The bound of Mironov, Talwar & Zhang 2019 ("Rényi Differential Privacy of
    the Sampled Gaussian Mechanism"), ported line by line from opacus's
    ``compute_rdp`` (integer orders by the binomial expansion, fractional
    orders by the two erfc series). ``q`` is the sample rate, ``sigma`` the
    noise multiplier.
    """
    if not (0 <= q <= 1) or not math.isfinite(q):
        raise ValueError(f"sample rate {q!r} is not in [0, 1]")
    if not (sigma >= 0) or math.isnan(sigma):
        raise ValueError(f"noise multiplier {sigma!r} is not a non-negative number")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps {steps!r} is not a non-negative integer")
    out: dict[float, float] = {}
    for a in orders:
        if not a > 1:
            raise ValueError(f"Rényi order {a!r} must be > 1")
        rho = _subsampled_gaussian_rdp_one(q, sigma, a) if steps else 0.0
        out[float(a)] = rho * steps if rho != 0 else 0.0
    return out


# ---------------------------------------------------------------------------
# RDP -> (ε, δ)
# ---------------------------------------------------------------------------


def conversion_term(order: float, delta: float) -> float:
    """ε − ρ(α) in the conversion of Balle et al. 2020, Thm 21 (as opacus).

    An (α, ρ)-RDP mechanism is (ρ + conversion_term(α, δ), δ)-DP.
    """
    return -(math.log(delta) + math.log(order)) / (order - 1) + math.log((order - 1) / order)


def rdp_to_dp(curve: Mapping[float, float], delta: float) -> tuple[float, float]:
    """(ε, best order) for a curve at ``delta``, exactly as opacus ``get_privacy_spent``.

    ε = min_α ρ(α) + log((α−1)/α) − (log δ + log α)/(α−1); ties go to the
    first order; NaN entries are ignored; all-NaN gives (inf, nan).
    """
    if not (0 < delta < 1):
        raise ValueError(f"delta {delta!r} is not in (0, 1)")
    best_eps, best_order = math.nan, math.nan
    for order, rho in curve.items():
        a = float(order)
        eps = rho - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        if math.isnan(eps):
            continue
        if math.isnan(best_eps) or eps < best_eps:
            best_eps, best_order = eps, a
    if math.isnan(best_eps):
        return _INF, math.nan
    return best_eps, best_order


def gaussian_noise_for(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    orders: Sequence[float] = RDP_ORDERS,
    rel_tol: float = 1e-4,
) -> float:
    """The smallest noise multiplier (to ``rel_tol``) whose curve converts to ≤ ε at δ.

    An RDP-accountant calibration in pure Python, for backends that want to
    declare a Gaussian curve (e.g. a mock) and for tests. The result always
    satisfies ``rdp_to_dp(subsampled_gaussian_rdp(q, σ, steps), δ)[0] ≤ ε``.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon {epsilon!r} is not a finite positive number")

    def eps_at(sigma: float) -> float:
        return rdp_to_dp(subsampled_gaussian_rdp(sample_rate, sigma, steps, orders), delta)[0]

    lo, hi = 0.0, 1.0
    while eps_at(hi) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier reaches ε={epsilon} at δ={delta}")
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if eps_at(mid) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


# ---------------------------------------------------------------------------
# Curves for jobs that declare only (ε, δ)
# ---------------------------------------------------------------------------


def _log_cosh(x: float) -> float:
    x = abs(x)
    return x + math.log1p(math.exp(-2 * x)) - math.log(2)


def pure_dp_rdp(epsilon: float, orders: Sequence[float] = RDP_ORDERS) -> dict[float, float]:
    """The tight RDP curve of an ε-DP mechanism: that of randomized response.

    Any ε-DP pair of output distributions is a post-processing of binary
    randomized response with parameter ε (Kairouz, Oh & Viswanath 2015), so by
    the data-processing inequality its Rényi divergence is at most RR's:
    ρ(α) = log(cosh((α−½)ε)/cosh(ε/2))/(α−1). It never exceeds the classic
    bounds ε and αε²/2 (Bun & Steinke 2016, Prop. 3.3); the minimum of the
    three is returned so rounding can only make it smaller than both.
    """
    if not (epsilon >= 0) or not math.isfinite(epsilon):
        raise ValueError(f"epsilon {epsilon!r} is not a finite non-negative number")
    out: dict[float, float] = {}
    for a in orders:
        a = float(a)
        if epsilon == 0:
            out[a] = 0.0
            continue
        rr = (_log_cosh((a - 0.5) * epsilon) - _log_cosh(epsilon / 2)) / (a - 1)
        out[a] = max(0.0, min(rr, epsilon, a * epsilon * epsilon / 2))
    return out


def curve_for_declared(
    epsilon: float, delta: float, orders: Sequence[float] = RDP_ORDERS
) -> dict[float, float]:
    """The curve charged for a job that declares only (ε, δ).

    For δ = 0 this is the whole charge (`pure_dp_rdp`). For δ > 0 there is no
    finite RDP curve in general; such a job is charged this curve *and* its δ
    goes into the approximate-DP bucket (`charge_for`, docs/accounting.md): an
    (ε, δ)-DP pair is randomized response with probability 1−δ and an
    arbitrary "bad" outcome with probability δ, under both inputs alike.
    """
    if not (0 <= delta < 1):
        raise ValueError(f"delta {delta!r} is not in [0, 1)")
    return pure_dp_rdp(epsilon, orders)


# ---------------------------------------------------------------------------
# Curves as stored JSON
# ---------------------------------------------------------------------------


def curve_to_json(curve: Mapping[Any, float] | Sequence[float]) -> dict[str, float]:
    """{str(order): ρ} over RDP_ORDERS: the form the ledger stores and PrivacyPlan.rdp uses."""
    if isinstance(curve, Mapping):
        values = [float(curve[a] if a in curve else curve[str(a)]) for a in RDP_ORDERS]
    else:
        values = [float(v) for v in curve]
    if len(values) != len(RDP_ORDERS):
        raise ValueError("curve length does not match RDP_ORDERS")
    return {str(a): v for a, v in zip(RDP_ORDERS, values)}


def _parse_curve(data: Mapping[Any, Any] | str) -> list[tuple[float, float]]:
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, Mapping) or not data:
        raise ValueError("an RDP curve must be a non-empty {order: value} object")
    points: list[tuple[float, float]] = []
    for k, v in data.items():
        try:
            a, rho = float(k), float(v)
        except (TypeError, ValueError):
            raise ValueError(f"RDP curve entry {k!r}: {v!r} is not numeric") from None
        if math.isnan(a) or not a > 1:
            raise ValueError(f"RDP curve order {k!r} is not > 1")
        if math.isnan(rho) or rho < 0:
            raise ValueError(f"RDP curve value at order {k!r} is {v!r}, not a number ≥ 0")
        points.append((a, rho))
    return sorted(points)


def curve_from_json(data: Mapping[Any, Any] | str | None) -> tuple[float, ...] | None:
    """A stored or declared curve as a tuple aligned with RDP_ORDERS (None stays None).

    Keys may be str or float orders. An order the curve lacks gets the value
    at the next larger order it has (ρ(α) is non-decreasing in α, so that is
    an upper bound), else +inf: that order is then unusable for the job.
    Raises ValueError on NaN, negative values or orders ≤ 1: a curve that
    makes no sense fails the job closed.
    """
    if data is None:
        return None
    points = _parse_curve(data)
    out = []
    for a in RDP_ORDERS:
        above = [rho for (b, rho) in points if b >= a]
        out.append(above[0] if above else _INF)
    return tuple(out)


# ---------------------------------------------------------------------------
# Charges and spends
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """What one job adds under `rdp`.

    ``curve`` is ρ at RDP_ORDERS; ``max_divergence`` is ρ at order ∞ (the
    pure-DP ε: +inf for a Gaussian job, ε for a declared one); ``approx_delta``
    goes into the capped bucket of declared approximate-DP jobs.
    """

    curve: tuple[float, ...]
    max_divergence: float = _INF
    approx_delta: float = 0.0
    # "rdp": the job's own curve; "pure": declared ε with δ = 0; "approx": declared ε, δ > 0
    kind: str = "rdp"


@dataclass(frozen=True)
class Spend:
    """One non-released row of the ledger's spends, as accounting needs it.

    ``rdp`` is the curve stored at reservation (JSON dict or str, or None);
    ``mode`` the accounting mode in force when the job was reserved;
    ``reserved`` whether it is still only reserved (read by `summarize` only).
    """

    epsilon: float
    delta: float
    rdp: Mapping[Any, Any] | str | None = None
    mode: str = "basic"
    reserved: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Spend:
        """From a spends row with keys epsilon, delta, rdp, mode and state."""
        return cls(
            epsilon=float(row["epsilon"]),
            delta=float(row["delta"]),
            rdp=row.get("rdp"),
            mode=row.get("mode") or "basic",
            reserved=row.get("state") == "reserved",
        )


def _check_eps_delta(epsilon: float, delta: float, what: str) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{what} epsilon {epsilon!r} is not a finite non-negative number")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 <= delta < 1):
        raise ValueError(f"{what} delta {delta!r} is not in [0, 1)")


def job_curve(
    rdp: Mapping[Any, Any] | str | None = None,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
) -> dict[str, float] | None:
    """The curve to store for a job at reservation, or None if its backend declares none.

    The backend's declared curve is authoritative (only it knows its sampling
    scheme), so (σ, q, steps) alone never make a curve. When the plan carries
    both, the Poisson-subsampled Gaussian curve is recomputed here and the
    order-wise maximum stored: a backend that under-reports is still charged
    at least the standard bound for the parameters it states.
    """
    declared = curve_from_json(rdp)
    if declared is None:
        return None
    if noise_multiplier is not None and sample_rate is not None and steps is not None:
        own = _gaussian_curve(sample_rate, noise_multiplier, steps)
        declared = tuple(max(d, o) for d, o in zip(declared, own))
    return curve_to_json(declared)


@functools.lru_cache(maxsize=1024)
def _gaussian_curve(q: float, sigma: float, steps: int) -> tuple[float, ...]:
    """`subsampled_gaussian_rdp` at RDP_ORDERS, memoised: a pure function of (q, σ, steps)
    that costs milliseconds in pure Python, asked again for every job of the same shape."""
    own = subsampled_gaussian_rdp(q, sigma, steps)
    return tuple(own[a] for a in RDP_ORDERS)


def charge_for(epsilon: float, delta: float, rdp: Mapping[Any, Any] | str | None = None) -> Charge:
    """The `rdp`-mode charge of a job: its stored curve, else its declared (ε, δ)."""
    _check_eps_delta(epsilon, delta, "job")
    curve = curve_from_json(rdp)
    if curve is not None:
        return Charge(curve=curve, kind="rdp")
    declared = curve_for_declared(epsilon, delta)
    return Charge(
        curve=tuple(declared[a] for a in RDP_ORDERS),
        max_divergence=float(epsilon),
        approx_delta=float(delta),
        kind="approx" if delta > 0 else "pure",
    )


# ---------------------------------------------------------------------------
# The Rényi filter
# ---------------------------------------------------------------------------


def anchor_order(eps_rem: float, delta_r: float) -> float:
    """The order that gets most of the Rényi part's δ; depends on the budget alone.

    It is the order at which the noisiest-possible Gaussian mechanism
    (ρ(α) = cα) still fits: argmax_α (ε_rem − conversion_term(α, δ_R))/α.
    Jobs that fill a budget with Gaussian noise are best converted near it.
    Any choice fixed before the first job keeps the filter valid; this one
    just wastes little.
    """
    if delta_r <= 0:
        return RDP_ORDERS[0]
    return max(RDP_ORDERS, key=lambda a: (eps_rem - conversion_term(a, delta_r)) / a)


def order_weights(eps_rem: float, delta_r: float) -> tuple[float, ...]:
    """w_α over RDP_ORDERS (Σ = 1) for the union bound: ANCHOR_WEIGHT on the anchor
    order, the rest evenly over all orders so every order stays usable."""
    anchor = anchor_order(eps_rem, delta_r)
    spread = (1.0 - ANCHOR_WEIGHT) / len(RDP_ORDERS)
    return tuple(spread + (ANCHOR_WEIGHT if a == anchor else 0.0) for a in RDP_ORDERS)


@dataclass(frozen=True)
class Decision:
    """Outcome of an admission check; ``state`` is the filter after the job when admitted."""

    ok: bool
    reason: str
    epsilon_after: float  # ε the user would have spent with the job, under the active mode
    delta_after: float
    state: RenyiFilter | None = None
    best_order: float | None = None


@dataclass(frozen=True)
class RenyiFilter:
    """A user's `rdp` state: the basic-charged prefix and the sums of the rdp phase.

    Immutable; build it from ledger rows with `from_spends`. Orders are
    RDP_ORDERS plus ∞ (``max_divergence``: the sum of the pure-DP ε's, +inf
    as soon as a Gaussian job is in the phase).
    """

    prefix_epsilon: float = 0.0
    prefix_delta: float = 0.0
    curve: tuple[float, ...] = field(default_factory=lambda: (0.0,) * len(RDP_ORDERS))
    max_divergence: float = 0.0
    approx_delta: float = 0.0
    jobs: int = 0  # jobs charged in the rdp phase
    approx_share: float = APPROX_DELTA_SHARE

    @classmethod
    def from_spends(
        cls, spends: Iterable[Spend], approx_share: float = APPROX_DELTA_SHARE
    ) -> RenyiFilter:
        """The mode-switch helper: the state from a user's non-released spends in reservation order.

        Every spend up to and including the last one reserved under a mode
        other than ``rdp`` is charged by basic composition (the prefix), with
        or without a stored curve; the spends after it are charged by their
        curves or declared (ε, δ). So switching a live ledger from basic to
        rdp keeps everything spent before at its full (ε, δ), and the filter
        only governs what is left.
        """
        if not (0 <= approx_share < 1):
            raise ValueError(f"approximate-DP δ share {approx_share!r} is not in [0, 1)")
        spends = list(spends)
        last_basic = -1
        for i, s in enumerate(spends):
            if s.mode not in MODES:
                raise ValueError(f"unknown accounting mode {s.mode!r} on a spend")
            if s.mode != "rdp":
                last_basic = i
        pre_eps, pre_delta = basic_spent(spends[: last_basic + 1])
        state = cls(prefix_epsilon=pre_eps, prefix_delta=pre_delta, approx_share=approx_share)
        for s in spends[last_basic + 1 :]:
            state = state.add(charge_for(s.epsilon, s.delta, s.rdp))
        return state

    def add(self, charge: Charge) -> RenyiFilter:
        """The state with ``charge`` added, unchecked."""
        return RenyiFilter(
            prefix_epsilon=self.prefix_epsilon,
            prefix_delta=self.prefix_delta,
            curve=tuple(s + c for s, c in zip(self.curve, charge.curve)),
            max_divergence=self.max_divergence + charge.max_divergence,
            approx_delta=self.approx_delta + charge.approx_delta,
            jobs=self.jobs + 1,
            approx_share=self.approx_share,
        )

    def deltas(self, delta_budget: float) -> tuple[float, float]:
        """(δ_A, δ_R): the cap of declared approximate-DP jobs and the Rényi part's δ."""
        rem = delta_budget - self.prefix_delta
        if rem <= 0:
            return 0.0, 0.0
        cap = self.approx_share * rem
        return cap, rem - cap

    def order_deltas(self, eps_budget: float, delta_budget: float) -> tuple[float, ...]:
        """δ_α = w_α·δ_R: the δ each order's conversion may use (they sum to δ_R)."""
        _, d_r = self.deltas(delta_budget)
        return tuple(w * d_r for w in order_weights(eps_budget - self.prefix_epsilon, d_r))

    def phase_epsilon(self, eps_budget: float, delta_budget: float) -> tuple[float, float | None]:
        """(ε of the rdp phase, the order achieving it; ∞ for the pure-DP sum).

        min over α of Σρ(α) + conversion_term(α, δ_α), and Σε of declared jobs
        at order ∞ (no conversion, no δ). 0 for an empty phase.
        """
        if self.jobs == 0:
            return 0.0, None
        best, order = self.max_divergence, (_INF if math.isfinite(self.max_divergence) else None)
        for a, rho, d in zip(RDP_ORDERS, self.curve, self.order_deltas(eps_budget, delta_budget)):
            if d <= 0:
                continue
            eps = rho + conversion_term(a, d)
            if eps < best:
                best, order = eps, a
        return best, order

    def spent(self, eps_budget: float, delta_budget: float) -> tuple[float, float, float | None]:
        """(ε, δ, best order) certified for everything charged so far.

        δ counts the prefix, the approximate-DP bucket, and δ_R when the ε
        comes from a finite order.
        """
        eps, order = self.phase_epsilon(eps_budget, delta_budget)
        _, d_r = self.deltas(delta_budget)
        uses_d_r = order is not None and math.isfinite(order)
        delta = self.prefix_delta + self.approx_delta + (d_r if uses_d_r else 0.0)
        return self.prefix_epsilon + eps, delta, order

    def admit(self, charge: Charge, eps_budget: float, delta_budget: float) -> Decision:
        """Admit ``charge`` iff the filter's condition holds after it (module docstring)."""
        _check_budget(eps_budget, delta_budget)
        after = self.add(charge)
        cap, _ = after.deltas(delta_budget)
        eps, delta, order = after.spent(eps_budget, delta_budget)
        if charge.approx_delta > 0 and not _fits(after.approx_delta, cap):
            return Decision(
                False,
                f"the job's δ={charge.approx_delta:.3g} would bring jobs without a Rényi curve "
                f"to δ={after.approx_delta:.3g}, over their share {cap:.3g} of the δ budget",
                eps,
                delta,
                None,
                order,
            )
        if not _fits(eps, eps_budget):
            return Decision(
                False,
                f"the job would bring the spent privacy to ε={eps:.6g} at the best Rényi order "
                f"({order}), over the budget ε={eps_budget:g}",
                eps,
                delta,
                None,
                order,
            )
        return Decision(
            True,
            f"admitted: the spent privacy would be ε={eps:.6g} of {eps_budget:g} "
            f"(rdp, order {order})",
            eps,
            delta,
            after,
            order,
        )


def _check_budget(eps_budget: float, delta_budget: float) -> None:
    if not (isinstance(eps_budget, (int, float)) and math.isfinite(eps_budget) and eps_budget >= 0):
        raise ValueError(f"epsilon budget {eps_budget!r} is not a finite non-negative number")
    if not (
        isinstance(delta_budget, (int, float))
        and math.isfinite(delta_budget)
        and 0 <= delta_budget < 1
    ):
        raise ValueError(f"delta budget {delta_budget!r} is not in [0, 1)")


# ---------------------------------------------------------------------------
# basic composition, and the mode-dispatching API the ledger calls
# ---------------------------------------------------------------------------


def basic_spent(spends: Iterable[Spend]) -> tuple[float, float]:
    """(Σε, Σδ): basic composition, valid also when jobs are chosen adaptively."""
    eps = delta = 0.0
    for s in spends:
        _check_eps_delta(s.epsilon, s.delta, "recorded")
        eps += s.epsilon
        delta += s.delta
    return eps, delta


def spent_epsilon(
    spends: Iterable[Spend],
    eps_budget: float,
    delta_budget: float,
    approx_share: float = APPROX_DELTA_SHARE,
) -> float:
    """The ε reported as spent under `rdp` for a user's non-released spends."""
    return RenyiFilter.from_spends(spends, approx_share).spent(eps_budget, delta_budget)[0]


def admit(
    spends: Iterable[Spend],
    job: Spend,
    eps_budget: float,
    delta_budget: float,
    mode: str = "basic",
    approx_share: float = APPROX_DELTA_SHARE,
) -> Decision:
    """Whether ``job`` may be reserved for a user whose non-released spends are ``spends``.

    ``spends``: the user's reserved and committed rows in reservation order.
    ``job.rdp``: the curve the ledger will store with it (`job_curve`).
    Raises ValueError on anything malformed; callers treat that as a refusal.
    """
    _check_budget(eps_budget, delta_budget)
    _check_eps_delta(job.epsilon, job.delta, "job")
    spends = list(spends)
    if mode == "basic":
        eps, delta = basic_spent([*spends, job])
        return admit_basic(eps, delta, job, eps_budget, delta_budget)
    if mode == "rdp":
        state = RenyiFilter.from_spends(spends, approx_share)
        return state.admit(charge_for(job.epsilon, job.delta, job.rdp), eps_budget, delta_budget)
    raise ValueError(f"unknown accounting mode {mode!r} (expected 'basic' or 'rdp')")


def admit_basic(eps: float, delta: float, job: Spend, eps_budget: float, delta_budget: float) -> Decision:
    """The `basic` decision once (Σε, Σδ) with the job is known."""
    if not _fits(eps, eps_budget):
        return Decision(
            False,
            f"the job's ε={job.epsilon:g} would bring the spent ε to {eps:.6g}, "
            f"over the budget ε={eps_budget:g}",
            eps,
            delta,
        )
    if not _fits(delta, delta_budget):
        return Decision(
            False,
            f"the job's δ={job.delta:.3g} would bring the spent δ to {delta:.3g}, "
            f"over the budget δ={delta_budget:.3g}",
            eps,
            delta,
        )
    return Decision(
        True, f"admitted: the spent ε would be {eps:.6g} of {eps_budget:g}", eps, delta
    )


@dataclass(frozen=True)
class Summary:
    """What `budget show` reports for one user.

    ``*_spent`` is what committed spends cost under the active mode,
    ``*_reserved`` what the spends still reserved add on top (the state with
    them minus the state without), ``epsilon_remaining`` the budget minus
    both (never below 0). ``basic_*`` is what `basic` would report.
    """

    mode: str
    epsilon_spent: float
    epsilon_reserved: float
    epsilon_remaining: float
    delta_spent: float
    delta_reserved: float
    basic_epsilon_spent: float
    basic_epsilon_reserved: float
    basic_delta_spent: float
    basic_delta_reserved: float
    best_order: float | None = None  # rdp: the order (∞: the pure-DP sum) giving ε

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spent_under(
    spends: list[Spend], eps_budget: float, delta_budget: float, mode: str, approx_share: float
) -> tuple[float, float, float | None]:
    if mode == "basic":
        eps, delta = basic_spent(spends)
        return eps, delta, None
    if mode == "rdp":
        return RenyiFilter.from_spends(spends, approx_share).spent(eps_budget, delta_budget)
    raise ValueError(f"unknown accounting mode {mode!r} (expected 'basic' or 'rdp')")


def summarize(
    spends: Iterable[Spend],
    eps_budget: float,
    delta_budget: float,
    mode: str = "basic",
    approx_share: float = APPROX_DELTA_SHARE,
) -> Summary:
    """Spent, reserved and remaining privacy under ``mode``, plus the basic sums.

    ``spends``: the user's non-released rows in reservation order, with
    ``reserved=True`` on those not committed yet.
    """
    _check_budget(eps_budget, delta_budget)
    spends = list(spends)
    committed = [s for s in spends if not s.reserved]
    eps, delta, order = _spent_under(spends, eps_budget, delta_budget, mode, approx_share)
    c_eps, c_delta, _ = _spent_under(committed, eps_budget, delta_budget, mode, approx_share)
    b_eps, b_delta = basic_spent(spends)
    bc_eps, bc_delta = basic_spent(committed)
    return Summary(
        mode=mode,
        epsilon_spent=c_eps,
        epsilon_reserved=max(0.0, eps - c_eps),
        epsilon_remaining=max(0.0, eps_budget - max(eps, c_eps)),
        delta_spent=c_delta,
        delta_reserved=max(0.0, delta - c_delta),
        basic_epsilon_spent=bc_eps,
        basic_epsilon_reserved=b_eps - bc_eps,
        basic_delta_spent=bc_delta,
        basic_delta_reserved=b_delta - bc_delta,
        best_order=order,
    )
