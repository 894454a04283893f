"""The registry of GAN variants: entry points of the group ``pyganx.gans``.

Read lazily, on first use. pyganx's own variants are registered through the same entry
points as anyone else's (see pyproject.toml); there is no second way in. Problems are
reported per plugin, so one broken or clashing plugin never hides the others:
- two distributions claiming one name: an error naming both;
- a plugin that fails to import: its distribution and the original error;
- a plugin written for another plugin API version, or not a GANPlugin: a clear error.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata as md
from dataclasses import dataclass
from functools import lru_cache

from .errors import PluginError
from .plugin import API_VERSION, DATA_KINDS, GANPlugin

GROUP = "pyganx.gans"


@dataclass
class PluginEntry:
    """One registered name: where it comes from, and the class or the problem."""

    name: str
    target: str                       # "module:attr"
    distribution: str                 # "name version", or "?" when unknown
    others: tuple[str, ...] = ()      # other distributions claiming the same name
    _cls: type | None = None
    _error: str | None = None
    _loaded: bool = False

    def load(self) -> type:
        """The plugin class; raises PluginError with the reason if it cannot be used."""
        if not self._loaded:
            self._loaded = True
            try:
                self._cls = self._import()
            except PluginError as e:
                self._error = str(e)
        if self._error is not None:
            raise PluginError(self._error)
        return self._cls  # type: ignore[return-value]

    @property
    def error(self) -> str | None:
        try:
            self.load()
        except PluginError as e:
            return str(e)
        return None

    def _import(self) -> type:
        where = f"plugin {self.name!r} ({self.target}, from {self.distribution})"
        if self.others:
            raise PluginError(f"{where}: the name is also claimed by "
                              f"{', '.join(self.others)}; uninstall one of them")
        try:
            obj = md.EntryPoint(self.name, self.target, GROUP).load()
        except Exception as e:  # noqa: BLE001 - any import error is the plugin's, reported
            raise PluginError(f"{where} failed to import: {type(e).__name__}: {e}") from None
        if not (isinstance(obj, type) and issubclass(obj, GANPlugin)):
            raise PluginError(f"{where} is not a pyganx.plugin.GANPlugin subclass: {obj!r}")
        version = getattr(obj, "api_version", None)
        if version != API_VERSION:
            raise PluginError(f"{where} was written for pyganx plugin API version {version}; "
                              f"this pyganx has version {API_VERSION}. Install a release of "
                              f"the plugin made for it (or of pyganx made for the plugin)")
        if obj.data_kind not in DATA_KINDS:
            raise PluginError(f"{where} has data_kind {obj.data_kind!r}; expected one of "
                              f"{', '.join(DATA_KINDS)}")
        if obj.Config is None or not dataclasses.is_dataclass(obj.Config):
            raise PluginError(f"{where} must set Config to a dataclass (its fields become "
                              f"the CLI flags)")
        return obj


def _distribution_of(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?"
    return f"{dist.metadata['Name']} {dist.version}"


@lru_cache(maxsize=1)
def _entries() -> dict[str, PluginEntry]:
    by_name: dict[str, list[md.EntryPoint]] = {}
    for ep in md.entry_points(group=GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    out: dict[str, PluginEntry] = {}
    for name, eps in sorted(by_name.items()):
        # The same distribution seen twice on the path (e.g. an editable install and a
        # build directory) is one claim, not a clash.
        dists: dict[str, md.EntryPoint] = {}
        for ep in eps:
            dists.setdefault(_distribution_of(ep), ep)
        labels = list(dists)
        first = dists[labels[0]]
        out[name] = PluginEntry(name, first.value, labels[0], tuple(labels[1:]))
    return out


def refresh() -> None:
    """Forgets what was read (after installing a plugin in the running process)."""
    _entries.cache_clear()


def entries() -> list[PluginEntry]:
    """Every registered name, usable or not, sorted by name."""
    return list(_entries().values())


def names() -> list[str]:
    return list(_entries())


def get(name: str) -> type:
    """The plugin class registered as ``name``; PluginError if unknown or unusable."""
    table = _entries()
    if name not in table:
        known = ", ".join(table) or "none"
        raise PluginError(f"no GAN variant named {name!r} is installed (installed: {known}); "
                          f"`pyganx plugins` lists them")
    return table[name].load()


__all__ = ["GROUP", "PluginEntry", "PluginError", "entries", "get", "names", "refresh"]
