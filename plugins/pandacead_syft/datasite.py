"""The earner's own PySyft datasite, launched once per worker process.

Everything that touches syft lives here; `trainer.py` only sequences it.
syft is imported on first use, never when this module is imported.

Who submits the code: a per-spender data-scientist account, not the owner.
In syft 0.9.5 an admin's call bypasses the input policy and the output
policy altogether (`override_execution_permission`), so owner-submitted
code would make the asset-bound input policy decorative. Submitted by the
spender's own data-scientist account, the job goes through syft's real
request workflow: the request and the code are attributed to the spender,
the spender account cannot read the private asset (only its mock), and
syft checks on execution that the code is called on exactly the approved
asset and job spec. The daemon acts as the data owner: it approves the
request (after the ledger reservation, which happens before `train`) and
denies it again as soon as the job has run, so syft itself refuses a
further call. The account costs one user record per spender and a login
per spender per process (~0.5 s); its password is derived from a secret
in the state directory, so nothing but that directory needs protecting.

Private copies: syft's store holds a copy of each dataset's private arrays.
It lives under `<state>/syft/` with folders 0700 and files 0600 (the worker
runs syft with umask 077 and `restrict` tightens anything syft made before),
so only the service account can read it. The copy is kept while its dataset
is registered and unchanged — uploading it again costs seconds per job — and
deleted from the store when the dataset's version changes; docs/privacy.md
says how to remove it (`rm -r <state>/syft`, rebuilt at the next syft job).
The store names a dataset by its keyed commitment, never by the plain digest.

State: each datasite lives in `<state>/syft/site-<n>/` (`SYFT_TEMP_ROOT`),
`n` being the first slot whose lock this process wins, so concurrent
workers sharing one home never share syft's SQLite store, and a replaced
worker reuses a free slot (its datasets are already uploaded).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pandacead.errors import JobFailed
from pandacead.trainers import DatasetInfo

log = logging.getLogger(__name__)

SITE_NAME = "pandacead-earner"
ASSET_NAME = "arrays"
MOCK_ROWS = 4
MAX_SLOTS = 64
SYFT_LOG_LEVEL = logging.ERROR  # <= ERROR: syft logs the real traceback of user code

Arrays = tuple[Any, Any, Any, Any]  # X_train, y_train, X_test, y_test


@contextlib.contextmanager
def syft_io() -> Iterator[None]:
    """Run syft calls with their chatter in the debug log and the daemon's logging left as it was.

    syft prints banners and results to stdout (which may carry the worker's
    JSON), and `launch` sets the root logger to its own level.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    # syft's server logs every API call at INFO, passwords included.
    logging.getLogger("syft").setLevel(SYFT_LOG_LEVEL)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for line in chatter.getvalue().splitlines():
            if line.strip():
                log.debug("syft: %s", line.strip())


def _not_signing_key_banner(record: logging.LogRecord) -> bool:
    # Server start logs "Hash of the signing key" at CRITICAL: not an operator's concern.
    return not str(record.msg).startswith("Hash of the signing key")


def import_syft() -> Any:
    with syft_io():
        import syft

    return syft


def code_name_for(job_id: str) -> str:
    """A valid, unique syft function name for a job (job ids may hold '.' and '-')."""
    safe = "".join(c if c.isalnum() else "_" for c in job_id)
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:12]
    return f"pandacead_job_{safe}_{digest}"


@dataclass
class Datasite:
    """A launched datasite with its owner client and per-spender clients."""

    root: Path  # <state>/syft/site-<n>
    handle: Any
    admin: Any
    lock_fd: int
    spenders: dict[str, Any] = field(default_factory=dict)
    # dataset name -> (digest, syft dataset id) of what this datasite holds
    assets: dict[str, tuple[str, Any]] = field(default_factory=dict)

    @property
    def syft(self) -> Any:
        return sys.modules["syft"]

    # -- datasets ---------------------------------------------------------------

    def ensure_dataset(self, info: DatasetInfo, load: Callable[[], Arrays]) -> Any:
        """The syft dataset holding `info`'s data, uploaded now if missing or its digest changed."""
        cached = self.assets.get(info.name)
        version = str(info.commitment or info.digest)  # the commitment: no plain digest in syft's store
        if cached is not None and cached[0] == version:
            return cached[1]
        sy = self.syft
        with syft_io():
            current = None
            for dataset in self.admin.api.services.dataset.get_all():
                if dataset.name != info.name:
                    continue
                if dataset.summary == version:
                    current = dataset
                else:
                    log.info("syft: dataset %s changed (now %s); replacing it", info.name, version)
                    self.admin.api.services.dataset.delete(uid=dataset.id)
            if current is None:
                X_train, y_train, X_test, y_test = load()
                private = {
                    "kind": "private",
                    "X_train": X_train,
                    "y_train": y_train,
                    "X_test": X_test,
                    "y_test": y_test,
                }
                dataset = sy.Dataset(
                    name=info.name,
                    summary=version,
                    description=f"pandacead dataset {info.name} ({version})",
                    asset_list=[sy.Asset(name=ASSET_NAME, data=private, mock=mock_arrays(private))],
                )
                self.admin.upload_dataset(dataset)
                current = next(
                    d for d in self.admin.api.services.dataset.get_all() if d.name == info.name
                )
                log.info("syft: uploaded dataset %s (%s)", info.name, version)
        restrict(self.root.parent)
        self.assets[info.name] = (version, current.id)
        return current.id

    # -- spenders ---------------------------------------------------------------

    def spender(self, user_id: str) -> Any:
        """A logged-in data-scientist client for `user_id`, created on first use."""
        client = self.spenders.get(user_id)
        if client is not None:
            return client
        email = f"{hashlib.sha256(user_id.encode()).hexdigest()[:24]}@spender.pandacead"
        password = hmac.new(self._secret(), user_id.encode(), hashlib.sha256).hexdigest()
        with syft_io():
            users = self.admin.api.services.user.search(email=email)
            if not users:
                self.admin.api.services.user.create(
                    name=user_id,
                    email=email,
                    password=password,
                    password_verify=password,
                    institution="pandacead spender",
                )
            client = self.handle.login(email=email, password=password)
        self.spenders[user_id] = client
        return client

    def _secret(self) -> bytes:
        path = self.root / "spender.secret"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
            return path.read_bytes()

    # -- code requests ------------------------------------------------------------

    def asset_for(self, client: Any, dataset_id: Any) -> Any:
        with syft_io():
            for dataset in client.api.services.dataset.get_all():
                if dataset.id == dataset_id:
                    return dataset.assets[ASSET_NAME]
        raise JobFailed(f"The syft dataset {dataset_id} is not visible to the spender's account.")

    def find_request(self, request_id: Any) -> Any:
        with syft_io():
            return self.admin.api.services.request.get_by_uid(uid=request_id)

    def land(self) -> None:
        with contextlib.suppress(Exception), syft_io():
            self.handle.land()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def mock_arrays(private: dict[str, Any]) -> dict[str, Any]:
    """A tiny, data-free stand-in with the private arrays' column shapes and dtypes."""
    import numpy as np

    mock: dict[str, Any] = {"kind": "mock"}
    for key, value in private.items():
        if key == "kind":
            continue
        arr = np.asarray(value)
        mock[key] = np.zeros((min(MOCK_ROWS, len(arr)), *arr.shape[1:]), dtype=arr.dtype)
    return mock


_SITE: Datasite | None = None


def current() -> Datasite | None:
    """The datasite launched in this process, if any (tests use this)."""
    return _SITE


def get(state_dir: str | os.PathLike[str]) -> Datasite:
    """This process's datasite under `state_dir`, launched on first use and then reused."""
    global _SITE
    base = Path(state_dir).resolve() / "syft"
    if _SITE is not None:
        if _SITE.root.parent == base:
            return _SITE
        _SITE.land()
        _SITE = None
    _SITE = _launch(base)
    return _SITE


def shutdown() -> None:
    global _SITE
    if _SITE is not None:
        _SITE.land()
        _SITE = None


def restrict(base: Path) -> None:
    """Folders 0700, files 0600 under `base`: syft's store holds private data."""
    for dirpath, _dirnames, filenames in os.walk(base):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if not os.path.islink(path):
                    os.chmod(path, 0o600)


def _claim_slot(base: Path) -> tuple[Path, int]:
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    for n in range(MAX_SLOTS):
        fd = os.open(base / f"site-{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return base / f"site-{n}", fd
    raise JobFailed(f"All {MAX_SLOTS} syft datasite slots under {base} are in use.")


def _launch(base: Path) -> Datasite:
    os.umask(0o077)  # this worker process writes syft's copies of private data: service-only
    root, fd = _claim_slot(base)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        restrict(base)
        # Absolute, so syft's Path(tempfile.gettempdir(), SYFT_TEMP_ROOT) ignores /tmp.
        os.environ["SYFT_TEMP_ROOT"] = str(root)
        os.environ.setdefault("MPLCONFIGDIR", str(base / "mpl"))
        sy = import_syft()
        logging.getLogger("syft.server.server").addFilter(_not_signing_key_banner)
        with syft_io():
            handle = sy.orchestra.launch(
                name=SITE_NAME, reset=False, log_level=SYFT_LOG_LEVEL, dev_mode=False
            )
            # The in-process server's root client: owner rights without a password.
            admin = handle.python_server.root_client
    except Exception as exc:
        os.close(fd)
        raise JobFailed(
            f"The syft datasite under {root} could not start: {type(exc).__name__}: {exc}",
            [repr(exc)],
        ) from exc
    log.info("syft %s datasite %s ready under %s", sy.__version__, SITE_NAME, root)
    return Datasite(root=root, handle=handle, admin=admin, lock_fd=fd)
