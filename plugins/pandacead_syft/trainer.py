"""SyftTrainer: a job runs as a PySyft code request on the earner's own datasite.

plan  -> the Opacus backend's plan (same accountant, same refusals); syft is not touched.
train -> datasite (launched once per process) -> dataset uploaded as an asset
         (private + tiny mock, once per digest) -> run-once claim -> the job
         becomes a syft_function bound to that asset and to the job's spec,
         submitted by the spender's data-scientist account -> approved by the
         daemon as data owner -> executed on the private data -> request denied
         again so syft refuses any further call -> result checked against the plan.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pandacead.errors import JobError, JobFailed
from pandacead.jobs import Job
from pandacead.trainers import PrivacyPlan, Progress, TrainerContext, TrainResult

from . import datasite
from .runs import RunRecord

log = logging.getLogger(__name__)


class SyftTrainer:
    name = "syft"
    isolated = True
    private = True

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        # Delegated, not re-implemented: a syft job is refused or priced exactly
        # as the same job on the opacus backend. No syft import happens here.
        from pandacead_opacus.trainer import OpacusTrainer

        return OpacusTrainer().plan(job, ctx)

    def train(
        self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress
    ) -> TrainResult:
        from pandacead_opacus import defaults
        from pandacead_opacus.trainer import check_ready

        info = check_ready(job, plan, ctx)
        job, _ = defaults.with_defaults(job, info)  # as the opacus plan did
        runs = RunRecord(Path(ctx.state_dir) / "syft" / "runs.sqlite")
        code_name = datasite.code_name_for(job.job_id)
        # Early, before any syft work; `claim` below is the atomic check.
        runs.refuse_if_claimed(job.job_id)

        timings: dict[str, float] = {}
        try:
            t0 = time.monotonic()
            site = datasite.get(ctx.state_dir)
            timings["datasite"] = time.monotonic() - t0
            progress({"stage": "datasite", "seconds": round(timings["datasite"], 3)})

            t0 = time.monotonic()
            progress({"stage": "data_loaded"})  # the datasite may read the data now: charged from here on
            dataset_id = site.ensure_dataset(info, lambda: _load(info, ctx))
            spender = site.spender(job.user_id)
            asset = site.asset_for(spender, dataset_id)
            timings["dataset"] = time.monotonic() - t0
            progress({"stage": "dataset", "dataset": info.name, "version": info.commitment})
        except JobError:
            raise
        except Exception as exc:
            raise JobFailed(
                f"The syft datasite could not prepare dataset {info.name!r} for job"
                f" {job.job_id!r}: {_one_line(exc)}",
                [repr(exc)],
            ) from exc

        # From here on the job may touch private data: claim it exactly once.
        runs.claim(job.job_id, code_name, job.user_id)
        try:
            outcome, ids = _run_code_request(
                site, spender, asset, job, plan, ctx, code_name, timings, progress
            )
        except JobError as exc:
            runs.finish(job.job_id, "failed", exc.message)
            raise
        except Exception as exc:
            runs.finish(job.job_id, "failed", repr(exc))
            raise JobFailed(
                f"The syft datasite could not run job {job.job_id!r}: {_one_line(exc)}",
                [repr(exc)],
            ) from exc

        if not outcome.get("ok"):
            error = outcome.get("error") or (
                "syft returned the mock run's output" if outcome.get("mock") else "no result"
            )
            runs.finish(job.job_id, "failed", error)
            details = [error]
            if outcome.get("traceback"):
                details.append(outcome["traceback"])
            raise JobFailed(
                f"Training job {job.job_id!r} failed inside the syft datasite: {error}", details
            )
        runs.finish(job.job_id, "executed")
        from pandacead_opacus.trainer import attach_released_preprocessing

        attach_released_preprocessing(outcome["result"], info, ctx.options.get("home") or ".")
        result = _to_train_result(outcome["result"], site, ids, timings)
        if result.epsilon > plan.epsilon * (1 + 1e-9):
            raise JobFailed(
                f"Job {job.job_id!r} spent ε={result.epsilon:.6g}, more than its planned ε={plan.epsilon:.6g}.",
                [f"epsilon: {result.epsilon} > planned {plan.epsilon}"],
            )
        return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:300] + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _load(info: Any, ctx: TrainerContext) -> Any:
    from pandacead import datasets

    return datasets.load(info, ctx.options.get("home", "."))


def _run_code_request(
    site: datasite.Datasite,
    spender: Any,
    asset: Any,
    job: Job,
    plan: PrivacyPlan,
    ctx: TrainerContext,
    code_name: str,
    timings: dict[str, float],
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, str]]:
    from . import remote

    sy = site.syft
    spec = json.dumps(
        {
            "job": job.to_dict(),
            "plan": plan.to_dict(),
            "threads": max(1, int(ctx.torch_threads or 1)),
            "grad_sample_mode": plan.details.get("grad_sample_mode") or ctx.grad_sample_mode,
            "secure_mode": bool(ctx.secure_mode),
            "fast_path": ctx.fast_path,  # the same DP-SGD step as the opacus backend
        },
        sort_keys=True,
    )
    with datasite.syft_io():
        t0 = time.monotonic()
        function = sy.syft_function(
            input_policy=sy.MixedInputPolicy(
                client=spender, data=asset, spec=sy.Constant(val=spec)
            ),
            output_policy=sy.SingleExecutionExactOutput(),
            name=code_name,
        )(remote.pandacead_dp_sgd)
        request = spender.code.request_code_execution(function)
        ids = {"request_id": str(request.id), "code_name": code_name}
        progress({"stage": "submitted", **ids})
        owner_view = site.find_request(request.id)
        owner_view.approve(disable_warnings=True)
        timings["submit_approve"] = time.monotonic() - t0
        progress({"stage": "approved", **ids})

        t0 = time.monotonic()
        remote.HOST = {"progress": progress, "noise_seed": ctx.options.get("noise_seed")}
        try:
            pointer = getattr(spender.code, code_name)(data=asset)
            outcome = pointer.get() if hasattr(pointer, "get") else pointer
        finally:
            remote.HOST = {}
            # Executed (or failed) once: withdraw the approval so syft itself
            # refuses another call of this code. The run record stays the
            # primary guard, so a failure here must not mask the job's outcome.
            try:
                owner_view.deny(reason="pandacead runs a job at most once; this one has run")
            except Exception as exc:
                log.warning("syft: could not withdraw approval of %s: %s", code_name, exc)
        timings["execute"] = time.monotonic() - t0
    if not isinstance(outcome, dict):
        raise JobFailed(
            f"Training job {job.job_id!r} failed inside the syft datasite: {outcome}",
            [str(outcome)],
        )
    return outcome, ids


def _to_train_result(
    value: dict[str, Any], site: datasite.Datasite, ids: dict[str, str], timings: dict[str, float]
) -> TrainResult:
    """`train_arrays`' dict (TrainResult fields, model as bytes) with syft's provenance added."""
    fields = dict(value)
    version = site.syft.__version__
    fields["provenance"] = {
        **dict(fields.get("provenance") or {}),
        "backend": "syft",
        "syft_version": version,
        "executor": f"PySyft {version} datasite {datasite.SITE_NAME!r} (code request)",
        "syft_code": ids["code_name"],
        "syft_request": ids["request_id"],
        "syft_timings": {k: round(v, 3) for k, v in timings.items()},
    }
    return TrainResult(**fields)
