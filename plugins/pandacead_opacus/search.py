"""Private hyperparameter search for the opacus backend (a job's ``search`` block).

The search is one DP mechanism, priced before any data is read:

* **Base algorithm Q** (one candidate): draw hyperparameters from the job's
  space with the host's secret generator, train with DP-SGD and score the
  model with the Gaussian mechanism (the count of correct predictions, or of
  the clipped losses, plus N(0, σ_s²); sensitivity 1 under add/remove).
  Two ways to score (``validation_fraction``):

  - **0, the default — score on the training rows.** The candidate trains on
    every training row and is scored on the same rows. Q is the adaptive
    composition of DP-SGD and the score: its Rényi curve is the sum
    ρ_train(α) + α/(2σ_s²), σ_s chosen so that the score costs at most
    ``score_share`` of the training curve at every order. The released model
    trained on all rows, and the count runs over all of them (5× the rows of
    a 20 % split, so a far cleaner score for the same noise).
  - **> 0 — a disjoint validation split.** Each training row goes to
    validation by its own secret coin, so adding or removing one row changes
    either the fit set or the validation set, never both: Q's curve is the
    order-wise maximum of the training curve and the score's curve (joint
    quasi-convexity of Rényi divergence over the coin), σ_s chosen so that
    the score's curve never exceeds the training curve.

  Every (batch size, epochs, model) of the space gets its own noise
  multiplier σ_c: the smallest with a DP-SGD curve at or below the
  reference curve (the order-wise maximum over the configurations at the
  calibrated σ) at every order, so a cheaper schedule trains with less noise
  and Q's curve is still at most the reference.
* **Repetition**: K ~ the job's law (logarithmic, geometric, truncated
  negative binomial or Poisson, with the job's mean) drawn from the secret
  generator; only the candidate with the best noisy score is released, with
  that noisy score. `pandacead.tuning.repeat_and_select` turns Q's curve into
  the search's curve (Papernot & Steinke 2022, Theorems 2 and 6); that curve,
  converted at the job's δ, is the ε reserved and charged, whatever K turns
  out to be (a search cut short is charged in full).

σ is calibrated so that the *search* spends at most ``dp.epsilon`` (or the
job's own σ is checked against it). K, the candidates tried and their scores
never leave the host; see docs/accounting.md ("Private hyperparameter search")
for the theorems and docs/privacy.md for what is released.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from typing import Any

from pandacead import accounting, tuning
from pandacead.errors import Diverged, JobFailed, JobRejected
from pandacead.jobs import Job

#: 0: candidates train and are scored on every training row (Q = DP-SGD ∘ score).
DEFAULT_VALIDATION_FRACTION = 0.0
#: Scoring on the training rows: the score's RDP curve is at most this share of the training curve.
DEFAULT_SCORE_SHARE = 0.25
#: The cap M on the number of candidates a job leaves out: this many times the mean. At mean 10
#: (logarithmic) it adds log(1/Z)/(λ−1) + log(1/(1−s)) ≈ 0.005/(λ−1) + 0.068 to the curve
#: (tuning.truncation_penalty) and bounds the run time; a job may set `candidates.max`.
DEFAULT_MAX_FACTOR = 10
#: The host's default (`[trainer] search_constant_work`): every search trains exactly M candidates
#: and releases the best of the first K, so its run time does not depend on the secret K.
DEFAULT_CONSTANT_WORK = True
#: The least one candidate of a constant-work search is taken to cost, in seconds (the timeout check).
CANDIDATE_FLOOR_SECONDS = 0.001
#: At most this many privacy-relevant configurations (batch size × epochs × model).
MAX_CONFIGS = 64
#: σ calibration: bracket and relative tolerance on ε.
SIGMA_MIN, SIGMA_MAX = 0.05, 1e4


def _derived(secret: int, purpose: str) -> int:
    digest = hashlib.sha256(f"pandacead-search\0{secret}\0{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def spec_of(job: Job) -> dict[str, Any]:
    return dict(job.search or {})


#: The space of a search block without one, relative to the job's own values (the family
#: defaults where the buyer left them out): the learning rate log-uniform in
#: [lr·low, lr·high], the batch size times each factor, the job's epochs. A candidate runs
#: at roughly ε/2.3 of the search's ε, so it is noisier than one run at ε: the space
#: leans to smaller steps and batches, which average the extra noise (docs/accounting.md).
DEFAULT_LR_RANGE = (0.25, 1.0)
DEFAULT_BATCH_FACTORS = (0.5, 1.0)


def space_of(job: Job) -> dict[str, Any]:
    """The space the candidates are drawn from: the job's, or the default around the job's values.

    A key the buyer's space leaves out is fixed at the job's value."""
    space = spec_of(job).get("space")
    if space:
        return dict(space)
    lr = float(job.learning_rate)
    batches = sorted({max(1, int(round(job.batch_size * f))) for f in DEFAULT_BATCH_FACTORS})
    return {"learning_rate": {"low": lr * DEFAULT_LR_RANGE[0], "high": lr * DEFAULT_LR_RANGE[1], "log": True},
            "batch_size": batches, "epochs": [int(job.epochs)]}


def configs(job: Job) -> list[dict[str, Any]]:
    """The privacy-relevant grid: every (batch_size, epochs, hidden) the search may draw."""
    space = space_of(job)
    batches = [int(b) for b in space.get("batch_size") or [job.batch_size]]
    epochs = [int(e) for e in space.get("epochs") or [job.epochs]]
    hiddens = [tuple(int(h) for h in hs) for hs in space.get("hidden") or [job.model.hidden]]
    grid = [
        {"batch_size": b, "epochs": e, "hidden": list(h)}
        for b, e, h in itertools.product(sorted(set(batches)), sorted(set(epochs)), sorted(set(hiddens)))
    ]
    if len(grid) > MAX_CONFIGS:
        raise JobRejected(
            f"The search space has {len(grid)} combinations of batch size, epochs and model, "
            f"more than the {MAX_CONFIGS} a search may price.",
            [f"search.space: {len(grid)} configurations > {MAX_CONFIGS}"],
        )
    if job.model.type == "linear" and any(c["hidden"] for c in grid):
        raise JobRejected(
            "The search draws hidden layers for a linear model; use model.type \"mlp\".",
            ["search.space.hidden: a linear model has no hidden layers"],
        )
    return grid


def candidate_job(job: Job, cfg: dict[str, Any], lr: float, clip: float, sigma: float) -> Job:
    """The plain job one candidate trains (its own hyperparameters, the search's σ)."""
    d = job.to_dict()
    d.pop("search", None)
    d["defaulted"] = []  # the candidate's own hyperparameters, never a family default
    d["batch_size"] = int(cfg["batch_size"])
    d["epochs"] = int(cfg["epochs"])
    d["learning_rate"] = float(lr)
    d["model"] = {**d["model"], "hidden": list(cfg["hidden"])}
    d["dp"] = {**d["dp"], "clip": float(clip), "noise_multiplier": float(sigma)}
    return Job.from_dict(d)


def score_sigma(train_curve: dict[float, float], share: float = 1.0) -> float:
    """σ_s of the score's Gaussian mechanism: the smallest with α/(2σ_s²) ≤ share·ρ_train(α) at every order."""
    need = max(a / (2 * share * rho) for a, rho in train_curve.items() if rho > 0 and math.isfinite(rho))
    return math.sqrt(need)


def _config_curve(schedule: dict[str, Any], sigma: float) -> dict[float, float]:
    """The subsampled-Gaussian RDP curve of one configuration's DP-SGD run at noise σ."""
    from opacus.accountants.analysis.rdp import compute_rdp

    from .privacy import RDP_ORDERS

    values = compute_rdp(q=schedule["sample_rate"], noise_multiplier=sigma, steps=schedule["steps"], orders=RDP_ORDERS)
    return {float(a): (float(v) if math.isfinite(float(v)) else math.inf) for a, v in zip(RDP_ORDERS, values)}


def _train_curve(schedules: list[dict[str, Any]], sigma: float | list[float]) -> dict[float, float]:
    """Order-wise maximum over the configurations (σ: one for all, or one per configuration)."""
    sigmas = sigma if isinstance(sigma, list) else [sigma] * len(schedules)
    worst: dict[float, float] = {}
    for s, sg in zip(schedules, sigmas):
        for a, v in _config_curve(s, sg).items():
            worst[a] = max(worst.get(a, 0.0), v)
    return worst


def config_sigmas(schedules: list[dict[str, Any]], sigma: float) -> list[float]:
    """Per configuration, the smallest σ_c ≤ σ whose curve is at or below the reference at every order.

    The reference is the order-wise maximum over the configurations at σ, so
    the configuration(s) that define it keep σ and cheaper schedules (fewer
    epochs, a smaller sampling rate) train with less noise; Q's training curve
    stays at most the reference (each configuration's is).
    """
    ref = _train_curve(schedules, sigma)

    def fits(s: dict[str, Any], x: float) -> bool:
        return all(v <= ref[a] for a, v in _config_curve(s, x).items() if math.isfinite(ref[a]))

    out = []
    for s in schedules:
        lo, hi = math.log(max(SIGMA_MIN, sigma / 20)), math.log(sigma)
        if fits(s, math.exp(lo)):
            out.append(math.exp(lo))
            continue
        while hi - lo > 1e-4:  # relative precision 1e-4 on σ_c; `hi` always fits
            mid = (lo + hi) / 2
            if fits(s, math.exp(mid)):
                hi = mid
            else:
                lo = mid
        out.append(sigma if hi >= math.log(sigma) else math.exp(hi))
    return out


def max_count_of(cand: dict[str, Any], mean: float) -> int:
    """M: the job's `candidates.max`, or DEFAULT_MAX_FACTOR × the mean."""
    m = cand.get("max")
    return int(m) if m is not None else int(math.ceil(DEFAULT_MAX_FACTOR * mean))


def search_curve(
    schedules: list[dict[str, Any]],
    sigma: float,
    mean: float,
    shape: float,
    fraction: float = DEFAULT_VALIDATION_FRACTION,
    share: float = DEFAULT_SCORE_SHARE,
    sigmas: list[float] | None = None,
    max_count: int | None = None,
) -> tuple[dict[float, float], dict[float, float], float]:
    """(search curve, base curve Q, σ_s) for noise multiplier σ.

    `sigmas`: the per-configuration noise multipliers actually used (`config_sigmas`);
    without them every configuration trains at σ. σ_s follows from the reference
    curve at σ. `fraction` 0: Q = DP-SGD then the score on the same rows (sum of
    curves); > 0: disjoint split (order-wise maximum).
    """
    ref = _train_curve(schedules, sigma)
    finite = {a: r for a, r in ref.items() if math.isfinite(r)}
    if not finite:
        return {a: math.inf for a in ref}, ref, math.inf
    train = ref if sigmas is None else _train_curve(schedules, sigmas)
    if fraction > 0:
        s_sigma = score_sigma(finite, 1.0)
        base = {a: max(train[a], tuning.gaussian_rdp(s_sigma, a)) for a in finite}
    else:
        s_sigma = score_sigma(finite, share)
        base = {a: train[a] + tuning.gaussian_rdp(s_sigma, a) for a in finite}
    return tuning.repeat_and_select(base, mean, shape, max_count), base, s_sigma


def _eps(curve: dict[float, float], delta: float) -> float:
    eps, _ = accounting.rdp_to_dp({a: r for a, r in curve.items() if math.isfinite(r)}, delta)
    return eps


def plan_search(job: Job, ctx: Any, base_plan: Any, plan_config: Any) -> Any:
    """The PrivacyPlan of a search job.

    `base_plan` is the plan of the job's own configuration (the opacus
    trainer's usual checks ran on it); `plan_config(cfg_job)` plans any
    candidate configuration the same way (schedule, architecture, grad-sample
    mode) so that candidates train exactly as ordinary jobs of that shape.
    """
    from pandacead.trainers import PrivacyPlan

    from . import defaults

    t0 = time.monotonic()
    # Candidates inherit the family defaults for what the buyer left out (the trainer
    # applies the same defaults to the job it hands to `run_search`).
    job, _ = defaults.with_defaults(job, ctx.dataset(job))
    spec = spec_of(job)
    cand = dict(spec.get("candidates") or {})
    distribution = str(cand.get("distribution", "logarithmic"))
    mean = float(cand.get("mean", 10))
    try:
        shape = tuning.distribution_shape(distribution, cand.get("shape"))
    except ValueError as exc:
        raise JobRejected(f"The search's number of candidates is invalid: {exc}.", [f"search.candidates: {exc}"]) from None
    max_count = max_count_of(cand, mean)
    if max_count < mean:
        raise JobRejected(
            f"The search's cap of {max_count} candidates is below their mean {mean:g}.",
            [f"search.candidates.max: {max_count} < mean {mean:g}"],
        )
    try:
        tuning.truncation_penalty(mean, shape, max_count)
    except ValueError as exc:
        raise JobRejected(f"The search's number of candidates is invalid: {exc}.", [f"search.candidates: {exc}"]) from None
    fraction = float(spec.get("validation_fraction", DEFAULT_VALIDATION_FRACTION))
    share = float(spec.get("score_share", DEFAULT_SCORE_SHARE))
    delta = float(job.dp.delta)

    grid = configs(job)
    plans = []
    for cfg in grid:
        cfg_job = candidate_job(job, cfg, job.learning_rate, job.dp.clip, base_plan.noise_multiplier or 1.0)
        p = plan_config(cfg_job, fit_fraction=1 - fraction)
        plans.append({"config": cfg, "sample_rate": p.sample_rate, "steps": p.steps, "details": p.details,
                      "n_train": p.n_train})
    constant_work = bool((ctx.options or {}).get("search_constant_work", DEFAULT_CONSTANT_WORK))
    if constant_work:  # 'no free work': M candidates must fit in the host's timeout (a lower bound)
        # The plans' estimates are rounded to 1 ms: a cheap configuration reads 0.0, which let any M
        # through. A candidate also builds a model, saves, loads and scores it (8-20 ms measured on
        # one CPU core): CANDIDATE_FLOOR_SECONDS is an optimistic floor.
        per = max(CANDIDATE_FLOOR_SECONDS, min(float(p["details"].get("estimated_seconds_min") or 0.0) for p in plans))
        timeout = (ctx.options or {}).get("timeout_seconds")
        if isinstance(timeout, (int, float)) and timeout > 0 and max_count * per > float(timeout):
            raise JobRejected(
                f"Job {job.job_id}'s search trains {max_count} candidates (candidates.max; this host runs all of"
                f" them so that the run time does not reveal how many count), at least {max_count * per:.0f} s,"
                f" more than this host's {float(timeout):g}-s timeout; nothing was run or charged.",
                [f"runtime: {max_count} candidates x >= {per:.2f} s > timeout_seconds {float(timeout):g}"],
            )
    # The public count of the rows a score runs over (the true count of private data is private).
    n_val_public = base_plan.n_train if fraction == 0 else max(1, int(round(base_plan.n_train * fraction)))

    def eps_of(sigma: float) -> float:
        curve, _, _ = search_curve(plans, sigma, mean, shape, fraction, share, max_count=max_count)
        return _eps(curve, delta)

    target = float(job.dp.epsilon)
    if job.dp.noise_multiplier is not None:
        sigma = float(job.dp.noise_multiplier)
        eps = eps_of(sigma)
        if eps > target:
            raise JobRejected(
                f"The search with σ = {sigma:g} would spend ε = {eps:.4g} (mean {mean:g} candidates, "
                f"{distribution}), above its requested ε = {target:g}.",
                [f"dp.noise_multiplier: search ε({sigma:g}) = {eps:.6g} > dp.epsilon = {target:g}"],
            )
        calibrated = False
    else:
        lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
        if eps_of(math.exp(hi)) > target:
            raise JobRejected(
                f"No noise multiplier up to {SIGMA_MAX:g} fits the search into ε = {target:g}.",
                [f"dp.epsilon: {target:g} too small for the search"],
            )
        tol = max(1e-3, 0.005 * target)
        for _ in range(60):
            mid = (lo + hi) / 2
            e = eps_of(math.exp(mid))
            if e <= target:
                hi = mid
                if target - e <= tol:
                    break
            else:
                lo = mid
        sigma = math.exp(hi)
        eps = eps_of(sigma)
        calibrated = True
    sigmas = config_sigmas(plans, sigma)
    curve, base, s_sigma = search_curve(plans, sigma, mean, shape, fraction, share, sigmas, max_count)
    uncapped, _, _ = search_curve(plans, sigma, mean, shape, fraction, share, sigmas)
    eps = _eps(curve, delta)  # the mechanism actually run: at most the calibrated value
    base_eps = _eps(base, delta)
    for p, sg in zip(plans, sigmas):
        p["noise_multiplier"] = sg
    worst = max(plans, key=lambda p: (p["steps"] * p["sample_rate"] ** 2, p["sample_rate"]))
    details = dict(base_plan.details)
    details.update(
        {
            "search": {
                **tuning.describe(distribution, mean, cand.get("shape"), max_count),
                # What the cap adds, at the same σ: the price of a bounded, K-independent run time.
                "uncapped_epsilon": _eps(uncapped, delta),
                "constant_work": constant_work,
                "validation_fraction": fraction,
                "scored_on": "training rows" if fraction == 0 else "validation split",
                "score_share": share if fraction == 0 else None,
                "n_validation_public": n_val_public,
                "score_noise": s_sigma,
                "metric": spec.get("metric") or ("accuracy" if base_plan.details.get("task") == "classification" else "loss"),
                "loss_clip": float(spec.get("loss_clip", 1.0)),
                "space": space_of(job),
                "configs": plans,
                "base_epsilon": base_eps,
                "naive_epsilon": base_eps * mean,
                "search_epsilon": eps,
                "calibrated": calibrated,
                "plan_seconds": round(time.monotonic() - t0, 3),
            },
            "calibrated": calibrated,
        }
    )
    details.pop("prv_eps_error", None)
    return PrivacyPlan(
        epsilon=float(eps),
        delta=delta,
        noise_multiplier=float(sigma),
        sample_rate=float(worst["sample_rate"]),
        steps=int(worst["steps"]),
        accountant="rdp-repeat-and-select",
        n_train=base_plan.n_train,
        rdp=accounting.curve_to_json({a: curve[a] for a in accounting.RDP_ORDERS}),
        details=details,
    )


def _draw(space: dict[str, Any], key: str, default: float, rng: Any) -> float:
    v = space.get(key)
    if v is None:
        return float(default)
    if isinstance(v, list):
        return float(v[int(rng.integers(len(v)))])
    low, high = float(v["low"]), float(v["high"])
    if v.get("log", False):
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def run_search(
    job: Job,
    plan: Any,
    arrays: dict[str, Any],
    *,
    noise_seed: int | None,
    train_candidate: Any,
    progress: Any,
) -> dict[str, Any]:
    """Run the search on the training arrays; return the best candidate's TrainResult fields.

    `train_candidate(cand_job, cand_plan_dict, arrays, noise_seed)` trains one
    candidate (the opacus trainer's `train_arrays`). Only X_train/y_train are
    used: the held-out rows stay untouched, as for any job.
    """
    import secrets as _secrets

    import numpy as np

    from . import models

    s = plan.details["search"]
    secret = int(noise_seed) if noise_seed is not None else _secrets.randbits(63)
    rng = np.random.default_rng(_derived(secret, "search"))
    max_count = int(s["max"])
    k = tuning.sample_count(float(rng.random()), s["distribution"], float(s["mean"]),
                            s["shape"] if s["distribution"] == "negative_binomial" else None, max_count)
    # Constant work: train all M candidates whatever K is, and release the best of the first K —
    # the run time is then that of M i.i.d. candidates, independent of the secret K. The extra
    # candidates are trained and scored like the others and thrown away (their outputs never
    # reach the release, so they change nothing in its distribution).
    runs = max_count if s.get("constant_work") else k
    X, y = arrays["X_train"], arrays["y_train"]
    on_train_rows = float(s["validation_fraction"]) == 0
    if on_train_rows:  # Q = DP-SGD on every training row, then the score on the same rows
        X_fit, y_fit, X_val, y_val = X, y, X, y
    else:  # a disjoint split by each row's own secret coin
        to_val = rng.random(len(X)) < float(s["validation_fraction"])
        X_fit, y_fit, X_val, y_val = X[~to_val], y[~to_val], X[to_val], y[to_val]
    fit_arrays = {"X_train": X_fit, "y_train": y_fit, "X_test": X_val[:0], "y_test": y_val[:0]}
    space = dict(s.get("space") or {})
    n_val_public = int(s["n_validation_public"])
    classification = s["metric"] == "accuracy"
    best: dict[str, Any] | None = None
    best_score = -math.inf
    progress({"stage": "search", "message": "searching hyperparameters"})
    for i in range(runs):
        cfg_plan = s["configs"][int(rng.integers(len(s["configs"])))]
        lr = _draw(space, "learning_rate", job.learning_rate, rng)
        clip = _draw(space, "clip", job.dp.clip, rng)
        sigma = float(cfg_plan.get("noise_multiplier") or plan.noise_multiplier)  # this configuration's σ_c
        cand = candidate_job(job, cfg_plan["config"], lr, clip, sigma)
        cand_plan = {
            "epsilon": plan.epsilon,
            "delta": plan.delta,
            "noise_multiplier": sigma,
            "sample_rate": cfg_plan["sample_rate"],
            "steps": cfg_plan["steps"],
            "accountant": "rdp",
            "n_train": cfg_plan["n_train"],
            "rdp": None,
            "details": cfg_plan["details"],
        }
        try:
            result = train_candidate(cand.to_dict(), cand_plan, fit_arrays, _derived(secret, f"candidate\0{i}"))
        except Diverged:
            # Decided on the DP model alone (post-processing): this candidate is out, the search goes on.
            progress({"stage": "search", "candidate": i + 1, "of": runs, "counted": i < k, "diverged": True,
                      "admin_only": True})
            continue
        model, arch = models.load_model(result["model"])
        if len(X_val):
            pred = models.predict(model, arch, X_val)
            if classification:
                total = float(np.sum(pred == np.asarray(y_val, dtype=np.int64)))
            else:
                err = (pred.astype(np.float64) - np.asarray(y_val, dtype=np.float64)) ** 2
                err = np.where(np.isfinite(err), err, np.inf)
                total = -float(np.sum(np.minimum(err, s["loss_clip"]))) / float(s["loss_clip"])
        else:
            total = 0.0
        noisy = (total + float(rng.normal(0.0, float(s["score_noise"])))) / n_val_public
        if not math.isfinite(noisy):
            noisy = -math.inf
        if i < k and (best is None or noisy > best_score):
            best, best_score = result, noisy
            best["training_params"]["search_choice"] = {"learning_rate": lr, "clip": clip, "noise_multiplier": sigma,
                                                        **cfg_plan["config"]}
        # Admin-only (the job's log on the host): whether this candidate is one of the K that count.
        progress({"stage": "search", "candidate": i + 1, "of": runs, "counted": i < k,
                  "best_score_so_far": best_score, "admin_only": True})
    if best is None:
        raise JobFailed("The hyperparameter search produced no usable candidate; nothing is released.")
    # What the buyer may see: the released model, its own hyperparameters and its
    # noisy score (part of Q's output, so covered by the search's ε): on its own training
    # rows (`train_*_dp`) or on the validation split (`validation_*_dp`).
    # K, the other candidates and their scores stay on the host.
    best = dict(best)
    name = ("train_" if on_train_rows else "validation_") + ("accuracy_dp" if classification else "clipped_loss_dp")
    # Clamped into the metric's range: post-processing of the noisy score.
    value = min(1.0, max(0.0, best_score)) if classification else max(0.0, -best_score)
    best["metrics"] = {name: float(value), "search": {"released": "best candidate by its noisy score"}}
    best["accuracy"] = None
    best["epsilon"] = float(plan.epsilon)
    best["delta"] = float(plan.delta)
    tp = dict(best["training_params"])
    tp["accountant"] = plan.accountant
    tp["search"] = {k2: s.get(k2) for k2 in ("distribution", "mean", "shape", "max", "validation_fraction",
                                              "scored_on", "score_share", "score_noise", "constant_work")}
    best["training_params"] = tp
    return best
