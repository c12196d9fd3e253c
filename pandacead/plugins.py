"""The plugin manager: built-in plugins, entry points of group "pandacead", local plugin dirs.

Plugins are loaded one at a time; one that fails to import or register is
logged and listed with its error, and the rest carry on.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from pandacead import hookspecs

log = logging.getLogger("pandacead.plugins")

# Built-ins register through the same hooks a third party uses.
BUILTINS = {
    "mock": "pandacead.default_mock",
    "trainer-selection": "pandacead.default_selection",
    "budget": "pandacead.default_budget",
}
# Built-ins that an allow/deny list may not switch off (fail closed).
ESSENTIAL = {"budget", "trainer-selection"}


@dataclass
class PluginInfo:
    name: str
    module: str
    dist: str | None = None
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    trainers: list[str] = field(default_factory=list)
    error: str | None = None
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "dist": self.dist,
            "version": self.version,
            "builtin": self.builtin,
            "enabled": self.enabled,
            "hooks": self.hooks,
            "trainers": self.trainers,
            "error": self.error,
        }


class Plugins:
    """A pluggy manager plus what we know about each plugin and the trainers they registered."""

    def __init__(self, allow: list[str] | None = None, deny: list[str] | None = None):
        self.pm = pluggy.PluginManager("pandacead")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.trainers: dict[str, Any] = {}
        self.trainer_owner: dict[str, str] = {}
        self.allow = list(allow or [])
        self.deny = list(deny or [])

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def _permitted(self, name: str) -> bool:
        if name in ESSENTIAL:
            return True
        if name in self.deny:
            return False
        return not self.allow or name in self.allow

    def register(self, obj: Any, name: str, info: PluginInfo) -> None:
        """Register one plugin object and collect the trainers it offers; errors are recorded."""
        self.infos[name] = info
        if not self._permitted(name):
            info.enabled = False
            info.error = "disabled by the [plugins] allow/deny configuration"
            return
        try:
            self.pm.register(obj, name=name)
            info.hooks = sorted(h.name for h in self.pm.get_hookcallers(obj) or [])
            offered: list[Any] = []
            impl = getattr(obj, "pandacead_register_trainers", None)
            if impl is not None:
                impl(register=offered.append)
            for trainer in offered:
                tname = getattr(trainer, "name", None)
                if not isinstance(tname, str) or not tname:
                    raise TypeError(f"trainer {trainer!r} has no name")
                if not all(callable(getattr(trainer, m, None)) for m in ("plan", "train")):
                    raise TypeError(f"trainer {tname!r} lacks plan() or train()")
                if tname in self.trainers:
                    raise ValueError(f"trainer {tname!r} is already registered by {self.trainer_owner[tname]}")
                self.trainers[tname] = trainer
                self.trainer_owner[tname] = name
                info.trainers.append(tname)
        except Exception as exc:  # a broken plugin must not stop the daemon
            info.error = f"{type(exc).__name__}: {exc}"
            log.error("plugin %s failed to register: %s", name, info.error)
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            for tname in info.trainers:
                self.trainers.pop(tname, None)
                self.trainer_owner.pop(tname, None)
            info.trainers = []

    def load_module(self, name: str, module: str, **info_kw: Any) -> None:
        info = PluginInfo(name=name, module=module, **info_kw)
        if not self._permitted(name):
            self.infos[name] = info
            info.enabled = False
            info.error = "disabled by the [plugins] allow/deny configuration"
            return
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            self.infos[name] = info
            log.error("plugin %s (%s) failed to load: %s", name, module, info.error)
            return
        self.register(mod, name, info)

    def load_entry_points(self) -> None:
        for ep in sorted(entry_points(group="pandacead"), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            kw: dict[str, Any] = {
                "dist": dist.metadata["Name"] if dist else None, "version": dist.version if dist else None,
            }
            if ep.name in self.infos:
                log.error("plugin name %s is taken; entry point %s ignored", ep.name, ep.value)
                continue
            info = PluginInfo(name=ep.name, module=ep.value, **kw)
            if not self._permitted(ep.name):
                info.enabled = False
                info.error = "disabled by the [plugins] allow/deny configuration"
                self.infos[ep.name] = info
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                info.error = f"{type(exc).__name__}: {exc}"
                self.infos[ep.name] = info
                log.error("plugin %s (%s) failed to load: %s", ep.name, ep.value, info.error)
                continue
            self.register(obj, ep.name, info)

    def load_dir(self, directory: Path) -> None:
        """Plugins as plain .py files in a directory (datasette's --plugins-dir)."""
        for path in sorted(Path(directory).glob("*.py")):
            name = path.stem
            info = PluginInfo(name=name, module=str(path))
            if not self._permitted(name):
                info.enabled = False
                info.error = "disabled by the [plugins] allow/deny configuration"
                self.infos[name] = info
                continue
            try:
                spec = importlib.util.spec_from_file_location(f"pandacead_local_plugin_{name}", path)
                assert spec and spec.loader
                mod = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = mod
                spec.loader.exec_module(mod)
            except Exception as exc:
                info.error = f"{type(exc).__name__}: {exc}"
                self.infos[name] = info
                log.error("plugin file %s failed to load: %s", path, info.error)
                continue
            self.register(mod, name, info)


def load_plugins(settings: Any | None = None) -> Plugins:
    """Built-ins, then entry points, then local plugin dirs from the config."""
    cfg = settings.plugins if settings is not None else {}
    plugins = Plugins(allow=cfg.get("allow"), deny=cfg.get("deny"))
    from pandacead import __version__

    for name, module in BUILTINS.items():
        plugins.load_module(name, module, dist="pandacead", version=__version__, builtin=True)
    plugins.load_entry_points()
    for d in cfg.get("dirs", []) or []:
        p = Path(d)
        if settings is not None and not p.is_absolute():
            p = settings.home / p
        plugins.load_dir(p)
    return plugins
