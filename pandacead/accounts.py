"""Buyer accounts on a multi-user host: who may charge which account (docs/accounts.md).

A buyer is authenticated by the file system. `pandacead buyers add NAME
--user U` creates `inbox/NAME/` and `outbox/NAME/`; only the unix user U and
the service (the group of the home's state directory) can write the inbox
and read the outbox. The daemon takes the paying account from the
directory a job was dropped in, never from the job; a job there naming
another `user_id` is refused with nothing charged. The top-level `inbox/`
stays the admin's trusted path, where `user_id` comes from the job.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pandacead.jobs import valid_id

# Short enough that a spool name (prefix, account, inbox name) stays under NAME_MAX.
MAX_ACCOUNT_CHARS = 48
# inbox/<account>/: the buyer writes (and may withdraw) jobs, the service takes them; setgid so
# files carry the service group. outbox/<account>/: the buyer reads and lists, only the service writes.
INBOX_MODE = 0o2770
OUTBOX_MODE = 0o2570


def valid_account(name: object) -> bool:
    """An account name usable as a directory: an id, no `.json` suffix (that is a job file's), not too long."""
    return (
        valid_id(name) and len(str(name)) <= MAX_ACCOUNT_CHARS
        and not str(name).lower().endswith(".json") and str(name) not in (".", "..")
    )


def buyer_inboxes(inbox: Path) -> list[tuple[str, Path]]:
    """The buyer inboxes under inbox/: real subdirectories (never links) with account names, sorted."""
    out = []
    try:
        it = os.scandir(inbox)
    except FileNotFoundError:
        return []
    with it:
        for de in it:
            if not valid_account(de.name):
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append((de.name, Path(de.path)))
    return sorted(out)


def service_gid(settings: Any) -> int:
    """The service's group: that of the home's state directory (the daemon's own, mode 0700)."""
    try:
        return os.stat(settings.state).st_gid
    except OSError:
        return os.getegid()


def resolve_user(user: str | None, uid: int | None) -> tuple[int, str | None]:
    """(uid, login name) for `--user NAME` or `--uid N`; the invoking user when neither is given."""
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"there is no unix user {user!r} on this host") from None
        if uid is not None and uid != pw.pw_uid:
            raise ValueError(f"--uid {uid} is not the uid of {user} ({pw.pw_uid})")
        return pw.pw_uid, user
    if uid is None:
        uid = os.getuid()
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, None


@dataclass(frozen=True)
class BuyerDirs:
    account: str
    inbox: Path
    outbox: Path
    uid: int
    gid: int
    user: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"account": self.account, "inbox": str(self.inbox), "outbox": str(self.outbox),
                "uid": self.uid, "gid": self.gid, "user": self.user}


def _own_dir(path: Path, uid: int, gid: int, mode: int) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} exists and is not a directory")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            os.fchown(fd, uid, gid)
        except PermissionError:
            raise ValueError(
                f"cannot give {path} to uid {uid}: run `pandacead buyers add` as root (or as that user)"
            ) from None
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def create_buyer_dirs(settings: Any, account: str, uid: int, user: str | None) -> BuyerDirs:
    """inbox/<account>/ and outbox/<account>/ with the ownership and modes of docs/accounts.md."""
    if not valid_account(account):
        raise ValueError(
            f"{account!r} is not a valid account name (letters, digits, . _ -; at most {MAX_ACCOUNT_CHARS},"
            " not ending in .json)"
        )
    gid = service_gid(settings)
    for top in (settings.home, settings.inbox, settings.outbox):
        # A buyer must be able to pass through the home, inbox/ and outbox/ (search, never
        # list or write) to reach its own directory; a layout with `others` locked out (a
        # strict umask at `init`) gets o+x.
        mode = stat.S_IMODE(os.stat(top).st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(top, mode | stat.S_IXOTH)
    inbox, outbox = settings.inbox / account, settings.outbox / account
    _own_dir(inbox, uid, gid, INBOX_MODE)
    _own_dir(outbox, uid, gid, OUTBOX_MODE)
    return BuyerDirs(account, inbox, outbox, uid, gid, user)


def remove_buyer_dirs(settings: Any, account: str) -> list[str]:
    """Remove inbox/<account>/ (refused while jobs wait in it); the outbox stays for the buyer to fetch."""
    inbox = settings.inbox / account
    if not inbox.is_dir() or inbox.is_symlink():
        return []
    waiting = [p.name for p in inbox.iterdir()]
    if waiting:
        raise ValueError(f"{inbox} still holds {len(waiting)} file(s); settle or remove them first")
    inbox.rmdir()
    return [str(inbox)]


def describe_dir(path: Path) -> dict[str, Any] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return {"path": str(path), "uid": st.st_uid, "gid": st.st_gid, "mode": oct(stat.S_IMODE(st.st_mode))}
