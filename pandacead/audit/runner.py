"""Run an audit: train a backend many times (or once with many canaries) and bound its ε from below.

Trainers run through their real interface — `plan` once per audit dataset,
then `train` per run — in this process or, for an isolated backend, in a
pandacead worker process exactly like a job. Every run gets a fresh secret
`ctx.options["noise_seed"]`, as the daemon gives every job; the buyer-chosen
`job.seed` is the same in every run (a buyer may always reuse a seed), so a
trainer whose noise follows `job.seed` produces the same noise every time
and the audit sees straight through it.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pandacead.jobs import DPParams, Job, ModelSpec
from pandacead.trainers import PrivacyPlan, TrainerContext

from . import canaries, estimators

METHODS = ("many-runs", "one-run")
STATISTICS = ("loss", "weight")

Progress = Callable[[dict[str, Any]], None]


class AuditError(RuntimeError):
    """The audit could not run (a refused plan, a failed run, too few runs in the time limit)."""


@dataclass(frozen=True)
class AuditSettings:
    """What an audit runs. `runs` counts trainings (many-runs: half of them with the canary)."""

    epsilon: float = 1.0
    delta: float = 1e-5
    method: str = "many-runs"
    runs: int = 200
    canaries: int = 500  # one-run only
    statistic: str = "loss"  # "loss": black-box loss on the canary; "weight": white-box Dirac canary
    confidence: float = 0.95
    calibration: float = 0.5  # many-runs: share of runs that choose the test
    epochs: int = 1
    clip: float = 1.0
    learning_rate: float = 1.0
    model: str = "linear"
    hidden: tuple[int, ...] = ()
    base_rows: int = 100
    base_features: int = 5
    canary_norm: float | None = None  # default 10 × clip
    job_seed: int = 0
    time_limit: float | None = None
    seed: int | None = None  # the audit's own randomness (canary inclusion, noise seeds); None: OS entropy

    def check(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.statistic not in STATISTICS:
            problems.append(f"statistic must be one of {', '.join(STATISTICS)}, not {self.statistic!r}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            problems.append(f"epsilon must be a finite positive number, not {self.epsilon!r}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), not {self.delta!r}")
        if not 0 < self.confidence < 1:
            problems.append(f"confidence must be in (0, 1), not {self.confidence!r}")
        if self.method == "many-runs" and self.runs < 8:
            problems.append(f"a many-runs audit needs at least 8 runs, not {self.runs}")
        if self.method == "one-run" and self.canaries < 10:
            problems.append(f"a one-run audit needs at least 10 canaries, not {self.canaries}")
        if self.time_limit is not None and not self.time_limit > 0:
            problems.append(f"time limit must be positive, not {self.time_limit!r}")
        if problems:
            raise AuditError("The audit settings are invalid: " + "; ".join(problems) + ".")


@dataclass
class AuditReport:
    """The outcome: the claim, the lower bound ε̂ and how it was obtained."""

    backend: str
    method: str
    statistic: str
    epsilon_requested: float
    epsilon_claimed: float
    epsilon_lower: float
    epsilon_interval: tuple[float, float | None]
    epsilon_max: float
    confidence: float
    delta: float
    runs: int
    seconds: float
    stopped_early: bool
    test: dict[str, Any]
    parameters: dict[str, Any]
    scores: dict[str, list[float]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def violated(self) -> bool:
        """True when the lower bound exceeds the claim: proof (at `confidence`) of a privacy bug."""
        return self.epsilon_lower > self.epsilon_claimed

    @property
    def conclusive(self) -> bool:
        """False when even a perfect attack could not show ε̂ above the claim with these runs."""
        return self.epsilon_max > self.epsilon_claimed

    def to_dict(self, with_scores: bool = False) -> dict[str, Any]:
        d = {
            "backend": self.backend,
            "method": self.method,
            "statistic": self.statistic,
            "epsilon_requested": self.epsilon_requested,
            "epsilon_claimed": self.epsilon_claimed,
            "epsilon_lower": self.epsilon_lower,
            "epsilon_interval": list(self.epsilon_interval),
            "epsilon_max": self.epsilon_max,
            "tightness": self.epsilon_lower / self.epsilon_claimed if self.epsilon_claimed > 0 else None,
            "violated": self.violated,
            "conclusive": self.conclusive,
            "confidence": self.confidence,
            "delta": self.delta,
            "runs": self.runs,
            "seconds": round(self.seconds, 3),
            "stopped_early": self.stopped_early,
            "test": self.test,
            "parameters": self.parameters,
            "files": self.files,
        }
        if with_scores:
            d["scores"] = self.scores
        return d

    def summary(self) -> str:
        lo, hi = self.epsilon_interval
        hi_text = "∞" if hi is None else f"{hi:.3f}"
        if self.violated:
            verdict = f"VIOLATION: ε̂ = {self.epsilon_lower:.3f} > claimed ε = {self.epsilon_claimed:.3f}"
        elif not self.conclusive:
            verdict = (
                f"INCONCLUSIVE: {self.runs} run(s) cannot certify more than ε̂ = {self.epsilon_max:.3f}, "
                f"not above the claimed ε = {self.epsilon_claimed:.3f}; audit with more runs"
            )
        else:
            verdict = f"consistent: ε̂ = {self.epsilon_lower:.3f} ≤ claimed ε = {self.epsilon_claimed:.3f}"
        return "\n".join(
            [
                f"backend {self.backend}: {verdict}",
                f"  lower bound ε̂ {self.epsilon_lower:.3f} at {self.confidence:.0%} confidence (δ = {self.delta:g}); "
                f"test interval [{lo:.3f}, {hi_text}]",
                f"  method {self.method}, statistic {self.statistic}, {self.runs} training run(s) in {self.seconds:.1f} s"
                + (" (stopped by the time limit)" if self.stopped_early else ""),
                f"  the most {self.runs if self.method == 'many-runs' else self.test.get('canaries')} "
                f"{'runs' if self.method == 'many-runs' else 'canaries'} can certify: ε̂ ≤ {self.epsilon_max:.3f}",
            ]
        )


# --------------------------------------------------------------------------- trainers in a worker


class WorkerTrainer:
    """An isolated backend, called through a pandacead worker process like a daemon job."""

    isolated = True

    def __init__(self, name: str, home: Path, timeout: float = 3600.0):
        from pandacead.worker import WorkerProcess

        self.name = name
        self.timeout = timeout
        self.worker = WorkerProcess(Path(home))

    def _call(self, op: str, job: Job, ctx: TrainerContext, plan: PrivacyPlan | None, progress: Progress | None) -> Any:
        req: dict[str, Any] = {"op": op, "trainer": self.name, "job": job.to_dict(), "ctx": ctx.to_dict()}
        if plan is not None:
            req["plan"] = plan.to_dict()
        return self.worker.call(req, timeout=self.timeout, on_progress=progress)

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        return PrivacyPlan.from_dict(self._call("plan", job, ctx, None, None))

    def train(self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress) -> Any:
        from pandacead.trainers import TrainResult

        return TrainResult.from_dict(self._call("train", job, ctx, plan, progress))

    def close(self) -> None:
        self.worker.stop()


# --------------------------------------------------------------------------- the audit


def _job(settings: AuditSettings, dataset: str, job_id: str, batch_size: int) -> Job:
    return Job(
        job_id=job_id,
        user_id="auditor",
        dataset=dataset,
        task="classification",
        dp=DPParams(epsilon=settings.epsilon, delta=settings.delta, clip=settings.clip),
        epochs=settings.epochs,
        batch_size=batch_size,  # ≥ every audit dataset: full-batch steps, sample rate 1
        learning_rate=settings.learning_rate,
        seed=settings.job_seed,
        model=ModelSpec(type=settings.model, hidden=tuple(settings.hidden)),
    )


def _context(base: TrainerContext | None, datasets: dict[str, Any], workdir: Path) -> TrainerContext:
    options: dict[str, Any] = {}
    if base is not None:
        options = {k: v for k, v in base.options.items() if k not in ("noise_seed", "dataset_errors")}
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    else:
        fields = {}
    options["home"] = str(workdir)
    fields.update(datasets=datasets, state_dir=str(workdir / "state"), options=options)
    fields.setdefault("torch_threads", 1)
    return TrainerContext(**fields)


def _with_noise_seed(ctx: TrainerContext, seed: int) -> TrainerContext:
    return dataclasses.replace(ctx, options={**ctx.options, "noise_seed": int(seed)})


def _plan(trainer: Any, job: Job, ctx: TrainerContext) -> PrivacyPlan:
    from pandacead.errors import JobError

    try:
        return trainer.plan(job, ctx)
    except JobError as exc:
        raise AuditError(f"Backend {trainer.name!r} refused the audit job on {job.dataset!r}: {exc.message}") from None


def _train(trainer: Any, job: Job, plan: PrivacyPlan, ctx: TrainerContext) -> Any:
    from pandacead.errors import JobError

    try:
        return trainer.train(job, plan, ctx, lambda event: None)
    except JobError as exc:
        raise AuditError(f"Backend {trainer.name!r} failed audit run {job.job_id!r}: {exc.message}") from None


def _scorer(settings: AuditSettings, score: Callable[..., Any] | None, name: str) -> Callable[[bytes, np.ndarray, np.ndarray, list[int]], np.ndarray]:
    def raw(model: bytes, X: np.ndarray, y: np.ndarray, cols: list[int]) -> np.ndarray:
        if score is not None:
            return np.asarray(score(model, X, y), dtype=np.float64).reshape(-1)
        if settings.statistic == "weight":
            return canaries.white_box_scores(model, cols, y)
        return canaries.margins(canaries.model_logits(model, X), y)

    def scored(model: bytes, X: np.ndarray, y: np.ndarray, cols: list[int]) -> np.ndarray:
        try:
            s = raw(model, X, y, cols)
        except (ValueError, KeyError) as exc:
            raise AuditError(f"The audit cannot score the models of backend {name!r}: {exc}.") from None
        if len(s) != len(X):
            raise AuditError(f"The audit's statistic for backend {name!r} gave {len(s)} scores for {len(X)} canaries.")
        return s

    return scored


def run_audit(
    trainer: Any,
    settings: AuditSettings | None = None,
    *,
    ctx: TrainerContext | None = None,
    workdir: str | Path | None = None,
    progress: Progress | None = None,
    score: Callable[..., Any] | None = None,
) -> AuditReport:
    """Audit `trainer` (any object with `name`, `plan` and `train`) and return the report.

    `ctx` supplies the host's trainer settings (options, accountant, …); its
    datasets are replaced by the audit's own. `score(model_bytes, X, y)`
    overrides the test statistic for models the audit cannot read (higher
    must mean "more likely trained on").
    """
    settings = settings or AuditSettings()
    settings.check()
    progress = progress or (lambda event: None)
    rng = np.random.default_rng(settings.seed if settings.seed is not None else secrets.randbits(128))
    scorer = _scorer(settings, score, getattr(trainer, "name", "?"))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pandacead-audit-", dir=workdir) as tmp:
        scratch = Path(tmp)
        if settings.method == "many-runs":
            report = _many_runs(trainer, settings, ctx, scratch, rng, scorer, progress, t0)
        else:
            report = _one_run(trainer, settings, ctx, scratch, rng, scorer, progress, t0)
    report.seconds = time.monotonic() - t0
    return report


def _parameters(settings: AuditSettings, job: Job, plan: PrivacyPlan, norm: float, n_train: int) -> dict[str, Any]:
    return {
        "job": {k: v for k, v in job.to_dict().items() if k not in ("job_id", "user_id")},
        "plan": {
            "epsilon": plan.epsilon,
            "delta": plan.delta,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps,
            "accountant": plan.accountant,
        },
        "data": {
            "kind": "synthetic, public (generated for the audit)",
            "base_rows": settings.base_rows,
            "base_features": settings.base_features,
            "n_train": n_train,
            "canary": f"x = {norm:g}·e_j on a column no other row uses, label independent of the features",
        },
        "calibration": settings.calibration,
        "time_limit": settings.time_limit,
        "noise_seed": "fresh secret ctx.options['noise_seed'] per run",
    }


def _many_runs(trainer: Any, settings: AuditSettings, base: TrainerContext | None, scratch: Path,
               rng: np.random.Generator, scorer: Any, progress: Progress, t0: float) -> AuditReport:
    norm = settings.canary_norm or 10.0 * settings.clip
    d = settings.base_features + 1
    col = settings.base_features
    X0, y0 = canaries.base_rows(settings.base_rows, settings.base_features, 1, int(rng.integers(2**31)))
    label = int(rng.integers(2))
    Xc, yc = canaries.canary_rows([col], [label], d, norm)
    info_out = canaries.write_dataset("audit-without-canary", X0, y0, scratch / "data")
    info_in = canaries.write_dataset("audit-with-canary", np.vstack([X0, Xc]), np.concatenate([y0, yc]), scratch / "data")
    ctx = _context(base, {info_out.name: info_out, info_in.name: info_in}, scratch)
    batch = settings.base_rows + 1
    plans = {}
    for info in (info_out, info_in):
        plans[info.name] = _plan(trainer, _job(settings, info.name, "audit-plan", batch), ctx)
    claimed = max(p.epsilon for p in plans.values())
    scores: dict[str, list[float]] = {"without": [], "with": []}
    stopped = False
    for i in range(settings.runs):
        if settings.time_limit is not None and time.monotonic() - t0 > settings.time_limit and i >= 8:
            stopped = True
            break
        info, side = (info_in, "with") if i % 2 else (info_out, "without")
        job = _job(settings, info.name, f"audit-{i:06d}-{secrets.token_hex(4)}", batch)
        result = _train(trainer, job, plans[info.name], _with_noise_seed(ctx, int(rng.integers(2**62))))
        scores[side].append(float(scorer(result.model, Xc, yc, [col])[0]))
        progress({"stage": "run", "run": i + 1, "runs": settings.runs, "elapsed": round(time.monotonic() - t0, 2)})
    n = len(scores["without"]) + len(scores["with"])
    if min(len(scores["without"]), len(scores["with"])) < 4:
        raise AuditError(f"The time limit allowed only {n} audit runs of backend {trainer.name!r}; at least 8 are needed.")
    res = estimators.many_runs_bound(scores["without"], scores["with"], delta=settings.delta,
                                     confidence=settings.confidence, calibration=settings.calibration)
    return AuditReport(
        backend=trainer.name,
        method="many-runs",
        statistic=settings.statistic,
        epsilon_requested=settings.epsilon,
        epsilon_claimed=claimed,
        epsilon_lower=res.epsilon_lower,
        epsilon_interval=(res.epsilon_lower, None if not math.isfinite(res.epsilon_upper) else res.epsilon_upper),
        epsilon_max=res.epsilon_max,
        confidence=settings.confidence,
        delta=settings.delta,
        runs=n,
        seconds=0.0,
        stopped_early=stopped,
        test=res.to_dict(),
        parameters=_parameters(settings, _job(settings, info_in.name, "-", batch), plans[info_in.name], norm, info_in.n_train),
        scores=scores,
    )


def _one_run(trainer: Any, settings: AuditSettings, base: TrainerContext | None, scratch: Path,
             rng: np.random.Generator, scorer: Any, progress: Progress, t0: float) -> AuditReport:
    m = settings.canaries
    norm = settings.canary_norm or 10.0 * settings.clip
    d = settings.base_features + m
    cols = list(range(settings.base_features, d))
    X0, y0 = canaries.base_rows(settings.base_rows, settings.base_features, m, int(rng.integers(2**31)))
    labels = rng.integers(0, 2, size=m)
    Xc, yc = canaries.canary_rows(cols, list(labels), d, norm)
    included = rng.random(m) < 0.5
    info = canaries.write_dataset(
        "audit-one-run", np.vstack([X0, Xc[included]]), np.concatenate([y0, yc[included]]), scratch / "data"
    )
    ctx = _context(base, {info.name: info}, scratch)
    batch = settings.base_rows + m
    plan = _plan(trainer, _job(settings, info.name, "audit-plan", batch), ctx)
    job = _job(settings, info.name, f"audit-one-run-{secrets.token_hex(4)}", batch)
    result = _train(trainer, job, plan, _with_noise_seed(ctx, int(rng.integers(2**62))))
    progress({"stage": "run", "run": 1, "runs": 1, "elapsed": round(time.monotonic() - t0, 2)})
    s = scorer(result.model, Xc, yc, cols)
    res = estimators.one_run_bound(s, included, delta=settings.delta, confidence=settings.confidence)
    return AuditReport(
        backend=trainer.name,
        method="one-run",
        statistic=settings.statistic,
        epsilon_requested=settings.epsilon,
        epsilon_claimed=plan.epsilon,
        epsilon_lower=res.epsilon_lower,
        epsilon_interval=(res.epsilon_lower, None),
        epsilon_max=res.epsilon_max,
        confidence=settings.confidence,
        delta=settings.delta,
        runs=1,
        seconds=0.0,
        stopped_early=False,
        test=res.to_dict(),
        parameters=_parameters(settings, job, plan, norm, info.n_train),
        scores={"included": [float(v) for v in s[included]], "excluded": [float(v) for v in s[~included]]},
    )


# --------------------------------------------------------------------------- a backend of a home


def audit_backend(
    home: str | Path | None,
    backend: str | None,
    settings: AuditSettings,
    *,
    progress: Progress | None = None,
    workdir: str | Path | None = None,
) -> AuditReport:
    """Audit the backend `backend` (default: the home's default) as the home's daemon would run it.

    Plugins and trainer options come from the home's config; an isolated
    backend runs in a worker process. The home's datasets and ledger are never
    read: the audit trains on its own public synthetic data and charges nothing.
    """
    from pandacead.config import load_settings
    from pandacead.default_selection import default_backend
    from pandacead.plugins import load_plugins

    s = load_settings(home)
    trainers = load_plugins(s).trainers
    name = backend or default_backend(trainers, s)
    trainer = trainers.get(name)
    if trainer is None:
        known = ", ".join(sorted(trainers)) or "none"
        raise AuditError(f"Backend {name!r} is not available on this host (available: {known}).")
    t = s.trainer
    base = TrainerContext(
        datasets={},
        state_dir=str(s.state),
        torch_threads=1,
        accountant=str(t.get("accountant", "prv")),
        grad_sample_mode=str(t.get("grad_sample_mode", "auto")),
        secure_mode=bool(t.get("secure_mode", False)),
        max_steps=int(t.get("max_steps", 200_000)),
        options=dict(t.get("options") or {}),
    )
    runner: Any = WorkerTrainer(name, s.home) if getattr(trainer, "isolated", False) else trainer
    try:
        return run_audit(runner, settings, ctx=base, workdir=workdir, progress=progress)
    finally:
        if isinstance(runner, WorkerTrainer):
            runner.close()
