"""pandacead_opacus: the "opacus" trainer backend (DP-SGD with Opacus), a pluggy plugin.

Registered through the ``pandacead`` entry-point group. Importing this package
is cheap: torch and opacus are imported only when a job is planned or
trained (in pandacead's worker process). If either is not installed, the
backend is simply not registered.

Modules: `trainer` (OpacusTrainer: plan/train), `privacy` (schedule,
accountants, σ calibration, RDP curve), `training` (`train_arrays`, shared
with the syft backend), `models` (architectures, safetensors export,
`load_model`, `predict`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from pandacead.hookspecs import hookimpl

__all__ = ["available", "pandacead_register_trainers"]


def available() -> bool:
    """True if torch and opacus can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))


@hookimpl
def pandacead_register_trainers(register: Callable[[Any], None]) -> None:
    if not available():
        return
    from .trainer import OpacusTrainer

    register(OpacusTrainer())
