"""DP-SGD training on arrays — the one implementation both the opacus and the syft backends run.

`train_arrays(job, plan, arrays, threads, progress)` takes JSON-friendly
inputs (a job's and a plan's ``to_dict()``, numpy arrays) and returns the
fields of a `pandacead.trainers.TrainResult` as a dict (``model`` as
safetensors bytes), so it can run inside a syft function as well as in
pandacead's worker process.

Randomness: ``job["seed"]`` (chosen by the buyer, public) seeds only the
initial weights. Poisson sampling and DP noise come from generators seeded
by ``noise_seed`` — the host's secret per-job seed (pandacead passes
``ctx.options["noise_seed"]``) — or, without one, from fresh OS entropy. A
buyer who could predict the noise could subtract it.

What it does, in order: seed the model's initialisation from
``job["seed"]``; build the model (linear or MLP, checked by Opacus's ModuleValidator); wrap model,
SGD optimizer and ``DataLoader(batch_size=B)`` with Opacus's
``PrivacyEngine.make_private(poisson_sampling=True, max_grad_norm=dp.clip,
noise_multiplier=plan σ)``, using the plan's accountant; run
``plan["steps"]`` optimizer steps (epochs × steps_per_epoch, each epoch one
pass over the Poisson loader); check that the accountant's history is
exactly the plan's ``[(σ, q, steps)]`` and that its final ε does not exceed
the plan's; evaluate on the held-out arrays.
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from pandacead.errors import Diverged, JobFailed

from . import fastpath, models, privacy, sampling

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")
DEFAULT_GRAD_SAMPLE_MODE = "hooks"
#: Relative slack when comparing the final ε with the plan's (both come from
#: the same deterministic accountant call, so they are normally identical).
EPS_REL_TOL = 1e-9
#: Share of training time the per-epoch ε in progress reports may cost.
PROGRESS_ACCOUNTING_SHARE = 0.1
#: Known, harmless warnings: secure RNG off is the configured choice (see
#: `trainer.check_secure_mode`); the backward-hook note concerns inputs that
#: need no gradient.
_NOISY_WARNINGS = (r"Secure RNG turned off", r"Full backward hook is firing")


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    random.seed(int(seed))


def _derived_seed(secret: int, purpose: str) -> int:
    digest = hashlib.sha256(f"pandacead-opacus\0{secret}\0{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def secret_generators(noise_seed: int | None, device: str = "cpu") -> tuple[Any, Any, str]:
    """(Poisson-sampling generator, noise generator, source) from the secret seed.

    Without a seed, both come from OS entropy (not reproducible, still secret).
    Torch's global RNG is reseeded from the same secret, so nothing after the
    model's initialisation draws from a stream the buyer's ``job.seed`` fixes.
    The noise generator lives on `device` (Opacus draws the noise where the
    gradients are: a CUDA generator for a CUDA model); Poisson sampling picks
    row indices on the CPU, so its generator stays there. The seeds do not
    depend on the device.
    """
    import torch

    source = "secret per-job seed"
    if noise_seed is None:
        noise_seed, source = secrets.randbits(63), "os entropy"
    sampling = torch.Generator().manual_seed(_derived_seed(int(noise_seed), "poisson"))
    noise = torch.Generator(device=device).manual_seed(_derived_seed(int(noise_seed), "noise"))
    torch.manual_seed(_derived_seed(int(noise_seed), "global"))  # also seeds every CUDA device
    return sampling, noise, source


def physical_batches(loader: Any, optimizer: Any, max_physical_batch_size: int) -> Any:
    """The loader's batches, split by Opacus's BatchMemoryManager when `max_physical_batch_size` > 0.

    A logical (Poisson) batch larger than the device holds is processed in
    physical pieces; the optimizer skips its step (no noise, no accounting)
    until the logical batch's last piece, so privacy is unchanged.
    """
    if not max_physical_batch_size:
        yield from loader
        return
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    with BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=int(max_physical_batch_size), optimizer=optimizer
    ) as memory_safe_loader:
        yield from memory_safe_loader


def _criterion(head: str) -> Any:
    from torch import nn

    if head == "binary_logit":
        return nn.BCEWithLogitsLoss()
    if head == "softmax_logits":
        return nn.CrossEntropyLoss()
    return nn.MSELoss()


def _shape(head: str, out: Any) -> Any:
    # Per-sample losses must have shape (B,) (ghost clipping needs it; BCE/MSE need it to match y).
    return out.reshape(-1) if head in ("binary_logit", "identity") else out


def _targets(head: str, y: np.ndarray) -> Any:
    import torch

    if head == "softmax_logits":
        return torch.as_tensor(np.asarray(y, dtype=np.int64))
    return torch.as_tensor(np.asarray(y, dtype=np.float32))


def evaluate(model: Any, arch: dict[str, Any], X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Held-out metrics: accuracy (classification) or mse and r2 (regression)."""
    if len(X) == 0:
        return {"n_test": 0}

    def finite(v: float | None) -> float | None:
        return v if v is not None and math.isfinite(v) else None

    pred = models.predict(model, arch, X)
    if arch["task"] == "classification":
        acc = float(np.mean(pred == np.asarray(y, dtype=np.int64)))
        return {"accuracy": acc, "n_test": int(len(y))}
    y64 = np.asarray(y, dtype=np.float64)
    p64 = pred.astype(np.float64)
    mse = float(np.mean((p64 - y64) ** 2))
    ss_tot = float(np.sum((y64 - y64.mean()) ** 2))
    r2 = float(1.0 - np.sum((p64 - y64) ** 2) / ss_tot) if ss_tot > 0 else None
    return {"mse": finite(mse), "r2": finite(r2), "n_test": int(len(y))}


def _finite_model(model: Any) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def guard_per_sample_gradients(optimizer: Any, module: Any, mode: str) -> None:
    """Zero every per-sample gradient that is not finite, before clipping.

    A row whose loss overflows has an inf/NaN gradient; Opacus's clip factor
    C/(‖g‖+1e-6) turns it into NaN and the whole noisy sum into NaN — a
    deterministic, non-private signal that such a row was sampled. A zero
    gradient has norm 0 ≤ C, so zeroing keeps the Gaussian mechanism exact.
    hooks/functorch: per-sample gradients are materialised and zeroed row by
    row. ghost: only per-sample norms exist; a non-finite norm gets clip
    coefficient 0 (docs/privacy.md notes the remaining limit of ghost mode).
    """
    import torch

    if mode == "ghost":
        get_coef = getattr(module, "get_clipping_coef", None)
        if get_coef is None:
            return

        def safe_coef() -> Any:
            coef = get_coef()
            return torch.where(torch.isfinite(coef), coef, torch.zeros_like(coef))

        module.get_clipping_coef = safe_coef
        return
    original = optimizer.clip_and_accumulate

    def clip_and_accumulate() -> Any:
        samples = [optimizer._get_flat_grad_sample(p) for p in optimizer.params]
        if samples and len(samples[0]):
            ok = torch.ones(len(samples[0]), dtype=torch.bool, device=samples[0].device)
            for g in samples:
                ok &= torch.isfinite(g.reshape(len(g), -1)).all(dim=1)
            if not bool(ok.all()):
                for g in samples:
                    g[~ok] = 0.0
        return original()

    optimizer.clip_and_accumulate = clip_and_accumulate


def job_architecture(job: dict[str, Any], details: dict[str, Any], n_features: int) -> dict[str, Any]:
    m = job.get("model") or {}
    return models.architecture(
        model_type=m.get("type", "linear"),
        hidden=list(m.get("hidden") or []),
        n_features=n_features,
        task=details.get("task", job.get("task", "classification")),
        n_classes=details.get("n_classes"),
        input_shape=details.get("input_shape"),
        channels=list(m.get("channels") or []),
        kernel=int(m.get("kernel", 3)),
    )


def _validated_model(arch: dict[str, Any]) -> Any:
    from opacus.validators import ModuleValidator

    model = models.build_model(arch)
    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
        ModuleValidator.validate(model, strict=True)
    return model


def _versions() -> dict[str, str]:
    import opacus
    import safetensors
    import torch

    return {
        "torch_version": str(torch.__version__),
        "opacus_version": str(opacus.__version__),
        "numpy_version": str(np.__version__),
        "safetensors_version": str(getattr(safetensors, "__version__", "unknown")),
    }


def train_arrays(
    job: dict[str, Any],
    plan: dict[str, Any],
    arrays: dict[str, np.ndarray],
    threads: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    grad_sample_mode: str | None = None,
    secure_mode: bool = False,
    noise_seed: int | None = None,
    checkpoint_dir: str | None = None,
    device: str = "cpu",
    world_size: int = 1,
    max_physical_batch_size: int = 0,
    cuda_memory_fraction: float = 0.9,
    fast_path: str = "off",
) -> dict[str, Any]:
    """Train `job` with DP-SGD under `plan` on `arrays` (X_train, y_train, X_test, y_test).

    With `checkpoint_dir` (the host's state directory) and a secret
    `noise_seed`, the run saves a checkpoint after every epoch and resumes
    from the last one it finds for the same job, plan and seed, with the same
    result as an uninterrupted run (`pandacead_opacus.checkpoint`).

    `noise_seed` is the secret seed of Poisson sampling and noise (see the
    module docstring); never derive it from anything the buyer knows.
    `device` is a resolved torch device ("cpu", "cuda:0"); `world_size` > 1
    runs one job on that many processes (`pandacead_opacus.distributed`).

    `fast_path` "auto" trains Linear/ReLU models with the book-keeping
    DP-SGD of `pandacead_opacus.fastpath` (same mechanism, same accountant);
    "off" (the default here) always runs Opacus's DPOptimizer.

    Returns {"model": safetensors bytes, "epsilon", "delta", "n", "accuracy",
    "metrics", "training_params", "provenance"} — the fields of a TrainResult.
    Raises JobFailed if the run does not match the plan (rows, schedule) or
    spends more ε than planned.
    """
    if int(world_size or 1) > 1:
        from .distributed import train_distributed

        return train_distributed(
            job, plan, arrays, threads, progress, grad_sample_mode=grad_sample_mode, secure_mode=secure_mode,
            noise_seed=noise_seed, world_size=int(world_size), device=device,
            max_physical_batch_size=max_physical_batch_size, cuda_memory_fraction=cuda_memory_fraction,
        )
    with warnings.catch_warnings():
        for pattern in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        return _train_arrays(
            job,
            plan,
            arrays,
            threads,
            progress,
            grad_sample_mode=grad_sample_mode,
            secure_mode=secure_mode,
            noise_seed=noise_seed,
            checkpoint_dir=checkpoint_dir,
            device=device,
            max_physical_batch_size=max_physical_batch_size,
            fast_path=fast_path,
        )


def _train_arrays(
    job: dict[str, Any],
    plan: dict[str, Any],
    arrays: dict[str, np.ndarray],
    threads: int,
    progress: Callable[[dict[str, Any]], None] | None,
    *,
    grad_sample_mode: str | None,
    secure_mode: bool,
    noise_seed: int | None,
    checkpoint_dir: str | None = None,
    device: str = "cpu",
    max_physical_batch_size: int = 0,
    fast_path: str = "off",
) -> dict[str, Any]:
    import torch
    from opacus import PrivacyEngine

    t_start = time.monotonic()
    progress = progress or (lambda _event: None)
    details = dict(plan.get("details") or {})
    mode = grad_sample_mode or details.get("grad_sample_mode") or DEFAULT_GRAD_SAMPLE_MODE
    if mode not in GRAD_SAMPLE_MODES:
        raise JobFailed(f"Unknown grad-sample mode {mode!r} (expected one of {', '.join(GRAD_SAMPLE_MODES)}).")
    torch.set_num_threads(max(1, int(threads or 1)))

    X_train = np.ascontiguousarray(arrays["X_train"], dtype=np.float32)
    X_test = np.ascontiguousarray(arrays["X_test"], dtype=np.float32)
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    n_rows = int(len(X_train))  # the true count: private, used for nothing the buyer sees
    if X_train.ndim != 2 or len(y_train) != n_rows or n_rows < 1:
        raise JobFailed("The training arrays have inconsistent shapes.")
    # Under add/remove neighbours the true n is private: the schedule, the sample rate
    # and the normaliser of the noisy sum all come from the plan's PUBLIC count.
    n = int(plan["n_train"])

    dp = job["dp"]
    epochs = int(job["epochs"])
    batch_size = int(job["batch_size"])
    sigma = float(plan["noise_multiplier"])
    q = float(plan["sample_rate"])
    steps_planned = int(plan["steps"])
    accountant = str(plan["accountant"])
    delta = float(plan["delta"])
    eps_error = float(details.get("prv_eps_error") or privacy.PRV_EPS_ERROR)
    schedule = privacy.poisson_schedule(n, batch_size, epochs)
    if schedule["sample_rate"] != q or schedule["steps"] != steps_planned:
        raise JobFailed(
            "The training schedule does not match the plan.",
            [f"schedule {schedule} vs plan q={q}, steps={steps_planned}"],
        )

    seed_everything(int(job["seed"]))
    arch = job_architecture(job, details, X_train.shape[1])
    if details.get("architecture") not in (None, arch):
        raise JobFailed(
            "The model for the training data differs from the planned one.",
            [f"architecture {arch} != planned {details.get('architecture')}"],
        )
    model = _validated_model(arch).to(device)  # initial weights: from job["seed"] (public)
    on_cpu = torch.device(device).type == "cpu"
    # Everything after this point that is random is secret.
    if secure_mode:  # Opacus draws sampling and noise from torchcsprng
        sampling_gen, noise_gen, noise_source = None, None, "torchcsprng (secure mode)"
        secret_generators(None)
    else:
        sampling_gen, noise_gen, noise_source = secret_generators(noise_seed, device)
    head = arch["head"]
    criterion = _criterion(head)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(job["learning_rate"]))
    X_t, y_t = torch.from_numpy(X_train), _targets(head, y_train)
    # make_private would take the mean's denominator as int(len(dataset) * q): the private n.
    # Dividing a DP sum by a data-dependent number is not post-processing; both paths use the
    # public one, q × the public row count.
    expected_batch_size = int(schedule["expected_batch_size"])
    if fast_path not in fastpath.FAST_PATH_SETTINGS:
        raise JobFailed(f"Unknown fast-path setting {fast_path!r} (expected auto or off).")
    engine = PrivacyEngine(accountant=accountant, secure_mode=bool(secure_mode))
    fast = None
    dp_optimizer: Any = None
    if (fast_path == "auto" and not secure_mode and on_cpu and not max_physical_batch_size
            and fastpath.applies(model)):
        fast = fastpath.BookkeepingDPSGD(
            model, head, max_grad_norm=float(dp["clip"]), noise_multiplier=sigma,
            expected_batch_size=expected_batch_size, learning_rate=float(job["learning_rate"]),
            noise_generator=noise_gen,
        )
        dp_model, dp_loader = model, None
    else:
        dp_model, dp_optimizer, dp_criterion, dp_loader = _opacus_private(
            engine, model, optimizer, criterion, X_t, y_t, float(schedule["poisson_rate"]), sigma,
            float(dp["clip"]), mode, sampling_gen, noise_gen, schedule["steps_per_epoch"],
        )
        dp_optimizer.expected_batch_size = expected_batch_size  # one normaliser for both paths
        guard_per_sample_gradients(dp_optimizer, dp_model, mode)
    if not secure_mode and not max_physical_batch_size:
        dp_loader = None  # Poisson batches by direct indexing, from the same generator Opacus would use

    def batches() -> Any:
        if dp_loader is not None:  # secure mode (torchcsprng) or BatchMemoryManager: Opacus's loader
            yield from physical_batches(dp_loader, dp_optimizer, max_physical_batch_size)
            return
        # Over the true rows (each one in the batch with the public rate q). Opacus's loader
        # draws one int64 from the generator when an epoch's iterator starts (DataLoader's base
        # seed) before the sampler's masks: drawn here too, so both paths (and a BatchMemoryManager
        # run, which keeps the loader) see the very same batches.
        if sampling_gen is not None:
            torch.empty((), dtype=torch.int64).random_(generator=sampling_gen)
        for idx in sampling.poisson_batches(n_rows, schedule["poisson_rate"], schedule["steps_per_epoch"], sampling_gen):
            yield X_t[idx], y_t[idx]

    planned_eps = float(plan["epsilon"])
    rdp_progress = privacy.RdpProgress(sigma, q, delta)
    steps = 0
    acct_seconds = 0.0
    eps_so_far = 0.0
    reported = 0.0  # the largest ε reported so far: progress never goes down
    diverged = False
    first_epoch, losses, ckpt = 1, [], None
    if checkpoint_dir and noise_seed is not None and sampling_gen is not None and noise_gen is not None:
        from .checkpoint import Checkpoint

        ckpt = Checkpoint(checkpoint_dir, job, plan, int(noise_seed))
        gens = {"sampling": sampling_gen, "noise": noise_gen}
        saved = ckpt.restore(model=model, optimizer=optimizer, accountant=engine.accountant, generators=gens)
        if saved is not None and saved["steps"] == saved["epoch"] * schedule["steps_per_epoch"]:
            first_epoch, steps, losses = saved["epoch"] + 1, saved["steps"], list(saved.get("losses") or [])
            progress({"stage": f"resumed from its checkpoint after epoch {saved['epoch']} of {epochs}",
                      "resumed_epoch": saved["epoch"]})
    t_train = time.monotonic()
    for epoch in range(first_epoch, epochs + 1):
        dp_model.train()
        loss_sum, loss_n = 0.0, 0
        for xb, yb in batches():
            if not on_cpu:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if fast is not None:
                value = float(fast.step(xb, yb))
                engine.accountant.step(noise_multiplier=sigma, sample_rate=q)
                steps += 1
                if not _finite_model(model):  # post-processing of the DP updates, as below
                    diverged = True
                    break
                if math.isfinite(value):
                    loss_sum += value
                    loss_n += len(xb)
                continue
            dp_optimizer.zero_grad(set_to_none=True)
            out = _shape(head, dp_model(xb))
            loss = dp_criterion(out, yb)
            loss.backward()
            dp_optimizer.step()
            if not getattr(dp_optimizer, "_is_last_step_skipped", False):  # BatchMemoryManager's pieces
                steps += 1
            # Divergence is decided on the model alone — post-processing of the DP
            # updates — so stopping (and saying so) costs no privacy beyond the job's ε.
            if not _finite_model(model):
                diverged = True
                break
            value = float(loss.item()) if len(xb) else math.nan
            if math.isfinite(value):  # the (non-DP) loss is for the admin's log only
                loss_sum += value * len(xb)
                loss_n += len(xb)
        if diverged:
            break
        losses.append((loss_sum / loss_n) if loss_n else None)
        if ckpt is not None and epoch < epochs:  # before reporting: a stop from here on resumes after this epoch
            ckpt.save(epoch=epoch, steps=steps, model=model, optimizer=optimizer, accountant=engine.accountant,
                      generators=gens, losses=losses)
        # ε so far: the job's accountant on the full history at the last epoch
        # and whenever that is cheap; otherwise the smaller of two valid upper
        # bounds (RDP at these steps, the plan's final ε), flagged not exact.
        elapsed = time.monotonic() - t_train
        exact = True
        if accountant == "rdp" and epoch < epochs:
            eps_so_far = rdp_progress.epsilon(steps)  # equals the RDP accountant's value
        elif epoch == epochs or acct_seconds <= PROGRESS_ACCOUNTING_SHARE * elapsed:
            t0 = time.monotonic()
            eps_so_far = privacy.epsilon(
                accountant, engine.accountant.history, delta, eps_error=eps_error
            )
            acct_seconds += time.monotonic() - t0
        else:
            eps_so_far = min(rdp_progress.epsilon(steps), planned_eps)
            exact = False
        # Monotone: an exact value below an earlier upper bound is reported as that bound
        # (still an upper bound: ε only grows with steps), labelled as such.
        if eps_so_far < reported:
            exact = False
        reported = max(reported, eps_so_far)
        progress(
            {
                "epoch": epoch,
                "epochs": epochs,
                "loss": (loss_sum / loss_n) if loss_n else None,
                "epsilon": reported,
                "epsilon_exact": exact,
                "epsilon_kind": "exact" if exact else "upper_bound",
                "steps": steps,
            }
        )
    train_seconds = time.monotonic() - t_train
    if ckpt is not None:
        ckpt.discard()  # the run is complete (or diverged): nothing to resume
    if diverged:
        raise Diverged(
            "Training diverged: the DP model's parameters became non-finite, so it was stopped.",
            [f"diverged at step {steps} of {steps_planned} (learning rate {job['learning_rate']})"],
        )

    history = [tuple(h) for h in engine.accountant.history]
    if steps != steps_planned or history != [(sigma, q, steps_planned)]:
        raise JobFailed(
            "The accountant's record differs from the plan.",
            [f"history {history} != planned {[(sigma, q, steps_planned)]}"],
        )
    final_eps = eps_so_far  # the accountant's ε on the full history (last epoch)
    if not (math.isfinite(final_eps) and final_eps <= planned_eps * (1 + EPS_REL_TOL)):
        raise JobFailed(
            f"Training spent ε = {final_eps:.6g}, more than the planned ε = {planned_eps:.6g}.",
            [f"epsilon: {final_eps} > planned {planned_eps}"],
        )

    model = model.to("cpu")  # evaluation and safetensors work on CPU tensors
    # Exact held-out metrics are not DP: computed (and released) only for data the earner
    # declared public; for private data they are neither computed nor released.
    metrics = evaluate(model, arch, X_test, y_test) if details.get("public_data") else {}
    metrics["diverged"] = False  # a diverged run raised Diverged above
    if details.get("public_data"):
        metrics["train_seconds"] = round(train_seconds, 3)
    model_bytes = models.save_model(
        model,
        arch,
        extra={
            "pandacead.dataset": str(details.get("dataset", "")),
            "pandacead.dataset_version": str(details.get("dataset_version", "")),
        },
    )
    training_params = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": float(job["learning_rate"]),
        "optimizer": "sgd",
        "loss": type(criterion).__name__,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "steps_per_epoch": schedule["steps_per_epoch"],
        "expected_batch_size": schedule["expected_batch_size"],
        "poisson_sampling": True,
        "accountant": accountant,
        "clip": float(dp["clip"]),
        "architecture": arch,
        "grad_sample_mode": mode,
        "fast_path": "bookkeeping" if fast is not None else None,
        "secure_mode": bool(secure_mode),
        "noise_source": noise_source,
        "device": str(device),
    }
    if max_physical_batch_size:
        training_params["max_physical_batch_size"] = int(max_physical_batch_size)
    if accountant == "prv":
        training_params["prv_eps_error"] = eps_error
    provenance = {
        "dataset": details.get("dataset"),
        "dataset_version": details.get("dataset_version"),
        **_versions(),
        "threads": int(torch.get_num_threads()),
        "wall_seconds": round(time.monotonic() - t_start, 3),
    }
    return {
        "model": model_bytes,
        "epsilon": float(final_eps),
        "delta": delta,
        "n": n,
        "accuracy": metrics.get("accuracy"),
        "metrics": metrics,
        "training_params": training_params,
        "provenance": provenance,
    }


def _opacus_private(
    engine: Any, model: Any, optimizer: Any, criterion: Any, X_t: Any, y_t: Any, poisson_rate: float,
    sigma: float, clip: float, mode: str, sampling_gen: Any, noise_gen: Any, steps_per_epoch: int,
) -> tuple[Any, Any, Any, Any]:
    """Opacus's make_private: (model, DPOptimizer, criterion, Poisson loader), checked against the plan.

    The loader samples at the PUBLIC rate 1/ceil(n_public/B) (Opacus's from_data_loader
    would derive it from the private len(dataset)); make_private then records
    q = 1/len(loader) = 1/steps_per_epoch, as planned.
    """
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import TensorDataset

    loader = DPDataLoader(TensorDataset(X_t, y_t), sample_rate=float(poisson_rate), generator=sampling_gen)
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        poisson_sampling=False,  # the loader above already samples (at the public rate)
        grad_sample_mode=mode,
        noise_generator=noise_gen,
    )
    if mode == "ghost":
        dp_model, dp_optimizer, dp_criterion, dp_loader = private
    else:
        dp_model, dp_optimizer, dp_loader = private
        dp_criterion = criterion
    if len(dp_loader) != steps_per_epoch:
        raise JobFailed(
            "Opacus's Poisson loader has a different number of batches per epoch than planned.",
            [f"len(loader) = {len(dp_loader)} != {steps_per_epoch}"],
        )
    return dp_model, dp_optimizer, dp_criterion, dp_loader


def train_nonprivate_arrays(
    job: dict[str, Any],
    plan: dict[str, Any],
    arrays: dict[str, np.ndarray],
    threads: int = 1,
) -> dict[str, Any]:
    """Reference only (tests, benchmarks): the same model, seed and SGD without DP.

    Never used by a trainer. Same epochs and batches per epoch, shuffled
    fixed-size batches, no clipping, no noise. Returns {"model", "metrics"}.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(max(1, int(threads or 1)))
    details = dict(plan.get("details") or {})
    X_train = np.ascontiguousarray(arrays["X_train"], dtype=np.float32)
    seed_everything(int(job["seed"]))
    arch = job_architecture(job, details, X_train.shape[1])
    model = _validated_model(arch)
    head = arch["head"]
    criterion = _criterion(head)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(job["learning_rate"]))
    loader = DataLoader(
        TensorDataset(torch.from_numpy(X_train), _targets(head, arrays["y_train"])),
        batch_size=int(job["batch_size"]),
        shuffle=True,
    )
    for _ in range(int(job["epochs"])):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(_shape(head, model(xb)), yb)
            loss.backward()
            optimizer.step()
    metrics = evaluate(model, arch, np.asarray(arrays["X_test"], np.float32), arrays["y_test"])
    return {"model": models.save_model(model, arch), "metrics": metrics}
