"""One DP-SGD job on several processes (GPUs): Opacus DPDDP under torch.distributed.

`train_distributed` is what `training.train_arrays` runs when `[trainer]
world_size` is above 1. It starts `world_size` rank processes
(``python -m pandacead_opacus.distributed DIR RANK``) in the worker's own
process group, so a worker killed for its timeout or memory takes its ranks
with it. The ranks meet through a file store in a private temporary
directory (no port to choose or race for) and talk over gloo on CPU, NCCL on
CUDA (rank r on ``cuda:r``).

The privacy argument, one pitfall per line (docs/scale.md has the long form):

* **Sampling.** No `DistributedSampler` (fixed-size shards break the Poisson
  accounting). Opacus's distributed Poisson loader is used: each rank keeps
  each row of its shard independently with probability q, so the union of
  the ranks' batches is exactly one Poisson sample of the whole dataset at
  rate q — the single-process mechanism. The shard split is a public
  permutation; the secret is which rows each rank keeps.
* **Secret per rank.** Rank r draws its sampling from its own generator,
  seeded with HMAC(noise_seed, "poisson" ‖ r): no two ranks share a stream,
  and nothing is derived from the buyer's ``job.seed``.
* **Noise once.** `DistributedDPOptimizer` adds N(0, σ²C²) on rank 0 only,
  from rank 0's secret noise generator; the gradients are summed over ranks
  and divided by the global expected batch size (n·q, public: n is the
  planned row count), so the step is the single-process step.
* **Accountant on rank 0.** Every rank's accountant records the same
  (σ, q, steps); rank 0 checks it against the plan and computes the final ε.
  All ranks end with identical parameters; rank 0 checks that too before it
  releases the model.

Everything crossing the process boundary is JSON or ``.npy`` (loaded with
``allow_pickle=False``) in the private directory, removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pandacead.errors import Diverged, JobError, JobFailed

#: Seconds the ranks may take to meet and import torch before the job fails.
RENDEZVOUS_SECONDS = 300.0


def rank_seed(noise_seed: int, purpose: str, rank: int) -> int:
    """The secret seed of `purpose` ("poisson", "noise", "global") on `rank`: HMAC(noise_seed, purpose ‖ rank)."""
    mac = hmac.new(
        str(int(noise_seed)).encode(), f"pandacead-opacus-ddp\0{purpose}\0rank{int(rank)}".encode(), hashlib.sha256
    ).digest()
    return int.from_bytes(mac[:8], "big") >> 1


def train_distributed(
    job: dict[str, Any],
    plan: dict[str, Any],
    arrays: dict[str, np.ndarray],
    threads: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    grad_sample_mode: str | None,
    secure_mode: bool,
    noise_seed: int | None,
    world_size: int,
    device: str = "cpu",
    max_physical_batch_size: int = 0,
    cuda_memory_fraction: float = 0.9,
) -> dict[str, Any]:
    """Train on `world_size` rank processes; returns what `training.train_arrays` returns."""
    progress = progress or (lambda _event: None)
    world_size = int(world_size)
    if world_size < 2:
        raise JobFailed(f"A distributed job needs world_size >= 2, not {world_size}.")
    if device.startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        if have < world_size:
            raise JobFailed(
                f"[trainer] world_size = {world_size} on CUDA needs {world_size} GPUs; this host has {have}."
            )
    if noise_seed is None:  # still secret, not reproducible
        noise_seed = secrets.randbits(63)
    tmp = Path(tempfile.mkdtemp(prefix="pandacead-ddp-"))  # mode 0700: the arrays are private data
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.asarray(arr), allow_pickle=False)
        spec = {
            "job": job, "plan": plan, "threads": int(threads or 1), "grad_sample_mode": grad_sample_mode,
            "secure_mode": bool(secure_mode), "noise_seed": int(noise_seed), "world_size": world_size,
            "device": device, "arrays": sorted(arrays), "max_physical_batch_size": int(max_physical_batch_size or 0),
            "cuda_memory_fraction": float(cuda_memory_fraction),
        }
        (tmp / "spec.json").write_text(json.dumps(spec), "utf-8")
        env = dict(os.environ)
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks are on this host
        env["OMP_NUM_THREADS"] = str(int(threads or 1))
        replies: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        for rank in range(world_size):
            p = subprocess.Popen(
                [sys.executable, "-m", "pandacead_opacus.distributed", str(tmp), str(rank)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
            )
            procs.append(p)
            threading.Thread(target=_read_lines, args=(rank, p, replies), daemon=True).start()
        result: dict[str, Any] | None = None
        finished: set[int] = set()
        while len(finished) < world_size:
            rank, msg = replies.get()
            if msg is None:
                rc = procs[rank].wait()
                if rank not in finished:
                    raise JobFailed(
                        f"Rank {rank} of the distributed training exited unexpectedly (exit code {rc}).",
                        [f"rank {rank}: exit code {rc}"],
                    )
                continue
            kind = msg.get("type")
            if kind == "progress" and rank == 0:
                with contextlib.suppress(Exception):
                    progress({k: v for k, v in msg.items() if k != "type"})
            elif kind == "error":
                details = [f"rank {rank}"] + [str(d) for d in msg.get("details") or []]
                if msg.get("kind") == "diverged":
                    raise Diverged(str(msg.get("message")), details)
                raise JobFailed(str(msg.get("message")), details)
            elif kind == "done":
                finished.add(rank)
                if rank == 0:
                    result = msg["value"]
        for p in procs:
            p.wait(timeout=60)
        if result is None:
            raise JobFailed("The distributed training ended without a result from rank 0.")
        result["model"] = (tmp / "model.safetensors").read_bytes()
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(Exception):
                    p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _read_lines(rank: int, proc: subprocess.Popen[bytes], out: queue.Queue[tuple[int, dict[str, Any] | None]]) -> None:
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                out.put((rank, json.loads(line)))
    finally:
        out.put((rank, None))


# --------------------------------------------------------------------------- rank side


def _rank_main(tmp: Path, rank: int) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # library prints go to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg, allow_nan=False) + "\n")
        proto.flush()

    spec = json.loads((tmp / "spec.json").read_text("utf-8"))
    arrays = {name: np.load(tmp / f"{name}.npy", allow_pickle=False) for name in spec["arrays"]}
    import datetime

    import torch.distributed as dist

    from .training import _NOISY_WARNINGS

    world = int(spec["world_size"])
    backend = "nccl" if str(spec["device"]).startswith("cuda") else "gloo"
    dist.init_process_group(
        backend, init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=RENDEZVOUS_SECONDS),
    )
    try:
        with warnings.catch_warnings():
            for pattern in _NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            value = _rank_train(spec, arrays, rank, world, tmp, send)
        send({"type": "done", "value": value})
    except JobError as exc:
        send({"type": "error", "status": exc.status, "message": exc.message, "details": exc.details,
              "kind": getattr(exc, "kind", None)})
        return 1
    except Exception as exc:
        send({"type": "error", "status": "failed",
              "message": f"The distributed trainer failed on rank {rank}: {type(exc).__name__}: {exc}",
              "details": []})
        return 1
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    return 0


def _rank_train(
    spec: dict[str, Any], arrays: dict[str, np.ndarray], rank: int, world: int, tmp: Path,
    send: Callable[[dict[str, Any]], None],
) -> dict[str, Any] | None:
    import torch
    import torch.distributed as dist
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from torch.utils.data import TensorDataset

    from . import models, privacy
    from .training import (
        DEFAULT_GRAD_SAMPLE_MODE,
        EPS_REL_TOL,
        _criterion,
        _finite_model,
        _shape,
        _targets,
        _validated_model,
        _versions,
        evaluate,
        guard_per_sample_gradients,
        job_architecture,
        physical_batches,
        seed_everything,
    )

    t_start = time.monotonic()
    job, plan = spec["job"], spec["plan"]
    details = dict(plan.get("details") or {})
    mode = spec.get("grad_sample_mode") or details.get("grad_sample_mode") or DEFAULT_GRAD_SAMPLE_MODE
    threads = int(spec.get("threads") or 1)
    torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}" if str(spec["device"]).startswith("cuda") else "cpu")
    X_train = np.ascontiguousarray(arrays["X_train"], dtype=np.float32)
    X_test = np.ascontiguousarray(arrays["X_test"], dtype=np.float32)
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    if X_train.ndim != 2 or len(y_train) != len(X_train) or len(X_train) < 1:
        raise JobFailed("The training arrays have inconsistent shapes.")
    # Under add/remove neighbours the true n is private: the schedule, the sample rate
    # and the normaliser come from the plan's PUBLIC count (as in training._train_arrays).
    n = int(plan["n_train"])
    dp = job["dp"]
    epochs, batch_size = int(job["epochs"]), int(job["batch_size"])
    sigma, q = float(plan["noise_multiplier"]), float(plan["sample_rate"])
    steps_planned, accountant, delta = int(plan["steps"]), str(plan["accountant"]), float(plan["delta"])
    eps_error = float(details.get("prv_eps_error") or privacy.PRV_EPS_ERROR)
    schedule = privacy.poisson_schedule(n, batch_size, epochs)
    if schedule["sample_rate"] != q or schedule["steps"] != steps_planned:
        raise JobFailed("The training schedule does not match the plan.", [f"schedule {schedule}"])

    seed_everything(int(job["seed"]))  # initial weights: public, identical on every rank
    arch = job_architecture(job, details, X_train.shape[1])
    if details.get("architecture") not in (None, arch):
        raise JobFailed("The model for the training data differs from the planned one.")
    model = _validated_model(arch).to(device)
    secret = int(spec["noise_seed"])
    secure = bool(spec.get("secure_mode"))
    sampling_gen = None if secure else torch.Generator().manual_seed(rank_seed(secret, "poisson", rank))
    noise_gen = None if secure else torch.Generator(device=device).manual_seed(rank_seed(secret, "noise", rank))
    torch.manual_seed(rank_seed(secret, "global", rank))
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(float(spec.get("cuda_memory_fraction", 0.9)), device)
        torch.cuda.manual_seed(rank_seed(secret, "global", rank))
    ddp_model = DPDDP(model)  # broadcasts rank 0's weights
    head = arch["head"]
    criterion = _criterion(head)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=float(job["learning_rate"]))
    # Opacus's distributed Poisson loader at the PUBLIC rate (from_data_loader would take
    # it from the private len(dataset)); each rank samples its shard with its own generator.
    loader = DPDataLoader(
        TensorDataset(torch.from_numpy(X_train), _targets(head, y_train)),
        sample_rate=float(schedule["poisson_rate"]), generator=sampling_gen, distributed=True,
    )
    engine = PrivacyEngine(accountant=accountant, secure_mode=secure)
    private = engine.make_private(
        module=ddp_model, optimizer=optimizer, criterion=criterion, data_loader=loader,
        noise_multiplier=sigma, max_grad_norm=float(dp["clip"]), poisson_sampling=False,
        grad_sample_mode=mode, noise_generator=noise_gen,
    )
    if mode == "ghost":
        dp_model, dp_optimizer, dp_criterion, dp_loader = private
    else:
        dp_model, dp_optimizer, dp_loader = private
        dp_criterion = criterion
    # make_private's per-rank normaliser is int(len(dataset) * q) / world: the private n.
    dp_optimizer.expected_batch_size = schedule["expected_batch_size"] / world
    guard_per_sample_gradients(dp_optimizer, dp_model, mode)
    sampler = getattr(dp_loader, "batch_sampler", None)
    if type(sampler).__name__ != "DistributedUniformWithReplacementSampler":
        raise JobFailed(f"Opacus did not build its distributed Poisson sampler (got {type(sampler).__name__}).")
    if len(dp_loader) != schedule["steps_per_epoch"]:
        raise JobFailed("Opacus's Poisson loader has a different number of batches per epoch than planned.")

    rdp_progress = privacy.RdpProgress(sigma, q, delta)
    planned_eps = float(plan["epsilon"])
    steps = 0
    diverged = False
    t_train = time.monotonic()
    max_physical = int(spec.get("max_physical_batch_size") or 0)
    for epoch in range(1, epochs + 1):
        dp_model.train()
        loss_sum, loss_n = 0.0, 0
        for xb, yb in physical_batches(dp_loader, dp_optimizer, max_physical):
            if device.type != "cpu":
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            dp_optimizer.zero_grad(set_to_none=True)
            loss = dp_criterion(_shape(head, dp_model(xb)), yb)
            loss.backward()
            dp_optimizer.step()
            if not getattr(dp_optimizer, "_is_last_step_skipped", False):
                steps += 1
            if not _finite_model(model):  # post-processing of the DP updates (identical on every rank)
                diverged = True
                break
            value = float(loss.item()) if len(xb) else math.nan
            if math.isfinite(value):
                loss_sum += value * len(xb)
                loss_n += len(xb)
        if diverged:
            break
        if rank == 0 and epoch < epochs:
            send({"type": "progress", "epoch": epoch, "epochs": epochs, "loss": (loss_sum / loss_n) if loss_n else None,
                  "epsilon": min(rdp_progress.epsilon(steps), planned_eps), "epsilon_exact": False, "steps": steps,
                  "world_size": world})
    train_seconds = time.monotonic() - t_train
    if diverged:
        raise Diverged(
            "Training diverged: the DP model's parameters became non-finite, so it was stopped.",
            [f"diverged at step {steps} of {steps_planned} (learning rate {job['learning_rate']})"],
        )

    history = [tuple(h) for h in engine.accountant.history]
    if steps != steps_planned or history != [(sigma, q, steps_planned)]:
        raise JobFailed("The accountant's record differs from the plan.", [f"rank {rank}: history {history}"])
    # Every rank must hold rank 0's parameters (one noise draw, one reduced gradient).
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float64)
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = torch.tensor([float((flat - ref).abs().max())], dtype=torch.float64, device=flat.device)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if float(diff) > 1e-5:
        raise JobFailed(f"The ranks' models diverged (max difference {float(diff):.3g}); the result is discarded.")
    if rank != 0:
        return None

    final_eps = privacy.epsilon(accountant, engine.accountant.history, delta, eps_error=eps_error)
    if not (math.isfinite(final_eps) and final_eps <= planned_eps * (1 + EPS_REL_TOL)):
        raise JobFailed(f"Training spent ε = {final_eps:.6g}, more than the planned ε = {planned_eps:.6g}.")
    send({"type": "progress", "epoch": epochs, "epochs": epochs, "loss": (loss_sum / loss_n) if loss_n else None,
          "epsilon": final_eps, "epsilon_exact": True, "steps": steps, "world_size": world})
    model = model.to("cpu")
    # Exact held-out metrics only for data declared public (see training._train_arrays).
    metrics = evaluate(model, arch, X_test, y_test) if details.get("public_data") else {}
    metrics["diverged"] = False
    if details.get("public_data"):
        metrics["train_seconds"] = round(train_seconds, 3)
    (tmp / "model.safetensors").write_bytes(models.save_model(model, arch, extra={
        "pandacead.dataset": str(details.get("dataset", "")),
        "pandacead.dataset_version": str(details.get("dataset_version", "")),
    }))
    training_params = {
        "epochs": epochs, "batch_size": batch_size, "learning_rate": float(job["learning_rate"]),
        "optimizer": "sgd", "loss": type(criterion).__name__, "noise_multiplier": sigma, "sample_rate": q,
        "steps": steps, "steps_per_epoch": schedule["steps_per_epoch"],
        "expected_batch_size": schedule["expected_batch_size"], "poisson_sampling": True,
        "accountant": accountant, "clip": float(dp["clip"]), "architecture": arch, "grad_sample_mode": mode,
        "secure_mode": secure,
        "noise_source": "torchcsprng (secure mode)" if secure else "secret per-job seed, one stream per rank",
        "world_size": world, "device": str(spec["device"]),
        "distributed": "opacus DPDDP, distributed Poisson sampling, noise on rank 0",
    }
    if max_physical:
        training_params["max_physical_batch_size"] = max_physical
    if accountant == "prv":
        training_params["prv_eps_error"] = eps_error
    provenance = {
        "dataset": details.get("dataset"), "dataset_version": details.get("dataset_version"), **_versions(),
        "threads": threads, "world_size": world, "wall_seconds": round(time.monotonic() - t_start, 3),
    }
    return {
        "epsilon": float(final_eps), "delta": delta, "n": n, "accuracy": metrics.get("accuracy"),
        "metrics": metrics, "training_params": training_params, "provenance": provenance,
    }


if __name__ == "__main__":
    sys.exit(_rank_main(Path(sys.argv[1]), int(sys.argv[2])))
