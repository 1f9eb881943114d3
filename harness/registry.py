"""Named registries: a decorator plus ``get``/``names``; duplicates raise, unknown names get hints.

One implementation for every kind of named entry (search backends, splits, methods,
trainings). Entries come from three places, loaded lazily on the first lookup so that
importing a registry stays cheap:

* ``register(name, entry)`` / ``decorator(name)`` calls, usually at import of the defining module;
* ``modules``: modules imported on first use because importing them registers entries;
* ``entry_point_group``: installed packages' entry points (``importlib.metadata``) in that group,
  each loading to the entry itself (registered under the entry point's name), or to a module
  whose import registers entries.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from types import ModuleType
from typing import Callable, Generic, Iterable, TypeVar

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` names them in error messages).

    Args:
        kind: what an entry is, e.g. ``"method"``.
        modules: modules whose import registers entries (imported on first lookup).
        optional_modules: of those, modules that may be absent from a checkout: a
            ``ModuleNotFoundError`` for one of them (or its package) is skipped.
        entry_point_group: an ``importlib.metadata`` entry-point group to load on first lookup.
    """

    def __init__(self, kind: str, modules: Iterable[str] = (), *,
                 optional_modules: Iterable[str] = (), entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._modules = tuple(modules)
        self._optional = frozenset(optional_modules)
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name registered twice raises ``ValueError``."""
        if not name or name != name.strip() or " " in name:
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({self._entries[name]!r})"
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """A decorator registering what it decorates under ``name``."""

        def wrap(entry: T) -> T:
            return self.register(name, entry)

        return wrap

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module_name in self._modules:
            try:
                importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if module_name in self._optional and exc.name and (
                        module_name == exc.name or module_name.startswith(exc.name + ".")):
                    logger.debug("optional registration module %s is absent", module_name)
                    continue
                raise
        if self.entry_point_group:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for point in entry_points(group=self.entry_point_group):
            if point.name in self._entries:
                continue  # already registered by importing its module
            loaded = point.load()
            if not isinstance(loaded, ModuleType):  # a module registers by being imported
                self.register(point.name, loaded)

    def get(self, name: str) -> T:
        """The entry ``name``; unknown names raise :class:`HarnessError` with close matches."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            pass
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HarnessError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})")

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        self._load()
        return sorted(self._entries.items())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries
