"""Logging set-up that fits journald, a terminal, or a log shipper.

Formats (``[log] format`` in the config):

* ``auto``: ``journal`` when stderr is connected to journald, else ``text``.
* ``text``: ``2024-05-01 12:00:00,123 INFO pandacead.daemon: message [job_id=j1]``.
* ``journal``: ``<6>pandacead.daemon: message [job_id=j1]``: a syslog priority prefix
  that journald turns into the entry's PRIORITY, and no timestamp (journald adds its own).
* ``json``: one JSON object per line: ``ts, level, logger, msg`` and any fields passed
  with ``extra=`` (``job_id``, ``user_id``, ...). Under journald each line also carries
  the priority prefix, which journald strips, so the journal entry is the bare object.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal, TextIO, cast

__all__ = [
    "FORMATS",
    "JournalFormatter",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "journal_priority",
    "setup_logging",
    "stream_is_journal",
]

LogFormat = Literal["auto", "text", "journal", "json"]
FORMATS: tuple[str, ...] = ("auto", "text", "journal", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, __file__, 0, "", None, None))
) | {"message", "asctime", "taskName"}

# Shown first, in this order, when present; other extra fields follow sorted by name.
_LEADING_FIELDS = ("job_id", "user_id")

# Marks the handler this module installed, so a second call (SIGHUP) replaces it.
_HANDLER_MARK = "_pandacead_handler"


def journal_priority(levelno: int) -> int:
    """The syslog priority (0 emerg .. 7 debug) for a Python logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno > logging.INFO:  # a custom NOTICE-like level between INFO and WARNING
        return 5
    if levelno >= logging.INFO:
        return 6
    return 7


def stream_is_journal(
    stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """True when `stream` (default: stderr) is the journald stream systemd connected us to.

    systemd sets ``$JOURNAL_STREAM`` to ``DEVICE:INODE`` of that stream; comparing it with
    the stream itself tells a daemon under journald from one whose stderr was redirected.
    """
    env = os.environ if environ is None else environ
    raw = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = raw.partition(":")
    if not sep:
        return False
    target = sys.stderr if stream is None else stream
    try:
        st = os.fstat(target.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (AttributeError, OSError, ValueError):
        # No real file descriptor (StringIO, closed stream) or a malformed variable.
        return False


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached with ``extra=``, leading fields first."""
    found = {
        k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")
    }
    ordered = {k: found.pop(k) for k in _LEADING_FIELDS if k in found}
    ordered.update(sorted(found.items()))
    return ordered


def _with_fields(message: str, record: logging.LogRecord) -> str:
    fields = extra_fields(record)
    # Fields the message already says (per-epoch progress) go to JSON logs only.
    for key in getattr(record, "_json_only", ()):
        fields.pop(key, None)
    if not fields:
        return message
    return message + " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"


class TextFormatter(logging.Formatter):
    """Timestamped lines for a terminal or a plain log file."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return _with_fields(super().formatMessage(record), record)


class JournalFormatter(logging.Formatter):
    """Lines for journald: a ``<N>`` priority prefix on every line, no timestamp."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        return _with_fields(super().formatMessage(record), record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # journald reads the prefix per line, so a traceback's later lines need it too,
        # or they land in the journal at the default priority.
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; with ``journal=True`` each line gets a priority prefix."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, default=str, ensure_ascii=False)
        if self.journal:
            return f"<{journal_priority(record.levelno)}>{line}"
        return line


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(
            f"Unknown log level {level!r}; use debug, info, warning, error or critical."
        )
    return value


def make_formatter(fmt: str, stream: TextIO | None = None) -> logging.Formatter:
    """The formatter for `fmt` ("auto", "text", "journal" or "json") writing to `stream`."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown log format {fmt!r}; use one of {', '.join(FORMATS)}.")
    journal = stream_is_journal(stream)
    if fmt == "json":
        return JsonFormatter(journal=journal)
    if fmt == "journal" or (fmt == "auto" and journal):
        return JournalFormatter()
    return TextFormatter()


def setup_logging(
    level: str | int = "INFO",
    fmt: LogFormat | str = "auto",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger's records to `stream` (default: stderr) in format `fmt`.

    Safe to call again (on SIGHUP): the handler installed by an earlier call is replaced,
    handlers installed by others are left alone. Raises ValueError on an unknown level or format.
    """
    levelno = _parse_level(level)
    target = cast(TextIO, sys.stderr) if stream is None else stream
    handler = logging.StreamHandler(target)
    handler.setFormatter(make_formatter(fmt, target))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    logging.captureWarnings(True)
    # No formatter here prints the caller's file and line, the thread or the process: do not
    # compute them for every record (a stack walk and two lookups each; the logging HOWTO's
    # "Optimization" section). A daemon writes about ten lines per job.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return handler
