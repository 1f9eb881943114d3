"""Registries: a decorator plus ``get_*``/``list_*``; duplicates raise, unknown names get hints.

Methods register themselves when their module is imported. The registration modules are
imported lazily, on the first :func:`get_method` / :func:`list_methods` call, so that
``import methods`` (and ``harness --help``) stays fast and does not import torch.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from typing import Callable, Generic, Iterable, TypeVar

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Modules whose import registers methods. ``methods.iovpr.registered`` belongs to the IOVPR
# method (a separate helper's package) and may be absent from a checkout.
REGISTRATION_MODULES: tuple[str, ...] = (
    "methods.netvlad",
    "methods.sfrs",
    "methods.probe",
    "methods.cosplace",
    "methods.mixvpr",
    "methods.salad",
    "methods.megaloc",
    "methods.boq",
    "methods.iovpr.registered",
)
_OPTIONAL_MODULES = {"methods.iovpr.registered": ("methods.iovpr", "methods.iovpr.registered")}


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str, modules: Iterable[str] = ()):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._modules = tuple(modules)
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        if not name or name != name.strip() or " " in name:
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({self._entries[name]!r})"
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
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
                if exc.name in _OPTIONAL_MODULES.get(module_name, ()):
                    logger.debug("optional registration module %s is absent", module_name)
                    continue
                raise

    def get(self, name: str) -> T:
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
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


METHODS: Registry = Registry("method", REGISTRATION_MODULES)


def register_method(name: str):
    """Class decorator: register a :class:`methods.base.Method` subclass under ``name``.

    The class gets ``name`` as its ``name`` attribute; registering a name twice raises.
    """

    def wrap(cls):
        cls.name = name
        return METHODS.register(name, cls)

    return wrap


def get_method(name: str, options=None, **kwargs):
    """An instance of the method ``name`` configured from ``options`` (a str -> str mapping).

    Unknown names raise :class:`HarnessError` with close matches; unknown option keys raise
    with the valid keys listed.
    """
    cls = METHODS.get(name)
    return cls.from_options(options or {}, **kwargs)


def get_method_class(name: str):
    """The registered class of method ``name``."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return METHODS.names()
