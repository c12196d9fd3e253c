"""Test-only trainers that misbehave on purpose: crash, hang, hog memory, overspend."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pandacead.default_mock import MockTrainer
from pandacead.hookspecs import hookimpl


class _Isolated(MockTrainer):
    isolated = True


class CrashTrainer(_Isolated):
    name = "crash"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        progress({"epoch": 1, "epochs": 2, "loss": 1.0, "epsilon": 0.1})
        os.kill(os.getpid(), signal.SIGKILL)


class HangTrainer(_Isolated):
    name = "hang"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        time.sleep(3600)


class MemHogTrainer(_Isolated):
    name = "memhog"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))


class OverspendTrainer(MockTrainer):
    name = "overspend"

    def train(self, job: Any, plan: Any, ctx: Any, progress: Any) -> Any:
        import dataclasses

        result = super().train(job, plan, ctx, progress)
        return dataclasses.replace(result, epsilon=plan.epsilon * 1.5)


class IsolatedMock(_Isolated):
    name = "isolated-mock"


@hookimpl
def pandacead_register_trainers(register: Any) -> None:
    for cls in (CrashTrainer, HangTrainer, MemHogTrainer, OverspendTrainer, IsolatedMock):
        register(cls())
