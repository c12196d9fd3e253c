"""The systemd notify protocol (sd_notify(3)) in the standard library.

systemd hands a service of ``Type=notify`` the address of a datagram socket in
``$NOTIFY_SOCKET``; the service sends newline-separated ``KEY=VALUE`` lines to
it (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``,
``RELOADING=1``). The protocol is stable and small, so it is written out here
rather than pulled in as a dependency.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. No call ever
raises: a service must not die because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)

# A send must never stall the main loop; systemd reads its socket promptly, so a
# full queue for this long means something is badly wrong and the message is dropped.
_SEND_TIMEOUT = 1.0


def _socket_address(raw: str | None) -> str | bytes | None:
    """The address to send to, or None when it is unset or of a kind this module does not speak."""
    if not raw:
        return None
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # systemd >= 254 may also pass "vsock:CID:PORT" (for VMs); a host daemon never gets one.
    return None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when no watchdog is armed for us.

    Reads ``$WATCHDOG_USEC``; when ``$WATCHDOG_PID`` is set it must name this process
    (a child that inherited the environment is not the one being watched).
    """
    env = os.environ if environ is None else environ
    usec_raw = env.get("WATCHDOG_USEC")
    if not usec_raw:
        return None
    pid_raw = env.get("WATCHDOG_PID")
    if pid_raw:
        try:
            if int(pid_raw) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(usec_raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    The address is read once, when the notifier is made. Each method returns True when
    the message was handed to the socket, False when notification is off or failed.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._raw_address = env.get("NOTIFY_SOCKET")
        self._address = _socket_address(self._raw_address)
        self._watchdog = watchdog_interval(env)
        self._warned = False
        if self._raw_address and self._address is None:
            log.debug(
                "NOTIFY_SOCKET=%r is not a unix socket address; not notifying", self._raw_address
            )

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message made of ``KEY=VALUE`` lines (keys upper-case, values on one line)."""
        if self._address is None or not fields:
            return False
        try:
            lines = []
            for key, value in fields.items():
                text = str(value).replace("\n", " ").replace("\r", " ")
                lines.append(f"{key.upper()}={text}")
            return self._send("\n".join(lines).encode("utf-8", "replace"))
        except Exception:  # never into the caller: notification is best effort
            log.debug("sd_notify failed", exc_info=True)
            return False

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: systemd marks the unit active."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line description of what the service is doing (shown by ``systemctl status``)."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping; send it from the main loop, never from a free-running thread."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """The service has begun shutting down."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """The service has begun reloading its configuration; send ``ready()`` when done.

        Carries ``MONOTONIC_USEC`` (CLOCK_MONOTONIC now), which ``Type=notify-reload``
        (systemd >= 253) needs to tie the message to the reload it asked for.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if status is None:
            return self.notify(RELOADING=1, MONOTONIC_USEC=usec)
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time in the current start, stop or reload (``EXTEND_TIMEOUT_USEC``)."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects a ping, or None; ping at least twice per interval."""
        return self._watchdog

    def _send(self, data: bytes) -> bool:
        assert self._address is not None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.sendto(data, self._address)
            return True
        except OSError as exc:
            # Warn once: a dead notify socket would otherwise flood the log every loop.
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %s: %s", self._raw_address, exc)
            return False
