"""Test-only DP-declaring trainers that fail after (or before) reading the data, for issue 12's attacks."""

from __future__ import annotations

import os
import signal
from typing import Any

from pandacead.errors import Diverged, JobFailed
from pandacead.hookspecs import hookimpl
from pandacead.trainers import DATA_LOADED, PrivacyPlan


class _Declared:
    isolated = True
    private = True  # claims DP: the pipeline lets it see private data

    def plan(self, job: Any, ctx: Any) -> PrivacyPlan:
        info = ctx.dataset(job)
        return PrivacyPlan(epsilon=job.dp.epsilon, delta=job.dp.delta, accountant="declared",
                           n_train=info.require_public_n_train())


class LeakyFailure(_Declared):
    """Reads the data, then fails with a data value and a traceback-like text in its message."""

    name = "leaky-fail"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        from pandacead import datasets

        progress(dict(DATA_LOADED))
        X, y, _, _ = datasets.load(ctx.dataset(job), ctx.options["home"])
        raise ValueError(f"row 0 has the value {X[0, 0]!r} and label {int(y[0])}\nTraceback (most recent call last):")


class CrashAfterReading(_Declared):
    name = "touch-crash"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        progress(dict(DATA_LOADED))
        os.kill(os.getpid(), signal.SIGKILL)


class DivergeAfterReading(_Declared):
    name = "diverge"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        progress(dict(DATA_LOADED))
        raise Diverged("Training diverged.", ["diverged at step 3"])


class RefuseBeforeReading(_Declared):
    name = "pre-refuse"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        raise JobFailed("This trainer is not ready on this host.")


@hookimpl
def pandacead_register_trainers(register: Any) -> None:
    for cls in (LeakyFailure, CrashAfterReading, DivergeAfterReading, RefuseBeforeReading):
        register(cls())
