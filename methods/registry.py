"""Registries: a decorator plus ``get_*``/``list_*``; duplicates raise, unknown names get hints.

Methods come from the entry-point group ``harness.methods`` (:data:`METHOD_ENTRY_POINT_GROUP`):
each entry point names a :class:`methods.base.Method` subclass, ``NAME = module:Class``. The
built-in methods are listed there in the harness's own ``setup.cfg``; any installed package
adds its methods the same way (see ``examples/harness-randproj``). Entry points are loaded
lazily, on the first :func:`get_method` / :func:`list_methods` call, so that ``import
methods`` (and ``harness --help``) stays fast and does not import torch. A plugin that fails
to import is recorded (and listed by ``harness methods list``) without hiding the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, entry_points

from harness.errors import HarnessError
from harness.registry import Registry
from methods.base import Method

logger = logging.getLogger(__name__)

METHOD_ENTRY_POINT_GROUP = "harness.methods"
#: The distribution that ships the built-in methods (its metadata must list the group).
BUILTIN_DISTRIBUTION = "iovpr-harness"


@dataclass(frozen=True)
class MethodOrigin:
    """Where a method comes from: the distribution and the ``module:Class`` that define it."""

    value: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.distribution is None:
            return f"{self.value} (registered at import)"
        return f"{self.distribution} {self.version} ({self.value})"


class MethodRegistry(Registry):
    """The methods: entry points of :data:`METHOD_ENTRY_POINT_GROUP`, plus in-process
    registrations (:func:`register_method`), each with its :class:`MethodOrigin`.

    :class:`harness.registry.Registry` over the group, with its own entry-point loading: each
    method keeps its origin, and a plugin that fails to load is recorded instead of raising."""

    def __init__(self):
        super().__init__("method", entry_point_group=METHOD_ENTRY_POINT_GROUP)
        self.origins: dict[str, MethodOrigin] = {}
        self.failures: dict[str, tuple[MethodOrigin, str]] = {}

    def add(self, name: str, cls, origin: MethodOrigin):
        """Register class ``cls`` as method ``name`` (its ``name`` attribute is set to it)."""
        problem = _class_problem(name, cls)
        if problem:
            raise HarnessError(f"method {name} ({origin.describe()}): {problem}")
        if name in self._entries:
            raise HarnessError(
                f"method name {name!r} is registered twice: by {self.origins[name].describe()} "
                f"and by {origin.describe()}"
            )
        cls.name = name
        self.register(name, cls)
        self.origins[name] = origin
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        try:
            super()._load()  # ends in self._load_entry_points()
        except BaseException:
            # Not half-loaded: the next lookup tries again and reports the same problem.
            self._loaded = False
            self._entries.clear()
            self.origins.clear()
            self.failures.clear()
            raise

    def _load_entry_points(self) -> None:
        _check_builtin_metadata()
        for point in entry_points(group=METHOD_ENTRY_POINT_GROUP):
            dist = getattr(point, "dist", None)
            origin = MethodOrigin(
                point.value,
                None if dist is None else dist.metadata["Name"],
                None if dist is None else dist.version,
            )
            try:
                cls = point.load()
                reason = _class_problem(point.name, cls)
            except Exception as exc:  # noqa: BLE001  (a broken plugin must not hide the others)
                reason = f"{type(exc).__name__}: {exc}".strip()
            if reason:
                self.failures[point.name] = (origin, reason)
                logger.warning("method %s (%s) failed to load: %s", point.name,
                               origin.describe(), reason)
                continue
            self.add(point.name, cls, origin)  # a name registered twice raises: which is meant?

    def get(self, name: str):
        self._load()
        if name in self.failures and name not in self._entries:
            origin, reason = self.failures[name]
            raise HarnessError(f"method {name} ({origin.describe()}) failed to load: {reason}")
        return super().get(name)

    def origin(self, name: str) -> MethodOrigin:
        self.get(name)
        return self.origins[name]


def _class_problem(name: str, cls) -> str | None:
    """Why ``cls`` cannot be method ``name`` (``None``: it can)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        return f"{cls!r} is not a methods.base.Method subclass"
    own = cls.__dict__.get("name")
    if own and own != name:
        return f"the class is already method {own!r}"
    return None


def _check_builtin_metadata() -> None:
    """An installation whose metadata predates the entry points would list no method."""
    try:
        dist = distribution(BUILTIN_DISTRIBUTION)
    except PackageNotFoundError:
        raise HarnessError(
            f"the methods are registered through entry points, and {BUILTIN_DISTRIBUTION} is not "
            "installed: install it (pip install -e .)"
        ) from None
    if not any(p.group == METHOD_ENTRY_POINT_GROUP for p in dist.entry_points):
        raise HarnessError(
            f"the installed metadata of {BUILTIN_DISTRIBUTION} lists no "
            f"{METHOD_ENTRY_POINT_GROUP} entry points (installed before they existed): "
            "reinstall it (pip install -e .)"
        )


METHODS = MethodRegistry()


def register_method(name: str):
    """Class decorator: register a :class:`methods.base.Method` subclass under ``name`` in
    this process (scripts, notebooks, tests); installed packages use the entry points.

    The class gets ``name`` as its ``name`` attribute; registering a name twice raises.
    """

    def wrap(cls):
        METHODS._load()  # an in-process name must not shadow an installed one
        return METHODS.add(name, cls, MethodOrigin(f"{cls.__module__}:{cls.__qualname__}"))

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


def method_origin(name: str) -> MethodOrigin:
    """Where method ``name`` comes from (distribution, version, ``module:Class``)."""
    return METHODS.origin(name)


def method_failures() -> dict[str, tuple[MethodOrigin, str]]:
    """Methods whose entry point failed to load: ``name -> (origin, reason)``."""
    METHODS._load()
    return dict(METHODS.failures)


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return METHODS.names()
