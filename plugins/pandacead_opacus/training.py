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

from pandacead.errors import JobFailed

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


def secret_generators(noise_seed: int | None) -> tuple[Any, Any, str]:
    """(Poisson-sampling generator, noise generator, source) from the secret seed.

    Without a seed, both come from OS entropy (not reproducible, still secret).
    Torch's global RNG is reseeded from the same secret, so nothing after the
    model's initialisation draws from a stream the buyer's ``job.seed`` fixes.
    """
    import torch

    source = "secret per-job seed"
    if noise_seed is None:
        noise_seed, source = secrets.randbits(63), "os entropy"
    sampling = torch.Generator().manual_seed(_derived_seed(int(noise_seed), "poisson"))
    noise = torch.Generator().manual_seed(_derived_seed(int(noise_seed), "noise"))
    torch.manual_seed(_derived_seed(int(noise_seed), "global"))
    return sampling, noise, source


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


def job_architecture(job: dict[str, Any], details: dict[str, Any], n_features: int) -> dict[str, Any]:
    m = job.get("model") or {}
    return models.architecture(
        model_type=m.get("type", "linear"),
        hidden=list(m.get("hidden") or []),
        n_features=n_features,
        task=details.get("task", job.get("task", "classification")),
        n_classes=details.get("n_classes"),
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
    fast_path: str = "off",
) -> dict[str, Any]:
    """Train `job` with DP-SGD under `plan` on `arrays` (X_train, y_train, X_test, y_test).

    `noise_seed` is the secret seed of Poisson sampling and noise (see the
    module docstring); never derive it from anything the buyer knows.

    `fast_path` "auto" trains Linear/ReLU models with the book-keeping
    DP-SGD of `pandacead_opacus.fastpath` (same mechanism, same accountant);
    "off" (the default here) always runs Opacus's DPOptimizer.

    Returns {"model": safetensors bytes, "epsilon", "delta", "n", "accuracy",
    "metrics", "training_params", "provenance"} — the fields of a TrainResult.
    Raises JobFailed if the run does not match the plan (rows, schedule) or
    spends more ε than planned.
    """
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
    n = int(len(X_train))
    if n != plan.get("n_train"):
        raise JobFailed(
            f"The training data has {n} rows but the job was planned for {plan.get('n_train')}.",
            [f"n_train: {n} != planned {plan.get('n_train')}"],
        )
    if X_train.ndim != 2 or len(y_train) != n:
        raise JobFailed("The training arrays have inconsistent shapes.")

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
    model = _validated_model(arch)  # initial weights: from job["seed"] (public)
    # Everything after this point that is random is secret.
    if secure_mode:  # Opacus draws sampling and noise from torchcsprng
        sampling_gen, noise_gen, noise_source = None, None, "torchcsprng (secure mode)"
        secret_generators(None)
    else:
        sampling_gen, noise_gen, noise_source = secret_generators(noise_seed)
    head = arch["head"]
    criterion = _criterion(head)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(job["learning_rate"]))
    X_t, y_t = torch.from_numpy(X_train), _targets(head, y_train)
    expected_batch_size = schedule["expected_batch_size"]  # public: q × rows, Opacus's normaliser
    if fast_path not in fastpath.FAST_PATH_SETTINGS:
        raise JobFailed(f"Unknown fast-path setting {fast_path!r} (expected auto or off).")
    engine = PrivacyEngine(accountant=accountant, secure_mode=bool(secure_mode))
    fast = None
    if fast_path == "auto" and not secure_mode and fastpath.applies(model):
        fast = fastpath.BookkeepingDPSGD(
            model, head, max_grad_norm=float(dp["clip"]), noise_multiplier=sigma,
            expected_batch_size=expected_batch_size, learning_rate=float(job["learning_rate"]),
            noise_generator=noise_gen,
        )
        dp_model, dp_loader = model, None
    else:
        dp_model, dp_optimizer, dp_criterion, dp_loader = _opacus_private(
            engine, model, optimizer, criterion, X_t, y_t, batch_size, sigma, float(dp["clip"]),
            mode, sampling_gen, noise_gen, schedule["steps_per_epoch"],
        )
        dp_optimizer.expected_batch_size = expected_batch_size  # one normaliser for both paths
    if not secure_mode:  # Poisson batches by direct indexing, from the same generator Opacus would use
        dp_loader = None

    def batches() -> Any:
        if dp_loader is not None:  # secure mode: Opacus's loader draws from torchcsprng
            yield from dp_loader
            return
        for idx in sampling.poisson_batches(n, schedule["poisson_rate"], schedule["steps_per_epoch"], sampling_gen):
            yield X_t[idx], y_t[idx]

    planned_eps = float(plan["epsilon"])
    rdp_progress = privacy.RdpProgress(sigma, q, delta)
    steps = 0
    acct_seconds = 0.0
    eps_so_far = 0.0
    t_train = time.monotonic()
    for epoch in range(1, epochs + 1):
        dp_model.train()
        loss_sum, loss_n = 0.0, 0
        for xb, yb in batches():
            if fast is not None:
                loss_sum += float(fast.step(xb, yb))
                engine.accountant.step(noise_multiplier=sigma, sample_rate=q)
                steps += 1
                loss_n += len(xb)
                continue
            dp_optimizer.zero_grad(set_to_none=True)
            out = _shape(head, dp_model(xb))
            loss = dp_criterion(out, yb)
            loss.backward()
            dp_optimizer.step()
            steps += 1
            if len(xb):
                loss_sum += float(loss.item()) * len(xb)
                loss_n += len(xb)
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
        progress(
            {
                "epoch": epoch,
                "epochs": epochs,
                "loss": (loss_sum / loss_n) if loss_n else None,
                "epsilon": eps_so_far,
                "epsilon_exact": exact,
                "steps": steps,
            }
        )
    train_seconds = time.monotonic() - t_train

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

    metrics = evaluate(model, arch, X_test, y_test)
    # A diverged run (too large a learning rate) still spent its ε on the
    # data: its model is released as it is, flagged, never turned into a
    # failure whose occurrence would itself depend on the data.
    metrics["diverged"] = not all(bool(torch.isfinite(p).all()) for p in model.parameters())
    metrics["train_seconds"] = round(train_seconds, 3)
    model_bytes = models.save_model(
        model,
        arch,
        extra={
            "pandacead.dataset": str(details.get("dataset", "")),
            "pandacead.dataset_digest": str(details.get("digest", "")),
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
    }
    if accountant == "prv":
        training_params["prv_eps_error"] = eps_error
    provenance = {
        "dataset": details.get("dataset"),
        "dataset_digest": details.get("digest"),
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
    engine: Any, model: Any, optimizer: Any, criterion: Any, X_t: Any, y_t: Any, batch_size: int,
    sigma: float, clip: float, mode: str, sampling_gen: Any, noise_gen: Any, steps_per_epoch: int,
) -> tuple[Any, Any, Any, Any]:
    """Opacus's make_private: (model, DPOptimizer, criterion, Poisson loader), checked against the plan."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(
        TensorDataset(X_t, y_t),
        batch_size=batch_size,
        generator=sampling_gen,  # DPDataLoader.from_data_loader samples with this generator
    )
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        poisson_sampling=True,
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
