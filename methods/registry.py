"""Registries: a decorator plus ``get_*``/``list_*``; duplicates raise, unknown names get hints.

Methods register themselves when their module is imported. The registration modules are
imported lazily, on the first :func:`get_method` / :func:`list_methods` call, so that
``import methods`` (and ``harness --help``) stays fast and does not import torch.
"""

from __future__ import annotations

import logging

from harness.registry import Registry

logger = logging.getLogger(__name__)

# Modules whose import registers methods. ``methods.iovpr.registered`` belongs to the IOVPR
# method (a separate helper's package) and may be absent from a checkout.
REGISTRATION_MODULES: tuple[str, ...] = (
    "methods.netvlad",
    "methods.sfrs",
    "methods.probe",
    "methods.salad",
    "methods.megaloc",
    "methods.boq",
    "methods.iovpr.registered",
)
OPTIONAL_MODULES = ("methods.iovpr.registered",)


METHODS: Registry = Registry("method", REGISTRATION_MODULES, optional_modules=OPTIONAL_MODULES)


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
