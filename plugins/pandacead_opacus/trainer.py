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
from pandacead.trainers import (
    DATA_LOADED,
    DatasetInfo,
    PrivacyPlan,
    Progress,
    TrainerContext,
    TrainResult,
)

from . import defaults, models
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


def _admit_memory(arch: dict[str, Any], expected_batch_size: float, mode: str, ctx: TrainerContext) -> dict[str, Any]:
    """Refuse a job whose estimated memory does not fit the device (from the architecture and the public schedule)."""
    from pandacead import devices

    dims = [int(arch.get("input_dim") or 0), *[int(h) for h in arch.get("hidden") or []], int(arch.get("output_dim") or 1)]
    n_params = sum((dims[i] + 1) * dims[i + 1] for i in range(len(dims) - 1))
    n_activations = sum(dims)
    batch = devices.physical_batch(expected_batch_size, ctx.world_size, ctx.max_physical_batch_size)
    need = devices.estimate_training_bytes(n_params, n_activations, batch, mode)
    # The device this host would train on; a Ray node's device is priced by [trainer] device_memory_mb.
    if ctx.device == "cpu" or (ctx.device == "auto" and not devices.cuda_present()):
        device = "cpu"
    elif ctx.memory.get("device_memory_mb"):
        device = ctx.device  # priced by the configured size, not by a device on this host
    else:
        try:
            device = devices.resolve_device(ctx.device)
        except JobFailed as exc:
            raise JobRejected(
                f"{exc.message} Set [trainer] device_memory_mb when the GPUs are on other nodes.", exc.details
            ) from None
    have = devices.available_bytes(ctx.memory, device)
    out = {"estimated_mb": round(need / 2**20, 1), "physical_batch": batch, "device": device,
           "available_mb": None if have is None else round(have / 2**20, 1)}
    if have is not None and need > have:
        raise JobRejected(
            f"The job needs about {need / 2**20:.0f} MB on {device} (model of {n_params} parameters × "
            f"physical batch {batch}, per-sample gradients), more than the {have / 2**20:.0f} MB this host "
            "allows; lower batch_size, set [trainer] max_physical_batch_size, or use a smaller model.",
            [f"memory: estimated {need} bytes > available {have}"],
        )
    return out


def check_secure_mode(ctx: TrainerContext) -> None:
    """Refuse (before anything runs) when secure mode is on but torchcsprng is missing."""
    if not ctx.secure_mode:
        return
    try:
        import torchcsprng  # noqa: F401
    except Exception as exc:
        raise JobRejected(SECURE_MODE_UNAVAILABLE, [f"torchcsprng: {type(exc).__name__}: {exc}"]) from None


def check_extractor(info: DatasetInfo, ctx: TrainerContext) -> None:
    """Refuse, before any data is read, a job whose dataset's extractor is not the pinned file."""
    from pandacead import extractors

    ext = (info.source.get("preprocessing") or {}).get("extractor")
    if not ext:
        return
    try:
        extractors.verify(ext, ctx.options.get("home") or ".")
    except extractors.ExtractorError as exc:
        raise JobRejected(
            f"Dataset {info.name!r}: its feature extractor is not the pinned file ({exc}).",
            [f"extractor: {exc}"],
        ) from None


def released_preprocessing(info: DatasetInfo) -> dict[str, Any] | None:
    """The public preprocessing a released model carries (the extractor's local path left out)."""
    pre = info.source.get("preprocessing")
    if not pre:
        return None
    pre = dict(pre)
    if pre.get("extractor"):
        pre["extractor"] = {k: v for k, v in pre["extractor"].items() if k != "path"}
    pre["classes"] = info.source.get("classes")
    return pre


def check_ready(job: Job, plan: PrivacyPlan, ctx: TrainerContext) -> DatasetInfo:
    """What must still hold when training starts (shared with the syft backend)."""
    info = ctx.dataset(job)
    check_secure_mode(ctx)
    if plan.details.get("dataset_version") not in (None, info.commitment):
        raise JobFailed(f"Dataset {info.name!r} changed between planning and training.")
    return info


#: Lower bounds of DP-SGD's cost on one CPU thread (bench/bench_dpsgd.py measures far
#: more): per optimizer step, and per (sample × parameter) of a step. The estimate is
#: optimistic on purpose: it refuses only jobs that cannot finish whatever the host.
MIN_SECONDS_PER_STEP = 1e-4
MIN_SECONDS_PER_SAMPLE_PARAM = 1e-9


def _parameter_count(arch: dict[str, Any]) -> int:
    """Weights of a dense architecture (input, hidden..., output); 1 when the layout is unknown."""
    dims = [arch.get("input_dim"), *(arch.get("hidden") or []), arch.get("output_dim")]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return 1
    return sum((a + 1) * b for a, b in zip(dims, dims[1:]))


def estimated_seconds(steps: int, expected_batch_size: int, n_params: int) -> float:
    """A lower bound of the training time: steps × (overhead + batch × model size × cost)."""
    return steps * (MIN_SECONDS_PER_STEP + max(1, expected_batch_size) * n_params * MIN_SECONDS_PER_SAMPLE_PARAM)


def check_runtime(job: Job, ctx: TrainerContext, steps: int, expected_batch_size: int, arch: dict[str, Any]) -> float:
    """'No free work': refuse, before calibrating σ, a job that cannot finish within the timeout."""
    est = estimated_seconds(steps, expected_batch_size, _parameter_count(arch))
    timeout = ctx.options.get("timeout_seconds")
    if isinstance(timeout, (int, float)) and timeout > 0 and est > float(timeout):
        raise JobRejected(
            f"Job {job.job_id} would train for at least {est:.0f} s ({steps} DP-SGD steps), more than this"
            f" host's {float(timeout):g}-s timeout; nothing was run or charged.",
            [f"runtime: estimated >= {est:.1f} s > timeout_seconds {float(timeout):g}"],
        )
    return est


class OpacusTrainer:
    """DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise."""

    name = "opacus"
    isolated = True
    private = True
    #: Runs a job's ``search`` block (private hyperparameter search, search.py).
    supports_search = True

    @staticmethod
    def available() -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))

    # ------------------------------------------------------------------ plan

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        if job.search:
            from . import search

            base = self._plan(job, ctx)

            def plan_config(cfg_job: Job, fit_fraction: float) -> PrivacyPlan:
                return self._plan(cfg_job, ctx, fit_fraction=fit_fraction, check_epsilon=False)

            return search.plan_search(job, ctx, base, plan_config)
        return self._plan(job, ctx)

    def _plan(
        self, job: Job, ctx: TrainerContext, *, fit_fraction: float = 1.0, check_epsilon: bool = True
    ) -> PrivacyPlan:
        """The plan of one DP-SGD run. `fit_fraction`: the share of the training rows it
        trains on (a search's candidates keep the rest for validation); `check_epsilon`
        False prices the run with the job's σ without refusing it (a search prices the
        whole search instead)."""
        from . import privacy

        info = ctx.dataset(job)  # description only; no data is read
        job, family_defaults = defaults.with_defaults(job, info)
        dp = job.dp
        if not dp.enabled:
            raise JobRejected("The opacus backend only runs jobs with differential privacy enabled.")
        accountant = _accountant(job, ctx)
        check_secure_mode(ctx)
        pre = info.source.get("preprocessing")
        input_shape = info.source.get("input_shape") if not (pre and pre.get("extractor")) else None
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
                input_shape=input_shape,
                channels=list(job.model.channels),
                kernel=job.model.kernel,
            )
        except ValueError as exc:
            raise JobRejected(f"The job's model cannot be built: {exc}.", [f"model: {exc}"]) from None
        if pre and pre.get("extractor"):
            check_extractor(info, ctx)

        # The PUBLIC count (true n for public data, the earner's declared rows otherwise):
        # under add/remove neighbours the true n is private and may shape nothing released.
        n = info.require_public_n_train()
        if fit_fraction < 1:  # a search candidate: the public share of the rows it fits on
            n = int(n * fit_fraction)
            if n < 1:
                raise JobRejected(f"Dataset {info.name!r} has too few public rows for a search.")
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

        est = check_runtime(job, ctx, steps, sched["expected_batch_size"], arch)
        memory = _admit_memory(arch, sched["expected_batch_size"], mode, ctx)
        details: dict[str, Any] = {
            "memory": memory,
            "dataset": info.name,
            "dataset_version": info.commitment,
            "public_data": bool(info.public),
            "n_source": "public" if info.public else "declared",
            "estimated_seconds_min": round(est, 3),
            "task": info.task,
            "n_classes": info.n_classes,
            "n_features": info.n_features,
            "architecture": arch,
            "input_shape": input_shape,
            "grad_sample_mode": mode,
            "secure_mode": bool(ctx.secure_mode),
            "requested_epsilon": dp.epsilon,
            "family_defaults": family_defaults,
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
                if eps > dp.epsilon and check_epsilon:
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
        if pre is not None:
            details["preprocessing"] = released_preprocessing(info)
            # Declared bounds cost nothing: no statistic of the data is read.
            details["preprocessing_epsilon"] = 0.0
            if info.source.get("notice"):
                details["notice"] = info.source["notice"]
        elif info.source.get("unbounded"):
            details["notice"] = info.source["unbounded"]
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
        job, _ = defaults.with_defaults(job, info)
        base_dir = ctx.options.get("home") or "."
        progress(dict(DATA_LOADED))  # from here on the job is charged whatever happens
        X_train, y_train, X_test, y_test = datasets.load(info, base_dir)
        arrays = {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
        from pandacead.devices import cap_cuda_memory, resolve_device

        device = resolve_device(ctx.device)
        fraction = float(ctx.memory.get("cuda_memory_fraction", 0.9))
        if ctx.world_size <= 1:  # rank processes cap their own device (pandacead_opacus.distributed)
            cap_cuda_memory(device, fraction)
        if plan.details.get("search"):
            from . import search

            def train_candidate(cand_job: dict[str, Any], cand_plan: dict[str, Any], fit: Any, seed: int) -> Any:
                return train_arrays(
                    cand_job, cand_plan, fit, threads=ctx.torch_threads, progress=None,
                    grad_sample_mode=cand_plan["details"].get("grad_sample_mode"),
                    secure_mode=ctx.secure_mode, noise_seed=seed, device=device,
                    max_physical_batch_size=ctx.max_physical_batch_size,
                    fast_path=ctx.fast_path,  # the same DP-SGD path a plain job of this shape takes
                )

            result = search.run_search(
                job, plan, arrays, noise_seed=ctx.options.get("noise_seed"),
                train_candidate=train_candidate, progress=progress,
            )
            result["provenance"]["backend"] = "opacus"
            attach_released_preprocessing(result, info, base_dir)  # candidates were scored on transformed rows
            return TrainResult(**result)
        result = train_arrays(
            job.to_dict(),
            plan.to_dict(),
            arrays,
            threads=ctx.torch_threads,
            progress=progress,
            grad_sample_mode=plan.details.get("grad_sample_mode"),
            secure_mode=ctx.secure_mode,
            noise_seed=ctx.options.get("noise_seed"),
            # The job's own account's state root (pipeline.job_state_dir): job ids are unique per account.
            checkpoint_dir=(ctx.options.get("job_state_dir") or ctx.state_dir) if ctx.options.get("checkpoints") else None,
            device=device,
            world_size=ctx.world_size,
            max_physical_batch_size=ctx.max_physical_batch_size,
            cuda_memory_fraction=fraction,
            fast_path=ctx.fast_path,
        )
        result["provenance"]["backend"] = "opacus"
        attach_released_preprocessing(result, info, base_dir)
        return TrainResult(**result)


def attach_released_preprocessing(result: dict[str, Any], info: DatasetInfo, base_dir: str) -> None:
    """Embed the dataset's public preprocessing (and extractor) into the released model."""
    from pandacead import extractors

    pre = released_preprocessing(info)
    if pre is None:
        return
    ext = (info.source.get("preprocessing") or {}).get("extractor")
    ext_bytes = extractors.read_bytes(ext, base_dir) if ext else None
    result["model"] = models.attach_preprocessing(result["model"], pre, ext_bytes)
    result["training_params"]["preprocessing"] = pre
    if ext:
        result["provenance"]["extractor_sha256"] = ext["sha256"]
