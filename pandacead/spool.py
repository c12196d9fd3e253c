"""Inbox scanning, claiming by atomic rename, safe reading, and the per-daemon spool.

Each running daemon owns one spool directory (state/spool/<owner>/) and holds
an flock on its `.lock` for as long as it lives. A file is claimed by one
`rename` from inbox/ into that directory, so two daemons never take the same
file. At start a daemon adopts the spool directories of daemons that are gone
(their lock is free) and settles what they left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_RDLCK = getattr(fcntl, "F_RDLCK", 0)
F_UNLCK = getattr(fcntl, "F_UNLCK", 2)


def is_candidate(name: str) -> bool:
    """Only `*.json` names, never dotfiles (careful writers use `.x.json` or `x.tmp`, then rename)."""
    return name.endswith(".json") and not name.startswith(".") and len(name) > 5


# Bytes of an inbox name kept in its spool name: the spool prefix adds 28, and
# state/rejected/ and the ledger get the same name, all well under NAME_MAX (255).
MAX_NAME_BYTES = 160


def spool_name(name: str) -> str:
    """The name a claimed file gets in the spool (after a `<ns>-<seq>-` prefix).

    An inbox name is any bytes but "/" and NUL, up to 255 of them. The spool
    name must be printable UTF-8 (the ledger stores it; logs and error reports
    show it) and short enough for the prefix. Names that already are pass
    unchanged; others are cleaned and get a digest of the original bytes.
    """
    raw = os.fsencode(name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable() and len(raw) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    shown = raw.decode("utf-8", "replace")
    if shown.endswith(".json"):
        shown = shown[:-5]
    shown = "".join(c if c.isprintable() and c != "\ufffd" else "_" for c in shown)
    shown = shown.encode("utf-8")[:100].decode("utf-8", "ignore")
    return f"{shown}~{digest}.json"


class ClaimError(Exception):
    """An inbox file could not be moved into the spool (not a race: the file is still there)."""

    def __init__(self, name: str, exc: OSError):
        why = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.EXDEV:
            hint = " (the inbox and the state directory must be on one filesystem)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = " (the daemon must be able to rename files in the inbox and its spool)"
        super().__init__(f"cannot claim {name!r} from the inbox: {why}{hint}")
        self.errno = exc.errno


def new_owner_id() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "file" | "symlink" | "directory" | "fifo" | "socket" | "device" | "other"
    size: int
    mtime: float


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def scan(inbox: Path) -> list[Entry]:
    """Candidate entries of the inbox, oldest first. Never follows links or opens anything."""
    out = []
    try:
        it = os.scandir(inbox)
    except FileNotFoundError:
        return []
    with it:
        for de in it:
            if not is_candidate(de.name):
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append(Entry(de.name, _kind(st.st_mode), st.st_size, st.st_mtime))
    out.sort(key=lambda e: (e.mtime, e.name))
    return out


def being_written(path: Path) -> bool:
    """True when some process still has the file open for writing (Linux read lease test).

    Taking a read lease fails with EAGAIN while the file is open for writing.
    Leases need file ownership or CAP_LEASE; without them this says False and
    the caller relies on the settle time.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.fcntl(fd, F_SETLEASE, F_RDLCK)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EBUSY)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
        return False
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path, owner: str | None = None):
        self.root = root
        self.owner = owner or new_owner_id()
        self.dir = root / self.owner
        self._lock_fd: int | None = None
        self._seq = 0

    def acquire(self) -> None:
        """Create our spool dir and lock it for life.

        Another daemon starting at the same moment may see the new dir before
        we lock it, take it for a dead daemon's, lock it and remove it. So
        after locking we check that the lock file we hold is still the one in
        our dir, and start over under a new name if not.
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _attempt in range(20):
            fd = -1
            try:
                self.dir.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.path.samestat(os.fstat(fd), os.stat(self.dir / ".lock")):
                    self._lock_fd = fd
                    return
            except (FileNotFoundError, BlockingIOError):
                pass
            if fd >= 0:
                os.close(fd)
            self.owner = new_owner_id()
            self.dir = self.root / self.owner
            time.sleep(0.01)
        raise RuntimeError(f"cannot lock a spool directory under {self.root}")

    def release(self) -> None:
        """Give up the spool dir; it is removed when empty."""
        if self._lock_fd is None:
            return
        if not self.pending():
            with contextlib.suppress(OSError):
                os.unlink(self.dir / ".lock")
                os.rmdir(self.dir)
        os.close(self._lock_fd)
        self._lock_fd = None

    def pending(self) -> list[Path]:
        """Job files in our spool, in claim order."""
        if not self.dir.exists():
            return []
        return sorted(p for p in self.dir.iterdir() if not p.name.startswith("."))

    def adopt_orphans(self) -> list[str]:
        """Move files from the spools of dead daemons into ours; returns the names adopted."""
        adopted: list[str] = []
        for d in sorted(self.root.iterdir()) if self.root.exists() else []:
            if d == self.dir or not d.is_dir() or d.is_symlink():
                continue
            try:
                fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its daemon is alive
                for p in sorted(d.iterdir()):
                    if p.name.startswith("."):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(p, self.dir / p.name)
                        adopted.append(p.name)
                with contextlib.suppress(OSError):
                    os.unlink(d / ".lock")
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            finally:
                os.close(fd)
        return adopted

    def claim(self, inbox: Path, name: str, account: str | None = None) -> Path | None:
        """Atomically take inbox/name; None if someone else took it first.

        `account`: the buyer whose inbox (inbox/<account>/) `inbox` is; the
        spool name records it (`<ns>-<seq>@<account>@<name>`), so the account
        survives a crash and comes from where the file was, never from the job.
        Raises ClaimError when the file is there but cannot be moved; it then
        stays in the inbox, untouched.
        """
        self._seq += 1
        sep = f"@{account}@" if account else "-"
        target = self.dir / f"{time.time_ns():020d}-{self._seq:06d}{sep}{spool_name(name)}"
        try:
            os.rename(inbox / name, target)
        except FileNotFoundError:
            if not os.path.lexists(inbox / name):
                return None  # another daemon took it
            raise ClaimError(name, OSError(errno.ENOENT, f"the spool directory {self.dir} is gone")) from None
        except OSError as exc:
            raise ClaimError(name, exc) from None
        return target


_BUYER_SPOOLED = re.compile(r"^(\d+-\d+)@([A-Za-z0-9][A-Za-z0-9._-]{0,127})@(.+)$")


def spooled_account(spooled: Path) -> str | None:
    """The buyer account whose inbox a spooled file came from; None for the admin's inbox."""
    m = _BUYER_SPOOLED.match(spooled.name)
    return m.group(2) if m else None


def original_name(spooled: Path) -> str:
    """The inbox name a spooled file had."""
    m = _BUYER_SPOOLED.match(spooled.name)
    if m:
        return m.group(3)
    parts = spooled.name.split("-", 2)
    return parts[2] if len(parts) == 3 else spooled.name


class SpecialFile(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class Oversized(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def read_job_file(path: Path, max_bytes: int) -> bytes:
    """Read a claimed file without following links, blocking on FIFOs or reading past max_bytes."""
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    if kind != "file":
        raise SpecialFile(kind)
    if st.st_size > max_bytes:
        raise Oversized(st.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpecialFile("symlink") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFile(_kind(st.st_mode))
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Oversized(len(data))
    return data
