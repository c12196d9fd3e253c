"""pandacead-nss: an example third-party trainer plugin for pandacead.

It registers one trainer, ``nss``: differentially private linear regression
(and a linear classifier) from noisy sufficient statistics — the Gaussian
mechanism applied once to XᵀX and Xᵀy — with exact (ε, δ) accounting.
See `pandacead_nss.trainer` for the mechanism and its sensitivity analysis.

pandacead finds this module through the entry point
``[project.entry-points.pandacead] nss = "pandacead_nss"`` and registers it
with pluggy; the hook below is the whole integration.
"""

from __future__ import annotations

from typing import Any

from pandacead.hookspecs import hookimpl
from pandacead_nss.trainer import NSSTrainer

__all__ = ["NSSTrainer", "pandacead_register_trainers"]


@hookimpl
def pandacead_register_trainers(register: Any) -> None:
    register(NSSTrainer())
