"""Pre-flight privacy accounting for DP-SGD with Poisson sampling (Opacus accountants).

Everything a plan needs, computed from public numbers only (rows, batch size,
epochs, σ, δ) — never from the data.

Sampling schedule (what Opacus's ``make_private(poisson_sampling=True)`` does
with a ``DataLoader(batch_size=B)`` over n training rows)::

    batches         = ceil(n / B)                 # len(DataLoader)
    steps_per_epoch = int(1 / (1 / batches))      # len(DPDataLoader); == batches except
                                                  # where 1/(1/b) rounds below b (b = 93, 99, …)
    q               = 1 / steps_per_epoch         # the rate Opacus's accountant records
    steps           = epochs * steps_per_epoch    # = epochs * round(1/q)

Each row enters each batch independently with probability 1/batches ≤ q, so
accounting at q is exact when B divides n and conservative otherwise;
q ≈ B/n.

Accountants: ``prv`` (Gopi et al. 2021; Opacus's upper bound ``eps_upper``)
and ``rdp`` (Mironov et al.; orders `EPS_ALPHAS`, Opacus's defaults extended
to 4096 so small ε targets are reachable). Both give valid upper bounds on ε.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from typing import Any

from pandacead.accounting import RDP_ORDERS as _CORE_RDP_ORDERS

ACCOUNTANTS = ("prv", "rdp")

#: Orders of the RDP curve stored with every plan (the ledger composes at these).
RDP_ORDERS: list[float] = [float(a) for a in _CORE_RDP_ORDERS]

#: Orders searched when converting RDP to (ε, δ): Opacus's defaults plus large
#: orders, without which ε below ≈ log(1/δ)/62 (0.19 at δ = 1e-5) is unreachable.
EPS_ALPHAS: list[float] = (
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(12, 64)]
    + [80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0, 4096.0]
)

#: Opacus's default PRV discretisation error; coarser for large ε (see `prv_eps_error`).
PRV_EPS_ERROR = 0.01

#: Entries kept by each memo of the pure accounting functions below (σ
#: calibration, ε of a history, RDP curves). Keys are the exact inputs, so a
#: hit returns what the computation would; repeated job shapes — the common
#: case on a host — skip the accountant (0.3 s of an opacus job's plan and
#: train). `cache_clear()` empties them all.
ACCOUNTING_CACHE_SIZE = 512


def cache_clear() -> None:
    """Empty the accounting memos (tests, benchmarks of the uncached cost)."""
    for fn in (_epsilon_cached, _calibrate_cached, _rdp_cached):
        fn.cache_clear()


class AccountingError(RuntimeError):
    """An accountant could not compute ε for these parameters."""


def poisson_schedule(n_train: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """The DP-SGD schedule Opacus will run (see the module docstring)."""
    if n_train < 1 or batch_size < 1 or epochs < 1:
        raise ValueError("n_train, batch_size and epochs must be positive")
    batches = math.ceil(n_train / batch_size)
    steps_per_epoch = int(1 / (1 / batches))
    sample_rate = 1 / steps_per_epoch
    return {
        "batches": batches,
        "steps_per_epoch": steps_per_epoch,
        "sample_rate": sample_rate,
        "poisson_rate": 1 / batches,
        "steps": epochs * steps_per_epoch,
        "expected_batch_size": int(n_train * sample_rate),
    }


def prv_eps_error(rough_epsilon: float) -> float:
    """PRV discretisation error for a job whose ε is about `rough_epsilon`.

    Opacus's 0.01 for 0.2 ≤ ε ≤ 5; ε/20 below (``eps_upper`` includes the
    error, so 0.01 would dominate a small ε); ε/500 above, at most 0.1 (a
    coarser mesh makes PRV much faster for large ε, minutes → seconds at 200k
    steps). ``eps_upper`` stays an upper bound at any error.
    """
    if not math.isfinite(rough_epsilon) or rough_epsilon <= 0:
        return PRV_EPS_ERROR
    return float(min(0.1, max(rough_epsilon / 500.0, min(PRV_EPS_ERROR, rough_epsilon / 20.0))))


def epsilon(
    accountant: str,
    history: list[tuple[float, float, int]],
    delta: float,
    *,
    eps_error: float = PRV_EPS_ERROR,
) -> float:
    """ε of a DP-SGD history [(σ, q, steps), …] at δ with Opacus's accountant (memoised)."""
    if accountant not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r}")
    if not history:
        return 0.0
    key = tuple((float(s), float(q), int(t)) for s, q, t in history)
    return _epsilon_cached(accountant, key, float(delta), float(eps_error))


@functools.lru_cache(maxsize=ACCOUNTING_CACHE_SIZE)
def _epsilon_cached(
    accountant: str, history: tuple[tuple[float, float, int], ...], delta: float, eps_error: float
) -> float:
    from opacus.accountants import PRVAccountant, RDPAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if accountant == "rdp":
                acc = RDPAccountant()
                acc.history = [tuple(h) for h in history]
                eps = acc.get_epsilon(delta, alphas=EPS_ALPHAS)
            else:
                acc = PRVAccountant()
                acc.history = [tuple(h) for h in history]
                eps = acc.get_epsilon(delta, eps_error=eps_error)
        except Exception as exc:  # numerical failure inside the accountant
            raise AccountingError(f"{accountant} accountant failed: {type(exc).__name__}: {exc}") from exc
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise AccountingError(f"{accountant} accountant returned ε = {eps!r}")
    return eps


def rdp_curve(noise_multiplier: float, sample_rate: float, steps: int) -> dict[str, float]:
    """The job's Rényi-DP curve {str(order): ρ} at `RDP_ORDERS` (non-finite orders left out)."""
    values = _rdp_cached(float(noise_multiplier), float(sample_rate), int(steps), tuple(RDP_ORDERS))
    return {str(a): v for a, v in zip(RDP_ORDERS, values) if math.isfinite(v)}


@functools.lru_cache(maxsize=ACCOUNTING_CACHE_SIZE)
def _rdp_cached(
    noise_multiplier: float, sample_rate: float, steps: int, orders: tuple[float, ...]
) -> tuple[float, ...]:
    """Opacus's compute_rdp at `orders`, as a tuple (immutable: safe to share between callers)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(orders))
    return tuple(float(v) for v in values)


class RdpProgress:
    """ε after t steps of one (σ, q) mechanism by RDP, cheaply: ρ_t(α) = t·ρ_1(α).

    Equal to Opacus's RDPAccountant with `EPS_ALPHAS` on history [(σ, q, t)].
    """

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float):
        import numpy as np

        self._rdp1 = np.asarray(
            _rdp_cached(float(noise_multiplier), float(sample_rate), 1, tuple(EPS_ALPHAS)), dtype=float
        )
        self._delta = delta

    def epsilon(self, steps: int) -> float:
        from opacus.accountants.analysis.rdp import get_privacy_spent

        if steps <= 0:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps, _ = get_privacy_spent(orders=EPS_ALPHAS, rdp=self._rdp1 * steps, delta=self._delta)
        return float(eps)


def _tolerance(target: float) -> float:
    return max(0.001, 0.01 * target)


def calibrate(
    accountant: str, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> dict[str, Any]:
    """The smallest σ (to tolerance) whose ε ≤ target: {"noise_multiplier", "epsilon", ...}.

    RDP: Opacus's `get_noise_multiplier`. PRV: σ from RDP brackets the answer
    from above (PRV is tighter), then bisection with PRV — each PRV evaluation
    costs up to seconds at 10⁵ steps, so starting near the answer matters
    (Opacus's own search from σ = 20 takes minutes there).
    Raises AccountingError when no σ ≤ 1e6 reaches the target. Memoised on
    the exact inputs ("seconds" is then the time of this call; "cached" says so).
    """
    t0 = time.monotonic()
    hits = _calibrate_cached.cache_info().hits
    out = dict(_calibrate_cached(accountant, float(target_epsilon), float(delta), float(sample_rate), int(steps)))
    out["cached"] = _calibrate_cached.cache_info().hits > hits
    if out["cached"]:
        out["seconds"] = time.monotonic() - t0
    return out


@functools.lru_cache(maxsize=ACCOUNTING_CACHE_SIZE)
def _calibrate_cached(
    accountant: str, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> dict[str, Any]:
    from opacus.accountants.utils import get_noise_multiplier

    t0 = time.monotonic()
    tol = _tolerance(target_epsilon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sigma_rdp = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="rdp",
                    # For PRV this is only the upper bracket: a coarse σ will do.
                    epsilon_tolerance=tol if accountant == "rdp" else max(tol, 0.05 * target_epsilon),
                    alphas=EPS_ALPHAS,
                )
            )
        except ValueError as exc:
            raise AccountingError(
                f"no noise multiplier up to 1e6 reaches ε = {target_epsilon} ({exc})"
            ) from None
    eps_rdp = epsilon("rdp", [(sigma_rdp, sample_rate, steps)], delta)
    if accountant == "rdp":
        return {
            "noise_multiplier": sigma_rdp,
            "epsilon": eps_rdp,
            "eps_error": None,
            "evaluations": None,
            "seconds": time.monotonic() - t0,
        }

    err = prv_eps_error(target_epsilon)

    def prv(sigma: float) -> float:
        return epsilon("prv", [(sigma, sample_rate, steps)], delta, eps_error=err)

    evaluations = 0
    hi, eps_hi = sigma_rdp, prv(sigma_rdp)
    evaluations += 1
    while eps_hi > target_epsilon:  # PRV above RDP: rare; step σ up
        hi *= 1.25
        eps_hi = prv(hi)
        evaluations += 1
        if hi > 1e6:
            raise AccountingError(f"no noise multiplier up to 1e6 reaches ε = {target_epsilon}")
    lo, eps_lo = hi, None
    while True:  # find σ_lo with ε(σ_lo) > target
        lo *= 0.8
        evaluations += 1
        try:
            eps_lo = prv(lo)
        except AccountingError:
            eps_lo = None  # too little noise for PRV's discretisation: treat as above target
            break
        if eps_lo > target_epsilon:
            break
        hi, eps_hi = lo, eps_lo
        if lo < 1e-3:
            break
    # Illinois false position on log ε(log σ), aiming just under the target;
    # falls back to bisection when a point is unusable.
    aim = math.log(target_epsilon - tol / 2)
    f_hi = math.log(eps_hi) - aim
    f_lo = math.log(eps_lo) - aim if eps_lo is not None else None
    side = 0
    while target_epsilon - eps_hi > tol and (hi - lo) > 1e-4 * hi:
        x_lo, x_hi = math.log(lo), math.log(hi)
        x = (x_lo + x_hi) / 2
        if f_lo is not None and f_lo > f_hi:
            guess = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo)
            margin = 0.01 * (x_hi - x_lo)
            if x_lo + margin < guess < x_hi - margin:
                x = guess
        mid = math.exp(x)
        evaluations += 1
        try:
            eps_mid = prv(mid)
        except AccountingError:
            lo, f_lo, side = mid, None, 0
            continue
        f_mid = math.log(eps_mid) - aim
        if eps_mid <= target_epsilon:
            hi, eps_hi, f_hi = mid, eps_mid, f_mid
            if side == 1 and f_lo is not None:
                f_lo /= 2
            side = 1
        else:
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi /= 2
            side = -1
    return {
        "noise_multiplier": hi,
        "epsilon": eps_hi,
        "eps_error": err,
        "evaluations": evaluations,
        "seconds": time.monotonic() - t0,
    }
