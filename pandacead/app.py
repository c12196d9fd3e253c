"""Assembles a running pandacead: settings, plugins, signing key, datasets, trainer context."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pandacead import __version__
from pandacead.config import Settings
from pandacead.hookspecs import hookimpl
from pandacead.plugins import PluginInfo, Plugins, load_plugins
from pandacead.signing import Ed25519Signer, keyid, load_private_key, load_public_key
from pandacead.trainers import DatasetInfo, TrainerContext

log = logging.getLogger("pandacead")


class SignerPlugin:
    """The built-in Ed25519 signer, registered like any other `pandacead_sign_artifact` plugin."""

    def __init__(self, signer: Ed25519Signer):
        self.signer = signer

    @hookimpl
    def pandacead_sign_artifact(self, payload: bytes) -> dict[str, str]:
        return self.signer.sign(payload)


def trusted_keys(settings: Settings) -> dict[str, Any]:
    """Public keys that `verify` and recovery accept: the home's key(s) and state/keys/trusted/*.pub."""
    keys: dict[str, Any] = {}
    candidates = [settings.key_path.with_suffix(".pub")]
    for d in (settings.state / "keys", settings.state / "keys" / "trusted"):
        if d.is_dir():
            candidates.extend(sorted(d.glob("*.pub")))
    for path in candidates:
        try:
            pub = load_public_key(path)
        except (OSError, Exception):
            continue
        keys[keyid(pub)] = pub
    return keys


def describe_datasets(settings: Settings) -> tuple[dict[str, DatasetInfo], dict[str, str]]:
    from pandacead import datasets

    specs: dict[str, Any] = dict(datasets.builtin_specs())
    for name, spec in (settings.datasets or {}).items():
        specs[name] = {**specs.get(name, {}), **spec}
    infos: dict[str, DatasetInfo] = {}
    errors: dict[str, str] = {}
    for name, spec in specs.items():
        try:
            infos[name] = datasets.describe(name, spec, settings.home)
        except Exception as exc:
            errors[name] = str(exc)
            log.error("dataset %s is unavailable: %s", name, exc)
    return infos, errors


def build_context(settings: Settings, key: bytes | None = None) -> TrainerContext:
    """The trainer context; `key` is the host secret (default: the noise key, if readable)
    from which each dataset's public commitment and held-out split seed are derived."""
    from pandacead import datasets

    infos, errors = describe_datasets(settings)
    if key is None:
        try:
            key = load_noise_key(settings)
        except Exception:  # a tool without access to the secret: random ids, OS-entropy split
            key = b""
    infos = {name: datasets.keyed(info, key) for name, info in infos.items()}
    t = settings.trainer
    return TrainerContext(
        datasets=infos,
        state_dir=str(settings.state),
        torch_threads=int(t.get("torch_threads", 1)),
        accountant=str(t.get("accountant", "prv")),
        grad_sample_mode=str(t.get("grad_sample_mode", "auto")),
        fast_path=str(t.get("fast_path", "auto")),
        secure_mode=bool(t.get("secure_mode", False)),
        max_steps=int(t.get("max_steps", 200_000)),
        # checkpoints: trainers may resume a handed-back job from state/checkpoints/ (docs/lifecycle.md)
        options={"home": str(settings.home), "dataset_errors": errors, "checkpoints": True,
                 "timeout_seconds": float(t.get("timeout_seconds", 900)),
                 "search_constant_work": bool(t.get("search_constant_work", True)), **(t.get("options") or {})},
        device=str(t.get("device", "auto")),
        world_size=int(t.get("world_size", 1)),
        max_physical_batch_size=int(t.get("max_physical_batch_size", 0)),
        memory={k: t[k] for k in ("memory_limit_mb", "device_memory_mb", "cuda_memory_fraction") if k in t},
    )


NOISE_KEY_NAME = "noise.key"


def noise_key_path(settings: Settings) -> Path:
    return settings.state / "keys" / NOISE_KEY_NAME


def ensure_noise_key(settings: Settings) -> bool:
    """A host secret (0600) from which each job's noise/sampling seed is derived. False if present."""
    import os

    path = noise_key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def load_noise_key(settings: Settings) -> bytes:
    import os
    import stat

    from pandacead.errors import ConfigError

    path = noise_key_path(settings)
    ensure_noise_key(settings)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        raise ConfigError(f"The noise key {path} must be a regular file readable only by its owner (chmod 600).")
    data = path.read_bytes()
    if len(data) < 16:
        raise ConfigError(f"The noise key {path} is too short; delete it to have a new one made.")
    return data


class App:
    def __init__(self, settings: Settings, *, with_key: bool = True, with_datasets: bool = True):
        self.settings = settings
        self.signer: Ed25519Signer | None = None
        if with_key:
            self.signer = Ed25519Signer(load_private_key(settings.key_path))
        self.plugins: Plugins = self._load_plugins(settings)
        self.noise_key = load_noise_key(settings) if with_key else b""
        self.public_keys = trusted_keys(settings)
        if self.signer is not None:
            self.public_keys[self.signer.keyid] = self.signer.key.public_key()
        self.ctx = build_context(settings, self.noise_key or None) if with_datasets else None

    def _load_plugins(self, settings: Settings) -> Plugins:
        plugins = load_plugins(settings)
        if self.signer is not None:
            plugins.register(
                SignerPlugin(self.signer), "signer",
                PluginInfo(name="signer", module="pandacead.app", dist="pandacead", version=__version__, builtin=True),
            )
        return plugins

    def reload(self, settings: Settings) -> bool:
        """Apply a new configuration; True if the plugins were loaded again ([plugins] changed)."""
        changed = settings.plugins != self.settings.plugins
        if changed:
            self.plugins = self._load_plugins(settings)
        self.settings = settings
        self.ctx = build_context(settings, self.noise_key or None)
        return changed


def ensure_home(settings: Settings) -> list[str]:
    """Create the home's directories, config, ledger and key; returns what was created."""
    import os

    from pandacead.config import CONFIG_NAME, DEFAULT_TOML
    from pandacead.ledger import Ledger
    from pandacead.signing import generate_key

    created = []
    cfg = settings.home / CONFIG_NAME
    # Explicit modes: with a careless umask (0) the config would be world-writable, and
    # whoever can edit it chooses the plugins (code) the daemon loads.
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not cfg.exists():
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(DEFAULT_TOML)
        created.append(str(cfg))
    for d, mode in ((settings.inbox, 0o775), (settings.outbox, 0o755), (settings.state, 0o700),
                    (settings.spool, 0o700), (settings.key_path.parent, 0o700)):
        if not d.exists():
            d.mkdir(parents=True, mode=mode)
            created.append(str(d) + "/")
    if not settings.ledger_path.exists():
        Ledger.from_settings(settings, actor="init").close()
        created.append(str(settings.ledger_path))
    else:
        Ledger.from_settings(settings, actor="init").close()  # applies pending migrations
    if generate_key(Path(settings.key_path)):
        created.append(str(settings.key_path))
    if ensure_noise_key(settings):
        created.append(str(noise_key_path(settings)))
    return created
