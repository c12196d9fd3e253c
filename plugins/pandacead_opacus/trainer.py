"""OpacusTrainer: the pandacead trainer backend "opacus" (DP-SGD with Opacus).

``plan`` prices a job from its dataset's description only (no data is read):
the Poisson schedule (see `pandacead_opacus.privacy`), then either ε for the
job's own σ (refused if above the job's ε) or the σ calibrated to the job's
ε. ``train`` loads the data and runs `pandacead_opacus.training.train_arrays`.

Torch and opacus are imported inside the methods only.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pandacead.errors import JobFailed, JobRejected
from pandacead.jobs import Job
from pandacead.trainers import DatasetInfo, PrivacyPlan, Progress, TrainerContext, TrainResult

from . import models
from .privacy import ACCOUNTANTS, RDP_ORDERS

__all__ = ["OpacusTrainer", "RDP_ORDERS"]

GRAD_SAMPLE_MODES = ("auto", "hooks", "functorch", "ghost")
#: "auto" uses ghost clipping from this expected batch size on, hooks below.
#: bench/bench_dpsgd.py (MLP 10-64-64-1, 1 thread, DP cost vs non-private):
#: batch 256 ghost 2.4–2.6× vs hooks 3.0–3.8×; batch 64 ghost 3–12 % faster
#: than hooks; batch 32 hooks 7–30 % faster than ghost. "functorch" is always
#: slowest; Opacus's "ew" (torch ExpandedWeights) fails on the empty batches
#: Poisson sampling can draw, so it is not offered.
AUTO_GHOST_MIN_BATCH = 64

SECURE_MODE_UNAVAILABLE = (
    "Secure mode is configured but torchcsprng (Opacus's cryptographically secure noise) "
    "is not installed; it has no release for current torch, so this host cannot run "
    "secure-mode jobs. Turn secure_mode off or install a torchcsprng built for this torch."
)


def _accountant(job: Job, ctx: TrainerContext) -> str:
    name = job.dp.accountant or ctx.accountant or "prv"
    if name not in ACCOUNTANTS:
        raise JobRejected(
            f"Accountant {name!r} is not supported by the opacus backend (use prv or rdp).",
            [f"dp.accountant: {name!r} not in {list(ACCOUNTANTS)}"],
        )
    return name


def _grad_sample_mode(ctx: TrainerContext, expected_batch_size: int) -> str:
    mode = ctx.grad_sample_mode or "hooks"
    if mode not in GRAD_SAMPLE_MODES:
        raise JobRejected(
            f"Grad-sample mode {mode!r} is not supported (use one of {', '.join(GRAD_SAMPLE_MODES)}).",
            [f"trainer.grad_sample_mode: {mode!r}"],
        )
    if mode == "auto":
        return "ghost" if expected_batch_size >= AUTO_GHOST_MIN_BATCH else "hooks"
    return mode


def check_secure_mode(ctx: TrainerContext) -> None:
    """Refuse (before anything runs) when secure mode is on but torchcsprng is missing."""
    if not ctx.secure_mode:
        return
    try:
        import torchcsprng  # noqa: F401
    except Exception as exc:
        raise JobRejected(SECURE_MODE_UNAVAILABLE, [f"torchcsprng: {type(exc).__name__}: {exc}"]) from None


def check_ready(job: Job, plan: PrivacyPlan, ctx: TrainerContext) -> DatasetInfo:
    """What must still hold when training starts (shared with the syft backend)."""
    info = ctx.dataset(job)
    check_secure_mode(ctx)
    if plan.details.get("digest") not in (None, info.digest):
        raise JobFailed(f"Dataset {info.name!r} changed between planning and training.")
    return info


class OpacusTrainer:
    """DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise."""

    name = "opacus"
    isolated = True

    @staticmethod
    def available() -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))

    # ------------------------------------------------------------------ plan

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        from . import privacy

        info = ctx.dataset(job)  # description only; no data is read
        dp = job.dp
        if not dp.enabled:
            raise JobRejected("The opacus backend only runs jobs with differential privacy enabled.")
        accountant = _accountant(job, ctx)
        check_secure_mode(ctx)
        if ctx.fast_path not in ("auto", "off"):
            raise JobRejected(
                f"Fast-path setting {ctx.fast_path!r} is not supported (use auto or off).",
                [f"trainer.fast_path: {ctx.fast_path!r}"],
            )
        try:
            arch = models.architecture(
                model_type=job.model.type,
                hidden=list(job.model.hidden),
                n_features=info.n_features,
                task=info.task,
                n_classes=info.n_classes,
            )
        except ValueError as exc:
            raise JobRejected(f"The job's model cannot be built: {exc}.", [f"model: {exc}"]) from None

        n = info.n_train
        if n < 1:
            raise JobRejected(f"Dataset {info.name!r} has no training rows.")
        if not dp.delta < 1 / n:
            raise JobRejected(
                f"δ = {dp.delta:g} is not below 1/n = {1 / n:.3g} for the {n} training rows of "
                f"{info.name!r}; such a δ allows releasing a row outright.",
                [f"dp.delta: {dp.delta} >= 1/n_train = 1/{n}"],
            )
        sched = privacy.poisson_schedule(n, job.batch_size, job.epochs)
        q, steps = sched["sample_rate"], sched["steps"]
        mode = _grad_sample_mode(ctx, sched["expected_batch_size"])
        if steps > ctx.max_steps:
            raise JobRejected(
                f"The job needs {steps} DP-SGD steps ({job.epochs} epochs × "
                f"{sched['steps_per_epoch']}), more than this host's limit of {ctx.max_steps}.",
                [f"steps: {steps} > max_steps {ctx.max_steps}"],
            )

        details: dict[str, Any] = {
            "dataset": info.name,
            "digest": info.digest,
            "task": info.task,
            "n_classes": info.n_classes,
            "n_features": info.n_features,
            "architecture": arch,
            "grad_sample_mode": mode,
            "secure_mode": bool(ctx.secure_mode),
            "requested_epsilon": dp.epsilon,
            "steps_per_epoch": sched["steps_per_epoch"],
            "expected_batch_size": sched["expected_batch_size"],
            "schedule": (
                "steps_per_epoch = int(1/(1/ceil(n_train/batch_size))) (Opacus's Poisson loader), "
                "sample_rate = 1/steps_per_epoch, steps = epochs * steps_per_epoch"
            ),
        }
        try:
            if dp.noise_multiplier is not None:
                sigma = float(dp.noise_multiplier)
                eps, accountant, eps_error = self._epsilon_for(accountant, sigma, q, steps, dp.delta, details)
                details["calibrated"] = False
                if eps > dp.epsilon:
                    raise JobRejected(
                        f"The job's noise multiplier σ = {sigma:g} gives ε = {eps:.4g} "
                        f"({accountant} accountant, δ = {dp.delta:g}, q = {q:.4g}, {steps} steps), "
                        f"above its requested ε = {dp.epsilon:g}.",
                        [f"dp.noise_multiplier: ε({sigma:g}) = {eps:.6g} > dp.epsilon = {dp.epsilon:g}"],
                    )
            else:
                sigma, eps, accountant, eps_error = self._calibrate(
                    accountant, dp.epsilon, dp.delta, q, steps, details
                )
                details["calibrated"] = True
        except privacy.AccountingError as exc:
            raise JobRejected(
                f"The privacy cost of the job cannot be computed: {exc}.", [str(exc)]
            ) from None
        if eps_error is not None:
            details["prv_eps_error"] = eps_error
        plan = PrivacyPlan(
            epsilon=float(eps),
            delta=float(dp.delta),
            noise_multiplier=float(sigma),
            sample_rate=float(q),
            steps=int(steps),
            accountant=accountant,
            n_train=int(n),
            rdp=privacy.rdp_curve(sigma, q, steps),
            details=details,
        )
        plan.check()
        return plan

    @staticmethod
    def _epsilon_for(
        accountant: str, sigma: float, q: float, steps: int, delta: float, details: dict[str, Any]
    ) -> tuple[float, str, float | None]:
        from . import privacy

        history = [(sigma, q, steps)]
        eps_rdp = privacy.epsilon("rdp", history, delta)
        if accountant == "rdp":
            return eps_rdp, "rdp", None
        err = privacy.prv_eps_error(eps_rdp)
        try:
            return privacy.epsilon("prv", history, delta, eps_error=err), "prv", err
        except privacy.AccountingError as exc:
            # PRV's discretisation can fail numerically (large ε); RDP is a valid bound too.
            details["accountant_fallback"] = f"prv failed, using rdp: {exc}"
            return eps_rdp, "rdp", None

    @staticmethod
    def _calibrate(
        accountant: str, target: float, delta: float, q: float, steps: int, details: dict[str, Any]
    ) -> tuple[float, float, str, float | None]:
        from . import privacy

        try:
            r = privacy.calibrate(accountant, target, delta, q, steps)
        except privacy.AccountingError:
            if accountant != "prv":
                raise
            r = privacy.calibrate("rdp", target, delta, q, steps)
            details["accountant_fallback"] = "prv failed during calibration, using rdp"
            accountant = "rdp"
        details["calibration_seconds"] = round(r["seconds"], 3)
        return r["noise_multiplier"], r["epsilon"], accountant, r.get("eps_error")

    # ------------------------------------------------------------------ train

    def train(
        self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress
    ) -> TrainResult:
        from pandacead import datasets

        from .training import train_arrays

        info = check_ready(job, plan, ctx)
        base_dir = ctx.options.get("home") or "."
        X_train, y_train, X_test, y_test = datasets.load(info, base_dir)
        arrays = {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
        result = train_arrays(
            job.to_dict(),
            plan.to_dict(),
            arrays,
            threads=ctx.torch_threads,
            progress=progress,
            grad_sample_mode=plan.details.get("grad_sample_mode"),
            secure_mode=ctx.secure_mode,
            noise_seed=ctx.options.get("noise_seed"),
            fast_path=ctx.fast_path,
        )
        result["provenance"]["backend"] = "opacus"
        return TrainResult(**result)
