"""Built-in trainer selection: MOCK_DP=1 forces mock, else the job's backend, else the config default.

Whatever is selected, the pipeline refuses a non-private trainer (mock) on
private data before planning (`Pipeline.select`); `auto` only ever picks a
differentially private trainer and never falls back to mock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pandacead.errors import JobRejected
from pandacead.hookspecs import hookimpl


def default_backend(trainers: Mapping[str, Any], config: Any) -> str:
    """The configured default; for "auto" opacus when installed, else "" (none: never mock)."""
    wanted = "auto"
    if config is not None:
        wanted = config.trainer.get("default_backend", "auto")
    if wanted == "auto":
        return "opacus" if "opacus" in trainers else ""
    return str(wanted)


@hookimpl(trylast=True)
def pandacead_select_trainer(job: Any, trainers: Mapping[str, Any], config: Any) -> str:
    if os.environ.get("MOCK_DP") == "1":
        name = "mock"
    elif job.backend:
        name = job.backend
    else:
        name = default_backend(trainers, config)
        if not name:
            raise JobRejected(
                "No differentially private training backend is installed on this host"
                ' (default_backend = "auto" needs opacus), so the job cannot run.',
                ["backend: auto found no DP trainer; it never falls back to mock"],
            )
    if name not in trainers:
        known = ", ".join(sorted(trainers)) or "none"
        raise JobRejected(
            f"Backend {name!r} is not available on this host (available: {known}).",
            [f"backend: unknown backend {name!r}"],
        )
    return name
