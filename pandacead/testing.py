"""Check a trainer against pandacead's trainer contract (for plugin authors and for our own tests).

    from pandacead.testing import check_trainer, make_context, make_job

    def test_my_trainer_keeps_the_contract(tmp_path):
        check_trainer(MyTrainer(), make_job(backend="mine"), make_context(tmp_path))

`check_trainer` raises AssertionError with a sentence saying what is wrong.
It checks, in order:

1. identity: `name` is a valid backend name, `isolated` is a bool, `plan` and
   `train` are callable;
2. `plan` reads no data (it runs with `pandacead.datasets.load` patched to
   raise), returns a sane `PrivacyPlan` (finite positive ε, δ in (0, 1),
   ε ≤ the job's ε, δ ≤ the job's δ, a JSON-serialisable plan with a sane RDP
   curve if any) and returns the same cost when asked twice;
3. refusal: for requests that cannot be honoured (by default ε = 1e-6 and
   δ = 0.5) `plan` raises `JobRejected`, again without reading data;
4. `train`, given the plan after a JSON round trip (as an isolated trainer
   receives it), spends at most the plan (ε ≤ plan ε, δ ≤ plan δ), returns
   sane fields (n ≥ 1, accuracy None or in [0, 1], JSON-serialisable
   metrics/params/provenance, progress events that are JSON objects with
   ε ≤ plan ε) and a model that loads as safetensors with finite tensors;
5. determinism: a second `train` with the same job and the same secret noise
   seed gives identical model bytes (skipped when the context is in `secure_mode`);
6. privacy declarations (invariants 7–9 of the design):
   - `private` is a bool; a trainer that declares `private = True` sends the
     progress event ``{"stage": "data_loaded"}`` before it reads data;
   - secret noise: two jobs with the same `seed` and different `job_id`s
     (hence different `ctx.options["noise_seed"]`) give different models, and
     one job trained under two noise seeds gives different models — a private
     trainer adds noise at all, and draws it from the secret seed, never from
     `job.seed`;
   - a non-private trainer is never offered private data: the pipeline's gate
     (`pandacead.trainers.may_train_on`) refuses it on a private dataset.

Contexts get their per-job noise seed as the pipeline gives it
(`with_noise_seed`: HMAC of a host key with the job id and seed).

For pytest, subclass `TrainerContract` in a test module and provide the
fixtures `trainer`, `job` and `ctx`: each check becomes its own test.

Empirical privacy (docs/audit.md): `check_audit(trainer)` runs a small
canary audit (a minute or so on one core for a DP-SGD trainer) and fails if
the lower bound ε̂ exceeds the ε the trainer claims; `check_audit_detects`
is its companion, showing the same audit catches a deliberately broken
variant (by default `buyer_seeded_noise(trainer)`: noise seeded from the
buyer's `job.seed`).

Trainers must read training data only through `pandacead.datasets.load`
(called as an attribute of the module, or imported by name: both are
patched), so that "plan touches no data" can be verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pandacead.errors import JobRejected
from pandacead.jobs import DPParams, Job
from pandacead.trainers import (
    DATA_LOADED,
    DatasetInfo,
    PrivacyPlan,
    TrainerContext,
    TrainResult,
    is_private,
    may_train_on,
    noise_seed,
)

#: The host key contract checks derive noise seeds from (a real host has a secret one).
CONTRACT_NOISE_KEY = b"pandacead-contract-check-noise-key"

__all__ = [
    "DataTouched",
    "TrainerContract",
    "buyer_seeded_noise",
    "check_audit",
    "check_audit_detects",
    "check_deterministic",
    "check_model",
    "check_plan",
    "check_noise_is_secret",
    "check_private_data_gate",
    "check_refusals",
    "check_train",
    "check_trainer",
    "impossible_jobs",
    "make_context",
    "make_job",
    "no_data_access",
    "with_noise_seed",
]

BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class DataTouched(AssertionError):
    """Raised by the patched `pandacead.datasets.load` while data access is forbidden."""


# --------------------------------------------------------------------------- helpers


def make_job(job_id: str = "contract-check", user_id: str = "contract-tester", dp: dict[str, Any] | None = None, **fields: Any) -> Job:
    """A `Job` with the schema's defaults; `dp` overrides fields of `DPParams`."""
    return Job(job_id=job_id, user_id=user_id, dp=DPParams(**(dp or {})), **fields)


def make_context(
    state_dir: str | Path,
    datasets: Iterable[str] | None = None,
    base_dir: str | Path | None = None,
    **fields: Any,
) -> TrainerContext:
    """A `TrainerContext` over pandacead's built-in datasets (all of them unless `datasets` names some)."""
    from pandacead import datasets as ds

    base = Path(base_dir) if base_dir is not None else Path(state_dir)
    specs = ds.builtin_specs()
    names = list(specs) if datasets is None else list(datasets)
    infos = {name: ds.describe(name, specs[name], base) for name in names}
    options = {"home": str(base), **dict(fields.pop("options", {}) or {})}
    return TrainerContext(datasets=infos, state_dir=str(state_dir), options=options, **fields)


def with_noise_seed(ctx: TrainerContext, job: Job, key: bytes = CONTRACT_NOISE_KEY) -> TrainerContext:
    """`ctx` with the job's secret noise seed, derived exactly as the pipeline does."""
    return dataclasses.replace(ctx, options={**ctx.options, "noise_seed": noise_seed(key, job.job_id, job.seed)})


def impossible_jobs(job: Job) -> list[Job]:
    """Requests no trainer may accept: ε = 1e-6 (nothing useful is that private) and δ = 0.5."""
    return [
        dataclasses.replace(job, job_id=f"{job.job_id}-tiny-epsilon", dp=dataclasses.replace(job.dp, epsilon=1e-6)),
        dataclasses.replace(job, job_id=f"{job.job_id}-huge-delta", dp=dataclasses.replace(job.dp, delta=0.5)),
    ]


@contextlib.contextmanager
def no_data_access() -> Iterator[list[tuple[Any, ...]]]:
    """Within the block, `pandacead.datasets.load` (and every module-level alias of it) raises `DataTouched`.

    Yields the list of attempted calls, so a trainer that swallows the exception is caught too.
    """
    from pandacead import datasets as ds

    original = ds.load
    calls: list[tuple[Any, ...]] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise DataTouched("pandacead.datasets.load was called while no data may be touched")

    patched: list[tuple[Any, str]] = []
    for module in list(sys.modules.values()):
        try:
            namespace = vars(module)
        except TypeError:
            continue
        for attr, value in list(namespace.items()):
            if value is original:
                patched.append((module, attr))
    try:
        for module, attr in patched:
            setattr(module, attr, forbidden)
        yield calls
    finally:
        for module, attr in patched:
            setattr(module, attr, original)


def _fail(trainer: Any, message: str) -> AssertionError:
    return AssertionError(f"trainer {getattr(trainer, 'name', trainer)!r}: {message}")


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _json(trainer: Any, what: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _fail(trainer, f"{what} is not JSON-serialisable ({exc})") from None


# --------------------------------------------------------------------------- checks


def check_identity(trainer: Any) -> None:
    name = getattr(trainer, "name", None)
    if not isinstance(name, str) or not BACKEND_NAME.match(name):
        raise _fail(trainer, f"name {name!r} is not a backend name matching {BACKEND_NAME.pattern}")
    if not isinstance(getattr(trainer, "isolated", None), bool):
        raise _fail(trainer, "has no boolean attribute `isolated`")
    for method in ("plan", "train"):
        if not callable(getattr(trainer, method, None)):
            raise _fail(trainer, f"has no callable `{method}`")


def _plan_without_data(trainer: Any, job: Job, ctx: TrainerContext) -> PrivacyPlan:
    with no_data_access() as calls:
        try:
            plan = trainer.plan(job, ctx)
        except DataTouched:
            raise _fail(trainer, "plan() read training data (pandacead.datasets.load); it must only use the job and dataset metadata") from None
        except JobRejected as exc:
            if calls:
                raise _fail(trainer, "plan() read training data before rejecting the job") from None
            raise _fail(trainer, f"plan() rejected a job it should accept: {exc.message}") from None
    if calls:
        raise _fail(trainer, "plan() read training data (pandacead.datasets.load) and hid the error")
    return plan


def check_plan(trainer: Any, job: Job, ctx: TrainerContext) -> PrivacyPlan:
    """Plan `job` with data access forbidden and check the plan; returns it."""
    plan = _plan_without_data(trainer, job, ctx)
    if not isinstance(plan, PrivacyPlan):
        raise _fail(trainer, f"plan() returned {type(plan).__name__}, not a PrivacyPlan")
    if not _finite_positive(plan.epsilon):
        raise _fail(trainer, f"planned ε {plan.epsilon!r} is not a finite positive number")
    if not (_finite_positive(plan.delta) and plan.delta < 1):
        raise _fail(trainer, f"planned δ {plan.delta!r} is not in (0, 1)")
    if plan.epsilon > job.dp.epsilon:
        raise _fail(trainer, f"planned ε={plan.epsilon!r} exceeds the job's requested ε={job.dp.epsilon!r}")
    if plan.delta > job.dp.delta:
        raise _fail(trainer, f"planned δ={plan.delta!r} exceeds the job's requested δ={job.dp.delta!r}")
    if plan.rdp is not None:
        if not isinstance(plan.rdp, dict) or not plan.rdp:
            raise _fail(trainer, "plan.rdp must be a non-empty {str(order): value} dict or None")
        for order, value in plan.rdp.items():
            try:
                a = float(order)
            except (TypeError, ValueError):
                raise _fail(trainer, f"plan.rdp key {order!r} is not a number as a string") from None
            if not isinstance(order, str) or not a > 1:
                raise _fail(trainer, f"plan.rdp key {order!r} must be a string order > 1")
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise _fail(trainer, f"plan.rdp[{order!r}] = {value!r} is not a finite number >= 0")
    _json(trainer, "the plan", plan.to_dict())
    try:
        plan.check()
    except JobRejected as exc:
        raise _fail(trainer, f"the plan fails PrivacyPlan.check(): {exc.details}") from None
    again = _plan_without_data(trainer, job, ctx)
    if (again.epsilon, again.delta) != (plan.epsilon, plan.delta):
        raise _fail(trainer, f"plan() is not deterministic: ε, δ = {plan.epsilon!r}, {plan.delta!r} then {again.epsilon!r}, {again.delta!r}")
    return plan


def check_refusals(trainer: Any, ctx: TrainerContext, jobs: Iterable[Job]) -> None:
    """Each of `jobs` must be refused by plan() with JobRejected, without reading data."""
    for bad in jobs:
        with no_data_access() as calls:
            try:
                plan = trainer.plan(bad, ctx)
            except DataTouched:
                raise _fail(trainer, f"plan() read training data for the impossible job {bad.job_id!r}") from None
            except JobRejected:
                plan = None
            except Exception as exc:
                raise _fail(
                    trainer,
                    f"plan() raised {type(exc).__name__} for the impossible job {bad.job_id!r} "
                    f"(ε={bad.dp.epsilon!r}, δ={bad.dp.delta!r}); it must raise JobRejected",
                ) from None
        if calls:
            raise _fail(trainer, f"plan() read training data for the impossible job {bad.job_id!r}")
        if plan is not None:
            raise _fail(
                trainer,
                f"plan() accepted the impossible job {bad.job_id!r} (ε={bad.dp.epsilon!r}, δ={bad.dp.delta!r}) "
                f"with planned ε={getattr(plan, 'epsilon', None)!r}; it must raise JobRejected",
            )


def _roundtrip(plan: PrivacyPlan) -> PrivacyPlan:
    return PrivacyPlan.from_dict(json.loads(json.dumps(plan.to_dict())))


def check_model(trainer: Any, model: bytes) -> dict[str, Any]:
    """`model` must be safetensors bytes with at least one tensor, all numeric tensors finite."""
    import numpy as np
    from safetensors.numpy import load

    if not isinstance(model, (bytes, bytearray)) or not model:
        raise _fail(trainer, f"the model is {type(model).__name__}, not safetensors bytes")
    try:
        tensors = load(bytes(model))
    except Exception as exc:
        raise _fail(trainer, f"the model is not loadable safetensors ({type(exc).__name__}: {exc})") from None
    if not tensors:
        raise _fail(trainer, "the model has no tensors")
    for key, array in tensors.items():
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            raise _fail(trainer, f"model tensor {key!r} has non-finite values")
    return tensors


def check_train(trainer: Any, job: Job, plan: PrivacyPlan, ctx: TrainerContext) -> tuple[TrainResult, list[dict[str, Any]]]:
    """Train with a JSON round-tripped `plan`; check the result against it. Returns (result, progress events)."""
    events: list[Any] = []
    loads_before_announcement: list[int] = []
    result = _train_watching_loads(trainer, job, plan, ctx, events, loads_before_announcement)
    if is_private(trainer) and loads_before_announcement:
        raise _fail(
            trainer,
            'train() read data before sending the progress event {"stage": "data_loaded"}: the daemon'
            " could not know that the job must be charged whatever happens next",
        )
    if not isinstance(result, TrainResult):
        raise _fail(trainer, f"train() returned {type(result).__name__}, not a TrainResult")
    if not _finite_positive(result.epsilon):
        raise _fail(trainer, f"the result's ε {result.epsilon!r} is not a finite positive number (the daemon fails such a job)")
    if result.epsilon > plan.epsilon:
        raise _fail(trainer, f"train() spent ε={result.epsilon!r}, more than the planned ε={plan.epsilon!r}")
    if not (isinstance(result.delta, (int, float)) and 0 <= result.delta <= plan.delta):
        raise _fail(trainer, f"the result's δ={result.delta!r} is not within [0, planned δ={plan.delta!r}]")
    if result.n is not None and (not isinstance(result.n, int) or isinstance(result.n, bool) or result.n < 1):
        raise _fail(trainer, f"the result's n={result.n!r} is neither None nor a positive integer")
    info = ctx.datasets.get(job.dataset)
    if info is not None and not info.public and result.n not in (None, info.public_n_train):
        raise _fail(trainer, f"the result's n={result.n!r} is not the dataset's public count (the true n is private)")
    acc = result.accuracy
    if acc is not None and not (isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0):
        raise _fail(trainer, f"the result's accuracy {acc!r} is neither None nor in [0, 1]")
    for field in ("metrics", "training_params", "provenance"):
        value = getattr(result, field)
        if not isinstance(value, dict):
            raise _fail(trainer, f"the result's {field} is not a dict")
        _json(trainer, f"the result's {field}", value)
    check_model(trainer, result.model)
    for event in events:
        if not isinstance(event, dict):
            raise _fail(trainer, f"a progress event is {type(event).__name__}, not a dict")
        _json(trainer, "a progress event", event)
        eps = event.get("epsilon")
        if eps is not None and not (isinstance(eps, (int, float)) and eps <= plan.epsilon):
            raise _fail(trainer, f"a progress event reports ε={eps!r}, more than the planned ε={plan.epsilon!r}")
        epoch, epochs = event.get("epoch"), event.get("epochs")
        if isinstance(epoch, int) and isinstance(epochs, int) and not 0 <= epoch <= epochs:
            raise _fail(trainer, f"a progress event has epoch {epoch} outside [0, {epochs}]")
    return result, events


def _train_watching_loads(
    trainer: Any, job: Job, plan: PrivacyPlan, ctx: TrainerContext, events: list[Any], early: list[int]
) -> Any:
    """Run `train`, noting in `early` every `datasets.load` call made before the data_loaded event."""
    from pandacead import datasets as ds

    original = ds.load

    def watched(*args: Any, **kwargs: Any) -> Any:
        if not any(isinstance(e, dict) and e.get("stage") == DATA_LOADED["stage"] for e in events):
            early.append(len(events))
        return original(*args, **kwargs)

    patched = []
    for module in list(sys.modules.values()):
        try:
            namespace = vars(module)
        except TypeError:
            continue
        for attr, value in list(namespace.items()):
            if value is original:
                patched.append((module, attr))
    try:
        for module, attr in patched:
            setattr(module, attr, watched)
        return trainer.train(job, _roundtrip(plan), ctx, events.append)
    finally:
        for module, attr in patched:
            setattr(module, attr, original)


def check_noise_is_secret(trainer: Any, job: Job, plan: PrivacyPlan, ctx: TrainerContext) -> None:
    """A private trainer's noise comes from `ctx.options["noise_seed"]` (unique per job), not `job.seed`.

    Same seed, different job_ids → different models (no two releases share
    noise); one job under two noise seeds → different models (noise is added
    at all, and drawn from the secret seed).
    """
    if not is_private(trainer) or ctx.secure_mode:
        return
    other = dataclasses.replace(job, job_id=f"{job.job_id}-other")
    a = trainer.train(job, _roundtrip(plan), with_noise_seed(ctx, job), lambda event: None)
    b = trainer.train(other, _roundtrip(plan), with_noise_seed(ctx, other), lambda event: None)
    if a.model == b.model:
        raise _fail(
            trainer,
            f"two jobs with the same seed {job.seed} and different job_ids gave the same model: its noise"
            ' does not come from ctx.options["noise_seed"] (a buyer who knows the seed could subtract it)',
        )
    c = trainer.train(job, _roundtrip(plan), with_noise_seed(ctx, job, key=CONTRACT_NOISE_KEY + b"-2"), lambda e: None)
    if a.model == c.model:
        raise _fail(trainer, "the same job under two different noise seeds gave the same model: no noise is added")


def check_private_data_gate(trainer: Any, ctx: TrainerContext) -> None:
    """`private` is a bool, and a non-private trainer is never offered private data."""
    declared = getattr(trainer, "private", None)
    if not isinstance(declared, bool):
        raise _fail(trainer, f"`private` is {declared!r}, not a bool (True only if every output is DP)")
    probe = DatasetInfo(name="contract-private", task="classification", n_rows=100, n_features=2, n_classes=2,
                        digest="sha256:" + "0" * 64, public=False, declared_rows=100)
    try:
        may_train_on(trainer, probe, "contract-check")
    except JobRejected:
        if declared:
            raise _fail(trainer, "the pipeline's gate refused a private trainer on private data") from None
        return
    if not declared:
        raise _fail(trainer, "a non-private trainer would be offered private data")


def check_deterministic(trainer: Any, job: Job, plan: PrivacyPlan, ctx: TrainerContext, first: TrainResult) -> None:
    """A second training run with the same job (same seed, same secret noise seed) must give identical model bytes."""
    second = trainer.train(job, _roundtrip(plan), ctx, lambda event: None)
    if second.model != first.model:
        hint = ""
        try:
            from safetensors.numpy import load

            a, b = load(first.model), load(second.model)
            same = a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
            if same:
                hint = (
                    " (the tensors are equal: the header differs, e.g. safetensors writes __metadata__ "
                    "in hash order when it has more than one key)"
                )
        except Exception:
            pass
        raise _fail(trainer, f"two runs with seed {job.seed} gave different model bytes{hint}")
    if (second.epsilon, second.accuracy) != (first.epsilon, first.accuracy):
        raise _fail(trainer, f"two runs with seed {job.seed} gave different ε or accuracy")


def check_trainer(
    trainer: Any,
    job: Job,
    ctx: TrainerContext,
    *,
    impossible: Iterable[Job] | None = None,
    determinism: bool = True,
) -> None:
    """Run every contract check on `trainer` for `job` (which it must accept); raise AssertionError on a breach.

    `impossible` replaces the default impossible requests (`impossible_jobs(job)`);
    `determinism=False` skips the same-seed check (it is skipped anyway in secure mode).
    """
    check_identity(trainer)
    check_private_data_gate(trainer, ctx)
    if "noise_seed" not in ctx.options:
        ctx = with_noise_seed(ctx, job)
    plan = check_plan(trainer, job, ctx)
    check_refusals(trainer, ctx, impossible_jobs(job) if impossible is None else impossible)
    result, _events = check_train(trainer, job, plan, ctx)
    if determinism and not ctx.secure_mode:
        check_deterministic(trainer, job, plan, ctx, result)
    check_noise_is_secret(trainer, job, plan, ctx)


class TrainerContract:
    """pytest mix-in: subclass as `class TestMyTrainer(TrainerContract)` and define fixtures
    `trainer`, `job` and `ctx`. Override `impossible(job)` to choose the requests that must be refused."""

    def impossible(self, job: Job) -> list[Job]:
        return impossible_jobs(job)

    def test_identity(self, trainer: Any) -> None:
        check_identity(trainer)

    def test_private_data_gate(self, trainer: Any, ctx: TrainerContext) -> None:
        check_private_data_gate(trainer, ctx)

    def test_noise_comes_from_the_secret_seed(self, trainer: Any, job: Job, ctx: TrainerContext) -> None:
        check_noise_is_secret(trainer, job, check_plan(trainer, job, ctx), ctx)

    def test_plan_reads_no_data_and_stays_within_the_request(self, trainer: Any, job: Job, ctx: TrainerContext) -> None:
        check_plan(trainer, job, ctx)

    def test_refuses_impossible_requests_before_reading_data(self, trainer: Any, job: Job, ctx: TrainerContext) -> None:
        check_refusals(trainer, ctx, self.impossible(job))

    def test_train_spends_at_most_the_plan(self, trainer: Any, job: Job, ctx: TrainerContext) -> None:
        check_train(trainer, job, check_plan(trainer, job, ctx), ctx)

    def test_deterministic_by_seed(self, trainer: Any, job: Job, ctx: TrainerContext) -> None:
        if ctx.secure_mode:
            import pytest

            pytest.skip("secure_mode draws noise from the OS: not reproducible by design")
        ctx = with_noise_seed(ctx, job) if "noise_seed" not in ctx.options else ctx
        plan = check_plan(trainer, job, ctx)
        first, _ = check_train(trainer, job, plan, ctx)
        check_deterministic(trainer, job, plan, ctx, first)


# --------------------------------------------------------------------------- empirical privacy


#: Training runs of the gate: 80 without and 80 with the canary. Half of each
#: choose the test; the other 40 + 40 can certify at most ε̂ = 2.34 (95 %).
AUDIT_RUNS = 160


def _audit_settings(epsilon: float, runs: int, seed: int | None, settings: dict[str, Any]) -> Any:
    from pandacead.audit import AuditSettings

    return AuditSettings(epsilon=epsilon, runs=runs, seed=seed, **settings)


def check_audit(
    trainer: Any,
    ctx: TrainerContext | None = None,
    *,
    epsilon: float = 1.0,
    runs: int = AUDIT_RUNS,
    seed: int | None = None,
    score: Any = None,
    **settings: Any,
) -> Any:
    """Audit `trainer` at `epsilon`; AssertionError if the lower bound ε̂ exceeds the ε it claims.

    `ctx` gives the trainer's options (its datasets are replaced by the audit's
    public synthetic data); `settings` are further `pandacead.audit.AuditSettings`
    fields (method, statistic, epochs, model, …); `score(model_bytes, X, y)`
    is the test statistic for a model format the audit cannot read. Returns the report.
    """
    from pandacead.audit import run_audit

    report = run_audit(trainer, _audit_settings(epsilon, runs, seed, settings), ctx=ctx, score=score)
    if not report.conclusive:
        raise _fail(
            trainer,
            f"the privacy audit cannot certify more than ε̂ = {report.epsilon_max:.3f} with {report.runs} runs, "
            f"not above the claimed ε = {report.epsilon_claimed:.3f}: such a gate cannot fail; use more runs",
        )
    if report.violated:
        raise _fail(
            trainer,
            f"the privacy audit shows ε ≥ {report.epsilon_lower:.3f} ({report.confidence:.0%} confidence), "
            f"above the claimed ε = {report.epsilon_claimed:.3f}: the trainer leaks more than it accounts for "
            f"({report.runs} runs, {report.test.get('false_positives')} false positives and "
            f"{report.test.get('false_negatives')} false negatives on {report.test.get('evaluation_out')} + "
            f"{report.test.get('evaluation_in')} evaluation runs)",
        )
    return report


class _BuyerSeededNoise:
    """`trainer` with its secret noise seed replaced by the buyer's `job.seed` (a deliberate bug)."""

    def __init__(self, trainer: Any):
        self.inner = trainer
        self.name = getattr(trainer, "name", "broken")
        self.isolated = getattr(trainer, "isolated", False)

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        return self.inner.plan(job, ctx)

    def train(self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Any) -> TrainResult:
        broken = dataclasses.replace(ctx, options={**ctx.options, "noise_seed": int(job.seed)})
        return self.inner.train(job, plan, broken, progress)


def buyer_seeded_noise(trainer: Any) -> Any:
    """A broken variant of `trainer`: its noise is seeded from the buyer's public `job.seed`.

    A buyer who knows the seed (and the code) can regenerate that noise and
    subtract it; a buyer who reuses a seed gets the same noise twice. The
    audit reuses one `job.seed` for every run, as such a buyer would.
    """
    return _BuyerSeededNoise(trainer)


def check_audit_detects(
    trainer: Any,
    ctx: TrainerContext | None = None,
    *,
    variant: Any = None,
    epsilon: float = 1.0,
    runs: int = AUDIT_RUNS,
    seed: int | None = None,
    score: Any = None,
    **settings: Any,
) -> Any:
    """The audit must catch a broken `variant` of `trainer` (default `buyer_seeded_noise(trainer)`).

    AssertionError if the audit does not report ε̂ above the variant's claim:
    then `check_audit` has no power against this trainer's failures. Returns the report.
    """
    from pandacead.audit import run_audit

    broken = variant if variant is not None else buyer_seeded_noise(trainer)
    report = run_audit(broken, _audit_settings(epsilon, runs, seed, settings), ctx=ctx, score=score)
    if not report.violated:
        raise _fail(
            trainer,
            f"the privacy audit did not catch the deliberately broken variant: ε̂ = {report.epsilon_lower:.3f} "
            f"≤ claimed ε = {report.epsilon_claimed:.3f} (it can certify at most {report.epsilon_max:.3f} "
            f"with {report.runs} runs)",
        )
    return report
