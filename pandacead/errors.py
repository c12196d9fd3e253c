"""Exceptions that end a job with an error report."""

from __future__ import annotations


class JobError(Exception):
    """A job cannot be run. `status` is "rejected" (refused, nothing ran) or "failed"."""

    status = "failed"

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = list(details or [])


class JobRejected(JobError):
    """The job was refused before any training: invalid, over budget, replayed, unknown backend."""

    status = "rejected"


class JobFailed(JobError):
    """The job was admitted but did not produce an artifact (crash, timeout, trainer error)."""

    status = "failed"


class Diverged(JobFailed):
    """Training stopped because the DP model became non-finite.

    Decided on the model alone (post-processing of DP outputs), so saying so is
    covered by the job's ε; the job is charged like any that read the data.
    """

    kind = "diverged"


class ConfigError(Exception):
    """The configuration or home directory is unusable."""


class HandedBack(Exception):
    """The daemon is stopping and interrupted the job; it stays spooled and resumes at the next start."""
