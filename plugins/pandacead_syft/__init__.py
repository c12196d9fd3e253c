"""The `syft` trainer: DP-SGD run as a PySyft code request on the earner's own datasite.

The daemon imports this module at start, so it imports neither syft nor
torch: the backend is offered only when syft (the `syft` extra) and the
Opacus backend it trains with are installed, and everything heavy happens
inside the worker process that runs `SyftTrainer`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from pandacead.hookspecs import hookimpl

__all__ = ["available", "pandacead_register_trainers"]

REQUIRES = ("syft", "opacus", "torch", "pandacead_opacus")


def available() -> bool:
    """True when every library the syft backend needs is importable (nothing is imported)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in REQUIRES)
    except (ImportError, ValueError):
        return False


@hookimpl
def pandacead_register_trainers(register: Callable[[Any], None]) -> None:
    if available():
        from pandacead_syft.trainer import SyftTrainer

        register(SyftTrainer())
