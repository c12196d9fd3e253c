"""The plugin contract. Every hook here is documented in docs/plugins.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pandacead.jobs import Job
    from pandacead.trainers import Trainer

hookspec = pluggy.HookspecMarker("pandacead")
hookimpl = pluggy.HookimplMarker("pandacead")


@hookspec
def pandacead_register_trainers(register: Callable[[Trainer], None]) -> None:
    """Register trainer backends by calling `register(trainer)` once per trainer."""


@hookspec(firstresult=True)
def pandacead_select_trainer(job: Job, trainers: Mapping[str, Trainer], config: Any) -> str | None:
    """Return the name of the trainer for `job`, or None to let the next implementation decide."""


@hookspec
def pandacead_check_budget(job: Job, plan: Any, ledger: Any) -> str | None:
    """Veto a job before its reservation: return a sentence saying why, or None. Raising vetoes too."""


@hookspec
def pandacead_sign_artifact(payload: bytes) -> dict[str, str] | None:
    """Sign the DSSE pre-authentication encoding `payload`: return {"keyid", "sig" (base64)} or None."""


@hookspec
def pandacead_job_finished(job: Job | None, outcome: dict[str, Any]) -> None:
    """Told once per job file after its outcome is published; exceptions are logged and ignored."""
