"""Split definitions: which files a split is built from, as data (``splits/builtin.toml``),
and :func:`build_split`, which puts two image lists into a :class:`Split`."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.registry import Registry
from harness.splits.split import DEFAULT_RECALL_NS, NAME_PATTERN, NO_POSITIVE_POLICIES, Split
from harness.toml_tables import read_typed_tables

logger = logging.getLogger(__name__)


DEFINITIONS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SplitDefinition:
    """How to build one split from NetVLAD ``.mat`` files (an entry of ``splits/builtin.toml``).

    Either ``mat`` (queries and database from one file) or both ``queries_mat`` and
    ``database_mat``; paths and image roots are relative to the dataset root.
    """

    name: str
    description: str
    radius_m: float
    mat: str | None = None
    queries_mat: str | None = None
    database_mat: str | None = None
    query_root: str = ""
    database_root: str = ""
    recall_ns: tuple[int, ...] = DEFAULT_RECALL_NS
    spatial_nms: bool = False
    no_positive: str = "miss"
    #: The registered split source that builds it (:mod:`harness.splits.sources`).
    source: str = "netvlad-mat"

    def __post_init__(self):
        if self.source != "netvlad-mat":
            pass  # other sources check their own keys when they build the split
        elif self.mat is not None and (self.queries_mat or self.database_mat):
            raise HarnessError(f"split {self.name}: give either mat or queries_mat + database_mat")
        elif self.mat is None and not (self.queries_mat and self.database_mat):
            raise HarnessError(
                f"split {self.name}: needs mat, or both queries_mat and database_mat"
            )
        if self.no_positive not in NO_POSITIVE_POLICIES:
            raise HarnessError(
                f"split {self.name}: no_positive must be one of {NO_POSITIVE_POLICIES}"
            )
        if not float(self.radius_m) > 0:
            raise HarnessError(f"split {self.name}: radius_m must be > 0")
        object.__setattr__(self, "recall_ns", tuple(int(n) for n in self.recall_ns))

    @property
    def queries_file(self) -> str:
        return self.mat if self.mat is not None else self.queries_mat  # type: ignore[return-value]

    @property
    def database_file(self) -> str:
        return self.mat if self.mat is not None else self.database_mat  # type: ignore[return-value]

    @property
    def mat_files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.queries_file, self.database_file)))


_DEFINITION_TYPES = {
    "description": str,
    "radius_m": (int, float),
    "mat": str,
    "queries_mat": str,
    "database_mat": str,
    "query_root": str,
    "database_root": str,
    "recall_ns": list,
    "spatial_nms": bool,
    "no_positive": str,
    "source": str,
}


def parse_split_definitions(text: str, source: str = "<string>") -> dict[str, SplitDefinition]:
    """Parse a split-definition TOML document (the ``splits/builtin.toml`` format).

    Unknown keys, at the top level or in a split, raise :class:`HarnessError` listing the
    valid ones.
    """
    definitions = {}
    tables = read_typed_tables(
        text, source, section="splits", format_version=DEFINITIONS_FORMAT_VERSION,
        types=_DEFINITION_TYPES, required=("description", "radius_m"), int_lists=("recall_ns",),
    )
    for name, entry in tables.items():
        try:
            definition = SplitDefinition(name=name, **entry)
        except HarnessError as exc:
            raise HarnessError(exc.message, source) from None
        except (TypeError, ValueError) as exc:
            raise HarnessError(f"[splits.{name}]: {exc}", source) from None
        if not NAME_PATTERN.fullmatch(name):
            raise HarnessError(f"[splits.{name}]: invalid split name", source)
        definitions[name] = definition
    return definitions


@functools.lru_cache(maxsize=1)
def _builtin_definitions() -> tuple[tuple[str, SplitDefinition], ...]:
    resource = resources.files("splits").joinpath("builtin.toml")
    return tuple(
        parse_split_definitions(resource.read_text(encoding="utf-8"), str(resource)).items()
    )


def builtin_definitions() -> dict[str, SplitDefinition]:
    """The built-in split definitions shipped in ``splits/builtin.toml``, in file order."""
    return dict(_builtin_definitions())


@functools.lru_cache(maxsize=1)
def _builtin_registry() -> Registry:
    registry: Registry = Registry("built-in split")
    for name, definition in _builtin_definitions():
        registry.register(name, definition)
    return registry


def get_definition(name: str) -> SplitDefinition:
    """A built-in definition by name; unknown names suggest close matches."""
    return _builtin_registry().get(name)


def build_split(
    name: str,
    *,
    queries,
    database,
    radius_m: float,
    recall_ns: Sequence[int] = DEFAULT_RECALL_NS,
    spatial_nms: bool = False,
    no_positive: str = "miss",
    query_root: str = "",
    database_root: str = "",
    description: str = "",
    source: Sequence[str] = (),
) -> Split:
    """A :class:`Split` from the queries of one ``DbStruct`` and the database of another.

    Both lists are put in sorted name order (the OpenIBL convention), positions permuted
    with them; duplicate names are an error (they would make rows ambiguous).
    """
    parts = {}
    for part, struct, names, utm in (
        ("query", queries, queries.q_images, queries.utm_q),
        ("database", database, database.db_images, database.utm_db),
    ):
        order = sorted_order(names)
        sorted_names = tuple(names[i] for i in order) if order is not None else tuple(names)
        duplicate = next((a for a, b in zip(sorted_names, sorted_names[1:]) if a == b), None)
        if duplicate is not None:
            raise HarnessError(f"{part} image {duplicate!r} is listed more than once", struct.path)
        empty = next((n for n in sorted_names[:1] if n == ""), None)
        if empty is not None:
            raise HarnessError(f"a {part} image name is empty", struct.path)
        parts[part] = (sorted_names, utm if order is None else utm[order])
    return Split(
        name=name,
        query_names=parts["query"][0],
        database_names=parts["database"][0],
        query_utm=parts["query"][1],
        database_utm=parts["database"][1],
        radius_m=float(radius_m),
        recall_ns=tuple(recall_ns),
        spatial_nms=bool(spatial_nms),
        no_positive=no_positive,
        query_root=query_root,
        database_root=database_root,
        description=description,
        source=tuple(source),
    )


def sorted_order(names: Sequence[str]) -> np.ndarray | None:
    """Permutation that sorts ``names`` (Python string order), or None if already sorted."""
    if all(a <= b for a, b in zip(names, names[1:])):
        return None
    return np.asarray(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)


