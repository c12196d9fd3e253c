"""The trainer interface: what a backend (built-in or plugin) provides.

A trainer is registered by name through the `pandacead_register_trainers`
hook. The daemon calls `plan` first (no training data may be touched: only
the job, the dataset's *description* and the accountant), reserves the
planned (ε, δ) in the ledger, then calls `train`. `train` must never spend
more than `plan` promised: the daemon refuses a result whose ε exceeds the
plan's and fails the job.

A trainer declares `private = True` only if everything it returns is
differentially private; any other trainer (mock) is never given private
data. Before reading any data `train` sends the progress event
``{"stage": "data_loaded"}`` (see `DATA_LOADED`): from then on the job is
charged whatever happens.

Trainers with `isolated = True` run both calls in a worker process
(pandacead.worker), so they may import heavy libraries; the daemon itself
never imports them. Everything crossing the process boundary is JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from pandacead.errors import JobRejected
from pandacead.jobs import Job

Progress = Callable[[dict[str, Any]], None]

#: The progress event a trainer sends just before it first reads training data.
DATA_LOADED: dict[str, Any] = {"stage": "data_loaded"}


def is_private(trainer: Any) -> bool:
    """Whether a trainer declares all its outputs DP (missing attribute: not private)."""
    return getattr(trainer, "private", False) is True


def may_train_on(trainer: Any, info: DatasetInfo | None, job_id: str, dataset: str | None = None) -> None:
    """JobRejected unless `trainer` may see the data of `info` (None: unknown dataset `dataset`):
    a non-private trainer only data declared public. Same sentence for private and unknown data."""
    if is_private(trainer) or (info is not None and info.public):
        return
    name = getattr(trainer, "name", "?")
    dataset = info.name if info is not None else (dataset or "?")
    raise JobRejected(
        f"Job {job_id} asks for backend {name!r}, which is not differentially private, on dataset"
        f" {dataset!r}, which is not declared public; only a DP backend may train on it.",
        [f"backend: {name!r} is not private; dataset {dataset!r} is private or unknown"],
    )


def noise_seed(key: bytes, job_id: str, seed: int, scope: str = "") -> int:
    """The per-job secret seed of DP noise and sampling: HMAC(host noise key, scope, job_id, seed).

    Unique per job (a job_id is never reused within its scope — a buyer account,
    or "" for the admin's inbox — and the scope is part of the message, so two
    buyers choosing the same job_id and seed still get different noise),
    reproducible on the host (crash recovery retrains identically), unknown to
    the buyer who chose `seed`.
    """
    msg = f"{job_id}\0{seed}" if not scope else f"{scope}\0{job_id}\0{seed}"
    mac = hmac.new(key, msg.encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") >> 1


@dataclass(frozen=True)
class DatasetInfo:
    """What an earner registered about a dataset: public metadata, not the data."""

    name: str
    task: str  # "classification" | "regression"
    n_rows: int  # all rows (train + held-out)
    n_features: int
    n_classes: int | None  # classification only
    digest: str  # "sha256:<hex>" of the content (or of the generator spec for builtins)
    source: dict[str, Any] = field(default_factory=dict)  # {"kind": "synthetic"|"csv"|"npz"|"parquet", "path", "label", ...}
    holdout_fraction: float = 0.2
    # Private unless the earner declares it public (`public = true` in [datasets.NAME]);
    # the built-in synthetic generator is public. Non-private trainers never see private data.
    public: bool = False
    # The earner's public row count (`rows` in [datasets.NAME]), the only count that
    # planning may use for private data: under add/remove neighbours the true n is private.
    declared_rows: int | None = None
    # What buyers see instead of `digest`: HMAC(host secret, digest), an opaque version id.
    commitment: str | None = None
    # Seed of the held-out split, from a host secret (never from the data); None: OS entropy.
    split_seed: int | None = None

    @property
    def n_train(self) -> int:
        """The true number of training rows (private for private data: never release it)."""
        return self.n_rows - int(round(self.n_rows * self.holdout_fraction))

    @property
    def public_rows(self) -> int | None:
        """The row count that may shape a plan and be released: true n if public, else the declared one."""
        return self.n_rows if self.public else self.declared_rows

    @property
    def public_n_train(self) -> int | None:
        """Training rows by the public count (see `public_rows`), or None when none is declared."""
        rows = self.public_rows
        if rows is None:
            return None
        return rows - int(round(rows * self.holdout_fraction))

    def require_public_n_train(self) -> int:
        """`public_n_train`, or JobRejected telling the earner how to declare it."""
        n = self.public_n_train
        if n is None or n < 1:
            raise JobRejected(
                f"Dataset {self.name!r} is private and declares no public row count, which planning needs"
                f" (sample rate, noise, δ < 1/n); the earner sets `rows = <count>` in [datasets.{self.name}].",
                [f"datasets.{self.name}.rows: not declared"],
            )
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        return cls(**d)


@dataclass(frozen=True)
class TrainerContext:
    """Settings a trainer may read. Built by the daemon from config; JSON-serialisable.

    `options["noise_seed"]` (per job) is a secret seed for everything the privacy
    guarantee needs hidden — DP noise and Poisson sampling. `job.seed` is chosen by
    the buyer and may seed only what can be public (initial weights, the split).
    """

    datasets: dict[str, DatasetInfo]
    state_dir: str
    torch_threads: int = 1
    accountant: str = "prv"
    grad_sample_mode: str = "auto"
    fast_path: str = "auto"  # "auto": book-keeping DP-SGD for Linear-only models (opacus backend); "off"
    secure_mode: bool = False
    max_steps: int = 200_000
    options: dict[str, Any] = field(default_factory=dict)
    # Where and on how many processes a job trains (pandacead.devices, docs/scale.md).
    device: str = "auto"
    world_size: int = 1
    max_physical_batch_size: int = 0
    memory: dict[str, Any] = field(default_factory=dict)  # memory_limit_mb, device_memory_mb, cuda_memory_fraction

    def dataset(self, job: Job) -> DatasetInfo:
        info = self.datasets.get(job.dataset)
        if info is None:
            # The list of datasets is for the admin CLI (`pandacead datasets list`), not for buyers.
            raise JobRejected(
                f"Dataset {job.dataset!r} is not offered on this host.",
                [f"dataset: unknown dataset {job.dataset!r}"],
            )
        if info.task != job.task:
            raise JobRejected(
                f"Dataset {job.dataset!r} is for {info.task}, but the job asks for {job.task}.",
                [f"task: {job.task!r} does not match dataset task {info.task!r}"],
            )
        return info

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["datasets"] = {k: v.to_dict() for k, v in self.datasets.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerContext:
        d = dict(d)
        d["datasets"] = {k: DatasetInfo.from_dict(v) for k, v in d["datasets"].items()}
        return cls(**d)


@dataclass(frozen=True)
class PrivacyPlan:
    """The pre-flight privacy cost of a job, computed before any data is touched.

    `epsilon`/`delta` are what will be reserved: the most the job can spend.
    `rdp` optionally carries the job's Rényi-DP curve as {order: value} so the
    ledger can compose jobs more tightly than by adding ε.
    """

    epsilon: float
    delta: float
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    accountant: str = "declared"
    n_train: int | None = None
    rdp: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Fail closed on a nonsensical plan."""
        problems = []
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            problems.append(f"planned epsilon {self.epsilon!r} is not a finite positive number")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and 0 < self.delta < 1):
            problems.append(f"planned delta {self.delta!r} is not in (0, 1)")
        if problems:
            raise JobRejected("The trainer's privacy cost cannot be computed.", problems)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivacyPlan:
        return cls(**d)


@dataclass(frozen=True)
class TrainResult:
    """What training produced. `model` is safetensors bytes."""

    model: bytes
    epsilon: float  # final ε from the accountant; must be <= plan.epsilon
    delta: float
    n: int | None  # training rows: the public count (see DatasetInfo.public_rows) or None, never a private n
    accuracy: float | None  # held-out accuracy (classification) else None
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"accuracy": .., "mse": .., "r2": ..}
    training_params: dict[str, Any] = field(default_factory=dict)  # architecture, σ, q, steps, ...
    provenance: dict[str, Any] = field(default_factory=dict)  # dataset digest, library versions, ...

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = base64.b64encode(self.model).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        d = dict(d)
        d["model"] = base64.b64decode(d["model"], validate=True)
        return cls(**d)


@runtime_checkable
class Trainer(Protocol):
    name: str
    isolated: bool
    # True only for trainers whose every output is DP (noise from ctx.options["noise_seed"]);
    # a trainer without the attribute counts as non-private and never sees private data.
    private: bool

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan: ...

    def train(self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress) -> TrainResult: ...
