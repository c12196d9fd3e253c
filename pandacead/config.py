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
        "max_attempts": 3,  # crashes a job may survive before it is failed (a graceful hand-back is none)
        "drain_timeout": 60.0,  # SIGTERM: seconds running jobs may finish before they are handed back
        "retry_seconds": 5.0,  # a job deferred by a host problem (outbox full/read-only, ledger locked)
        "retry_max_seconds": 300.0,  # ... is retried with exponential backoff up to this
        "once_retries": 3,  # `run --once` gives up on a deferred job after this many tries (exit 1)
        "outbox_min_free_bytes": 1_048_576,  # below this free space nothing new is claimed
        "progress_log_seconds": 10.0,  # per-epoch INFO lines of a long job: at most one this often
    },
    "budget": {
        "default_epsilon": 10.0,
        "default_delta": 1e-3,
        "composition": "basic",
        "approx_delta_share": 0.1,
        # A private dataset's total (ε, δ) over all buyers when its [datasets.NAME] names none.
        "dataset_epsilon": 10.0,
        "dataset_delta": 1e-3,
    },
    "trainer": {
        "default_backend": "auto",  # "auto": opacus when installed, else jobs are refused (never mock)
        "timeout_seconds": 900.0,
        "memory_limit_mb": 4096,
        "torch_threads": 1,
        "accountant": "prv",
        "grad_sample_mode": "auto",  # ghost clipping for expected batches >= 64, else hooks
        "fast_path": "auto",  # book-keeping DP-SGD for Linear-only models; "off": always Opacus
        "search_constant_work": True,  # a search trains all M candidates: its run time does not reveal K
        "secure_mode": False,
        "max_steps": 200_000,
        "worker_max_jobs": 50,  # a warm worker is replaced after this many jobs
        "prewarm": "auto",  # start and warm workers at daemon start: "auto" (the default backend), a list, or false
        "preload": ["torch", "opacus"],  # modules a worker imports while warming
        "warm_timeout": 300.0,
        "options": {},  # free-form: read by trainer plugins (ctx.options)
        "device": "auto",  # "auto" | "cpu" | "cuda" | "cuda:N" (docs/scale.md)
        "world_size": 1,  # processes (GPUs) one job trains on: Opacus DPDDP when > 1
        "max_physical_batch_size": 0,  # > 0: Opacus's BatchMemoryManager splits larger Poisson batches
        "cuda_memory_fraction": 0.9,  # torch.cuda.set_per_process_memory_fraction for a CUDA worker
        "device_memory_mb": 0,  # admission: device memory a job may use (0: ask the device, or memory_limit_mb on CPU)
    },
    "executor": {
        "kind": "local",  # "local": this host's workers; "ray": train on a Ray cluster (docs/scale.md)
        "address": "",  # Ray: "auto" on a cluster node, or "HOST:PORT" of the head
        "namespace": "pandacead",
        "node_home": "",  # the home's path on the nodes (default: the same path as here)
        "num_cpus": 1,  # Ray resources one training task holds
        "num_gpus": 0,
        "max_retries": 3,  # re-runs of a task whose node or worker died (at-least-once delivery)
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
# An account's allowance when it is first seen on the admin's own inbox (0: only
# accounts an admin set up). Buyer accounts (inbox/<account>/) exist only once
# the admin creates them: `pandacead buyers add NAME --user UNIXUSER`.
default_epsilon = 10.0
default_delta = 1e-3
composition = "basic"   # "basic": ε and δ add up; "rdp": Rényi filter (docs/accounting.md)
# Every job is also charged to the dataset it touches: the bound on what its data
# subjects can lose, across all buyers. For private datasets that name no budget:
dataset_epsilon = 10.0  # 0: such a dataset admits nothing
dataset_delta = 1e-3

[trainer]
default_backend = "auto"   # "auto": opacus when installed, else refused (never mock)
timeout_seconds = 900
memory_limit_mb = 4096
torch_threads = 1
accountant = "prv"      # "prv" (tighter) or "rdp"
fast_path = "auto"      # "auto": book-keeping DP-SGD for Linear/ReLU models (same mechanism); "off": always Opacus
search_constant_work = true  # a search trains all M (= candidates.max) candidates, so its run time hides K
prewarm = "auto"        # start workers at daemon start and import torch/opacus there
device = "auto"         # "auto" | "cpu" | "cuda" | "cuda:N"; world_size = N trains one job on N GPUs (docs/scale.md)

[executor]
kind = "local"          # "ray": train on a Ray cluster (address = "HOST:PORT"); this daemon still admits and charges

[signing]
key = "state/keys/ed25519.pem"

[logging]
level = "INFO"     # DEBUG | INFO | WARNING | ERROR
format = "auto"    # "auto" (JSON under systemd, text on a terminal) | "json" | "text"

# Datasets this host offers. `synthetic` is built in (and public: it needs no budget).
# [datasets.patients]
# kind = "csv"            # csv | npz | parquet
# path = "data/patients.csv"
# label = "outcome"
# task = "classification" # or "regression"
# owner = "clinic-a"      # who the data belongs to (shown by `pandacead datasets`)
# epsilon_budget = 3.0    # total ε over all buyers and jobs (default: [budget] dataset_epsilon)
# delta_budget = 1e-5     # total δ (default: [budget] dataset_delta)
# rows = 5000             # the PUBLIC row count DP-SGD plans with (the true count stays private)
# public = false          # data is private unless declared public (then no budget applies; docs/privacy.md)
# bounds = { age = [0, 120] }          # public bounds (or bounds = [low, high] for all);
# categories = { smoker = ["no", "yes"] }  # declared values of text columns
# classes = ["healthy", "ill"]         # see docs/preprocessing.md
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
    return _env_overrides_named(environ)[0]


def _env_overrides_named(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The overrides, and for each dotted key the variable that set it."""
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith("PANDACEAD_") or "__" not in name:
            continue
        section, _, key = name[len("PANDACEAD_"):].lower().partition("__")
        if section and key:
            out.setdefault(section, {})[key] = _env_value(text)
            names[f"{section}.{key}"] = name
    return out, names


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    if home is None:
        home = os.environ.get("PANDACEAD_HOME") or os.getcwd()
    return Path(home).expanduser().resolve()


@dataclass
class Settings:
    home: Path
    data: dict[str, Any] = field(default_factory=dict)
    #: Where each value came from: dotted key -> "default" | "file" | "env PANDACEAD_…" (`config show`).
    sources: dict[str, str] = field(default_factory=dict)

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

    def where(self, key: str) -> str:
        """Where a dotted key's value was set, for error messages: "in <file>" or "in the environment variable …"."""
        src = self.sources.get(key, "default")
        if src.startswith("env "):
            return f"in the environment variable {src[4:]}"
        if src == "default":
            return "(the default)"
        return f"in {self.home / CONFIG_NAME}"


def load_settings(
    home: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Defaults < pandacead.toml < environment."""
    root = resolve_home(home)
    environ = dict(os.environ if environ is None else environ)
    data = copy.deepcopy(DEFAULTS)
    cfg = root / CONFIG_NAME
    from_file: dict[str, Any] = {}
    if cfg.exists():
        try:
            from_file = tomllib.loads(cfg.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Cannot read the configuration {cfg}: {exc}.") from None
        check_known(from_file, lambda key: f"in {cfg}")
        data = _merge(data, from_file)
    env, env_names = _env_overrides_named(environ)
    check_known(env, lambda key: f"in the environment variable {env_names.get(key) or _env_name(key)}")
    data = _merge(data, env)
    sources = {k: "default" for k in _flatten(DEFAULTS)}
    sources.update({k: "file" for k in _flatten(from_file)})
    sources.update({k: f"env {n}" for k, n in env_names.items()})
    settings = Settings(home=root, data=data, sources=sources)
    _check(data, cfg, settings.where)
    return settings


def _check(data: dict[str, Any], cfg: Path, where: Any = None) -> None:
    def at(key: str) -> str:
        return where(key) if where is not None else f"in {cfg}"

    b = data["budget"]
    for key in ("default_epsilon", "default_delta", "dataset_epsilon", "dataset_delta"):
        v = b.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or v != v or v == float("inf"):
            raise ConfigError(f"budget.{key} {at('budget.' + key)} must be a finite number >= 0, not {v!r}.")
    if b.get("composition") not in ("basic", "rdp"):
        raise ConfigError(
            f"budget.composition {at('budget.composition')} must be \"basic\" or \"rdp\", not {b.get('composition')!r}."
        )
    from pandacead.ledger.policy import policy_for

    if not isinstance(data.get("datasets"), dict):
        raise ConfigError(f"datasets {at('datasets')} must be a table of [datasets.NAME] tables.")
    for name, spec in data["datasets"].items():
        if isinstance(spec, dict):
            try:
                policy_for(name, spec, float(b["dataset_epsilon"]), float(b["dataset_delta"]))
            except ValueError as exc:
                raise ConfigError(f"{exc} ({at('datasets.' + name)}).") from None
    d = data["daemon"]
    if not isinstance(d.get("workers"), int) or isinstance(d.get("workers"), bool) or d["workers"] < 1:
        raise ConfigError(f"daemon.workers {at('daemon.workers')} must be an integer >= 1, not {d.get('workers')!r}.")
    from pandacead.devices import check_config as check_device
    from pandacead.executor import check_config as check_executor

    check_device(data["trainer"], cfg)
    check_executor(data["executor"], cfg)


# --------------------------------------------------------------------------- known keys

#: Keys a `[datasets.NAME]` table may have (pandacead.datasets and the dataset ledger read them).
DATASET_KEYS = frozenset({
    "kind", "path", "label", "task", "holdout_fraction", "rows", "features", "seed", "n_classes",
    "owner", "epsilon_budget", "delta_budget", "public", "bounds", "categories", "classes", "extractor",
    "input_shape", "description",
})


def known_keys() -> dict[str, frozenset[str] | None]:
    """Section -> the keys it may have, derived from DEFAULTS (None: a table of free-form names, `[datasets]`).

    A key whose default is an empty table (`trainer.options`) holds free-form keys for plugins.
    A new setting is known as soon as it has a default in DEFAULTS.
    """
    out: dict[str, frozenset[str] | None] = {}
    for section, table in DEFAULTS.items():
        out[section] = None if table == {} else frozenset(table)
    return out


def _free_form(section: str, key: str) -> bool:
    default = DEFAULTS.get(section, {}).get(key)
    return isinstance(default, dict) and not default


def _suggest(word: str, choices: Any, fmt: str = "{}") -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {fmt.format(close[0])}?"
    return f" (known: {', '.join(fmt.format(c) for c in sorted(choices))})."


def check_known(raw: dict[str, Any], where: Any) -> None:
    """Refuse unknown sections and keys (a typo must not be silently ignored), naming them and a suggestion."""
    known = known_keys()
    for section, table in raw.items():
        if section not in known:
            raise ConfigError(f"Unknown section [{section}] {where(section)}{_suggest(section, known, '[{}]')}")
        keys = known[section]
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] {where(section)} must be a table, not {table!r}.")
        if keys is None:  # [datasets.NAME]
            for name, spec in table.items():
                if not isinstance(spec, dict):
                    raise ConfigError(f"[{section}.{name}] {where(f'{section}.{name}')} must be a table, not {spec!r}.")
                for key in spec:
                    if key not in DATASET_KEYS:
                        dotted = f"{section}.{name}.{key}"
                        raise ConfigError(
                            f"Unknown key {dotted} {where(dotted)}{_suggest(key, DATASET_KEYS, f'{section}.{name}.{{}}')}"
                        )
            continue
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if key not in keys:
                raise ConfigError(f"Unknown key {dotted} {where(dotted)}{_suggest(key, keys, f'{section}.{{}}')}")
            if _free_form(section, key) and not isinstance(value, dict):
                raise ConfigError(f"{dotted} {where(dotted)} must be a table, not {value!r}.")


def _env_name(key: str) -> str:
    section, _, rest = key.partition(".")
    return f"PANDACEAD_{section.upper()}__{rest.upper()}"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values; sections and `[datasets.NAME]` tables are walked, other values are leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and (not prefix or prefix == "datasets."
                                        or prefix.count(".") == 1 and prefix.startswith("datasets.")):
            if value:
                out.update(_flatten(value, dotted + "."))
            elif prefix:
                out[dotted] = value
        else:
            out[dotted] = value
    return out


def effective(settings: Settings) -> list[dict[str, Any]]:
    """Every effective value with where it came from (`pandacead config show`)."""
    rows = []
    for key, value in sorted(_flatten(settings.data).items()):
        rows.append({"key": key, "value": value, "source": settings.sources.get(key, "default")})
    return rows
