"""Named crash points for fault-injection tests.

`PANDACEAD_CRASH_AT=<point>` makes the process SIGKILL itself when it reaches
<point> (as a power cut or `kill -9` would). Points: claimed, parsed, planned,
reserved, trained, envelope_published, artifact_published, committed,
error_recorded, error_published. Unset in production: one dict lookup each.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "claimed", "parsed", "planned", "reserved", "trained", "envelope_published",
    "artifact_published", "committed", "error_recorded", "error_published",
)


def point(name: str) -> None:
    if os.environ.get("PANDACEAD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
