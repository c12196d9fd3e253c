"""Settings from <home>/pandacead.toml, overridden by PANDACEAD_<SECTION>__<KEY> env vars."""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pandacead.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "pandacead.toml"

DEFAULTS: dict[str, Any] = {
    "paths": {"inbox": "inbox", "outbox": "outbox", "state": "state"},
    "daemon": {
        "workers": 1,  # jobs trained at once
        "rescan_interval": 2.0,  # seconds between full inbox scans (inotify can overflow)
        "settle_seconds": 0.5,  # a scanned file must be unchanged this long before it is taken
        "max_job_bytes": 1_048_576,
        "max_attempts": 3,  # restarts a job may survive before it is failed
        "drain_timeout": 60.0,  # SIGTERM: seconds running jobs may finish before they are handed back
        "retry_seconds": 5.0,  # a job deferred by a host problem (outbox full/read-only, ledger locked)
        "retry_max_seconds": 300.0,  # ... is retried with exponential backoff up to this
        "once_retries": 3,  # `run --once` gives up on a deferred job after this many tries (exit 1)
        "outbox_min_free_bytes": 1_048_576,  # below this free space nothing new is claimed
    },
    "budget": {
        "default_epsilon": 10.0,
        "default_delta": 1e-3,
        "composition": "basic",
        "approx_delta_share": 0.1,
    },
    "trainer": {
        "default_backend": "auto",  # "auto": opacus when installed, else mock
        "timeout_seconds": 900.0,
        "memory_limit_mb": 4096,
        "torch_threads": 1,
        "accountant": "prv",
        "grad_sample_mode": "auto",  # ghost clipping for expected batches >= 64, else hooks
        "fast_path": "auto",  # book-keeping DP-SGD for Linear-only models; "off": always Opacus
        "secure_mode": False,
        "max_steps": 200_000,
        "worker_max_jobs": 50,  # a warm worker is replaced after this many jobs
        "prewarm": "auto",  # start and warm workers at daemon start: "auto" (the default backend), a list, or false
        "preload": ["torch", "opacus"],  # modules a worker imports while warming
        "warm_timeout": 300.0,
    },
    "datasets": {},
    "plugins": {"allow": [], "deny": [], "dirs": []},
    "signing": {"key": "state/keys/ed25519.pem"},
    "logging": {"level": "INFO", "format": "auto"},
}

DEFAULT_TOML = """\
# pandacead configuration. Every key can be overridden by an environment
# variable PANDACEAD_<SECTION>__<KEY>, e.g. PANDACEAD_BUDGET__DEFAULT_EPSILON=5.
# Relative paths are relative to this file's directory (the home).

[paths]
inbox = "inbox"
outbox = "outbox"
state = "state"

[daemon]
workers = 1            # jobs trained at the same time
rescan_interval = 2.0  # seconds between full inbox scans
settle_seconds = 0.5   # a file found by a scan must be unchanged this long
drain_timeout = 60     # SIGTERM: running jobs may finish this long, then are handed back
retry_seconds = 5      # host problems (outbox full or read-only, ledger locked) defer a job;
retry_max_seconds = 300  # it is retried with backoff, keeping its reservation

[budget]
default_epsilon = 10.0  # ε budget of a user not yet in the ledger (0: only users an admin set up)
default_delta = 1e-3
composition = "basic"   # "basic": ε and δ add up; "rdp": Rényi filter (docs/accounting.md)

[trainer]
default_backend = "auto"   # "auto": opacus when installed, else mock
timeout_seconds = 900
memory_limit_mb = 4096
torch_threads = 1
accountant = "prv"      # "prv" (tighter) or "rdp"
fast_path = "auto"      # "auto": book-keeping DP-SGD for Linear/ReLU models (same mechanism); "off": always Opacus
prewarm = "auto"        # start workers at daemon start and import torch/opacus there

[signing]
key = "state/keys/ed25519.pem"

# Datasets this host offers. `synthetic` is built in.
# [datasets.patients]
# kind = "csv"            # csv | npz | parquet
# path = "data/patients.csv"
# label = "outcome"
# task = "classification" # or "regression"
"""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith("PANDACEAD_") or "__" not in name:
            continue
        section, _, key = name[len("PANDACEAD_"):].lower().partition("__")
        if section and key:
            out.setdefault(section, {})[key] = _env_value(text)
    return out


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    if home is None:
        home = os.environ.get("PANDACEAD_HOME") or os.getcwd()
    return Path(home).expanduser().resolve()


@dataclass
class Settings:
    home: Path
    data: dict[str, Any] = field(default_factory=dict)

    def _path(self, value: str) -> Path:
        p = Path(os.path.expandvars(value)).expanduser()
        return p if p.is_absolute() else self.home / p

    @property
    def inbox(self) -> Path:
        return self._path(self.data["paths"]["inbox"])

    @property
    def outbox(self) -> Path:
        return self._path(self.data["paths"]["outbox"])

    @property
    def state(self) -> Path:
        return self._path(self.data["paths"]["state"])

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.db"

    @property
    def spool(self) -> Path:
        return self.state / "spool"

    @property
    def rejected_dir(self) -> Path:
        return self.state / "rejected"

    @property
    def key_path(self) -> Path:
        return self._path(self.data["signing"]["key"])

    @property
    def daemon(self) -> dict[str, Any]:
        return self.data["daemon"]

    @property
    def budget(self) -> dict[str, Any]:
        return self.data["budget"]

    @property
    def trainer(self) -> dict[str, Any]:
        return self.data["trainer"]

    @property
    def plugins(self) -> dict[str, Any]:
        return self.data["plugins"]

    @property
    def datasets(self) -> dict[str, Any]:
        return self.data["datasets"]

    def to_json(self) -> dict[str, Any]:
        return {"home": str(self.home), **self.data}


def load_settings(
    home: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Defaults < pandacead.toml < environment."""
    root = resolve_home(home)
    environ = dict(os.environ if environ is None else environ)
    data = copy.deepcopy(DEFAULTS)
    cfg = root / CONFIG_NAME
    if cfg.exists():
        try:
            data = _merge(data, tomllib.loads(cfg.read_text("utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Cannot read the configuration {cfg}: {exc}.") from None
    data = _merge(data, _env_overrides(environ))
    _check(data, cfg)
    return Settings(home=root, data=data)


def _check(data: dict[str, Any], cfg: Path) -> None:
    b = data["budget"]
    for key in ("default_epsilon", "default_delta"):
        v = b.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or v != v or v == float("inf"):
            raise ConfigError(f"budget.{key} in {cfg} must be a finite number >= 0, not {v!r}.")
    if b.get("composition") not in ("basic", "rdp"):
        raise ConfigError(f"budget.composition in {cfg} must be \"basic\" or \"rdp\", not {b.get('composition')!r}.")
    d = data["daemon"]
    if not isinstance(d.get("workers"), int) or d["workers"] < 1:
        raise ConfigError(f"daemon.workers in {cfg} must be an integer >= 1.")
