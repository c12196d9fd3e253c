"""Empirical privacy audit: a statistically valid lower bound ε̂ on a trainer's true privacy loss.

    from pandacead.audit import AuditSettings, run_audit
    report = run_audit(trainer, AuditSettings(epsilon=1.0, runs=200))
    report.epsilon_lower, report.epsilon_claimed, report.violated

A lower bound above the trainer's claimed ε proves (at the stated
confidence) that the trainer leaks more than it says. Modules: `estimators`
(the statistics: Clopper–Pearson many-runs bound, Steinke–Nasr–Jagielski
one-run bound, the ideal Gaussian mechanism), `canaries` (audit data and
test statistics), `runner` (running a backend), `report` (JSON and PNG).
See docs/audit.md.
"""

from __future__ import annotations

from .runner import (
    METHODS,
    STATISTICS,
    AuditError,
    AuditReport,
    AuditSettings,
    WorkerTrainer,
    audit_backend,
    run_audit,
)

__all__ = [
    "METHODS",
    "STATISTICS",
    "AuditError",
    "AuditReport",
    "AuditSettings",
    "WorkerTrainer",
    "audit_backend",
    "run_audit",
]
