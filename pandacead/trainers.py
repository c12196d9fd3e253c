"""The trainer interface: what a backend (built-in or plugin) provides.

A trainer is registered by name through the `pandacead_register_trainers`
hook. The daemon calls `plan` first (no training data may be touched: only
the job, the dataset's *description* and the accountant), reserves the
planned (ε, δ) in the ledger, then calls `train`. `train` must never spend
more than `plan` promised: the daemon refuses a result whose ε exceeds the
plan's and fails the job.

Trainers with `isolated = True` run both calls in a worker process
(pandacead.worker), so they may import heavy libraries; the daemon itself
never imports them. Everything crossing the process boundary is JSON.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from pandacead.errors import JobRejected
from pandacead.jobs import Job

Progress = Callable[[dict[str, Any]], None]


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

    @property
    def n_train(self) -> int:
        return self.n_rows - int(round(self.n_rows * self.holdout_fraction))

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

    def dataset(self, job: Job) -> DatasetInfo:
        info = self.datasets.get(job.dataset)
        if info is None:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise JobRejected(
                f"Dataset {job.dataset!r} is not registered on this host (known: {known}).",
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
    n: int  # training rows
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

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan: ...

    def train(self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress) -> TrainResult: ...
