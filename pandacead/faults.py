"""Named crash points and I/O fault points for fault-injection tests.

`PANDACEAD_CRASH_AT=<point>` makes the process SIGKILL itself when it reaches
<point> (as a power cut or `kill -9` would). Points: claimed, parsed, planned,
reserved, trained, envelope_published, artifact_published, committed,
settled (a job ended; its success commit may not be durable yet), synced (the
daemon fsynced the ledger's WAL, before removing the spool files it made
durable), error_recorded, error_published. Unset in production: one dict lookup each.

`PANDACEAD_FAIL_AT=<point>:<ERRNO>[,<point>:<ERRNO>...]` makes the operation at
<point> raise OSError(ERRNO) instead (e.g. `publish_artifact:ENOSPC`), for
faults a test cannot produce for real (a disk that fills up between two
writes). Points: publish_envelope, publish_artifact, sync_outbox,
publish_error, commit.
"""

from __future__ import annotations

import errno
import os
import signal

POINTS = (
    "claimed", "parsed", "planned", "reserved", "trained", "envelope_published",
    "artifact_published", "committed", "settled", "synced", "error_recorded", "error_published",
)

FAIL_POINTS = ("publish_envelope", "publish_artifact", "sync_outbox", "publish_error", "commit")


def point(name: str) -> None:
    if os.environ.get("PANDACEAD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fail(name: str) -> None:
    spec = os.environ.get("PANDACEAD_FAIL_AT")
    if not spec:
        return
    for item in spec.split(","):
        where, _, code = item.strip().partition(":")
        if where == name:
            num = getattr(errno, code.strip() or "EIO", None)
            if not isinstance(num, int):
                num = errno.EIO
            raise OSError(num, os.strerror(num))
