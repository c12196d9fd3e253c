"""Built-in trainer selection: MOCK_DP=1 forces mock, else the job's backend, else the config default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pandacead.errors import JobRejected
from pandacead.hookspecs import hookimpl


def default_backend(trainers: Mapping[str, Any], config: Any) -> str:
    wanted = "auto"
    if config is not None:
        wanted = config.trainer.get("default_backend", "auto")
    if wanted == "auto":
        return "opacus" if "opacus" in trainers else "mock"
    return str(wanted)


@hookimpl(trylast=True)
def pandacead_select_trainer(job: Any, trainers: Mapping[str, Any], config: Any) -> str:
    if os.environ.get("MOCK_DP") == "1":
        name = "mock"
    elif job.backend:
        name = job.backend
    else:
        name = default_backend(trainers, config)
    if name not in trainers:
        known = ", ".join(sorted(trainers)) or "none"
        raise JobRejected(
            f"Backend {name!r} is not available on this host (available: {known}).",
            [f"backend: unknown backend {name!r}"],
        )
    return name
