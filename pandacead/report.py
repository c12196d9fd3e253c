"""`pandacead report`: one self-contained HTML page of budgets over time and per-job curves."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def parse_time(text: Any) -> float | None:
    """A ledger timestamp (ISO 8601, UTC) as a POSIX time, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
