"""Split sources: how a split definition becomes a :class:`~harness.splits.split.Split`.

A source is registered by name in :data:`SPLIT_SOURCES` (``@register_split_source("name")`` on a
class); the class is instantiated once per preparation run (it may cache what several splits
share, e.g. a database file) and offers ``required_files(definition, root)`` (what must exist
under the dataset root) and ``build(definition, root, name) -> Split``. The NetVLAD ``.mat``
source (``netvlad-mat``, every built-in today) lives in :mod:`harness.splits.netvlad_mat`; other
sources add a module and list it in :data:`SOURCE_MODULES`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError
from harness.registry import Registry
from harness.splits.definitions import SplitDefinition, builtin_definitions, get_definition
from harness.splits.split import Split, register_split

logger = logging.getLogger(__name__)

#: Modules whose import registers split sources (imported on the first lookup).
SOURCE_MODULES: tuple[str, ...] = ("harness.splits.netvlad_mat",)
#: The source of a definition that names none.
DEFAULT_SOURCE = "netvlad-mat"
SPLIT_SOURCES: Registry = Registry("split source", SOURCE_MODULES)


def register_split_source(name: str):
    """Class decorator: register a split source under ``name`` (a name twice raises)."""

    def wrap(cls):
        cls.name = name
        return SPLIT_SOURCES.register(name, cls)

    return wrap


def list_split_sources() -> list[str]:
    """Names of every registered split source, sorted."""
    return SPLIT_SOURCES.names()


def resolve_path(root: Path | None, relative: str) -> Path:
    """``relative`` under the dataset ``root`` (absolute paths and ``~`` kept as given)."""
    path = Path(relative).expanduser()
    return path if path.is_absolute() or root is None else root / path


def _source_of(definition: SplitDefinition, sources: dict):
    name = definition.source
    if name not in sources:
        sources[name] = SPLIT_SOURCES.get(name)()
    return sources[name]


def split_from_definition(
    definition: SplitDefinition,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    sources: dict | None = None,
) -> Split:
    """Build the split ``definition`` describes from the files under dataset ``root``.

    ``sources`` (name -> source instance) shares the sources' caches between calls.
    """
    root = Path(root).expanduser().resolve()
    source = _source_of(definition, {} if sources is None else sources)
    return source.build(definition, root, name or definition.name)


@dataclass(frozen=True)
class PrepareOutcome:
    """What :func:`prepare_builtin_splits` did with one built-in split."""

    name: str
    registered: bool
    path: Path | None = None
    reason: str = ""


def prepare_builtin_splits(
    root: str | os.PathLike,
    *,
    prefix: str = "",
    data_root: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
) -> list[PrepareOutcome]:
    """Register every built-in split whose ``.mat`` files exist under ``root``.

    Args:
        root: dataset root (holding ``raw/...``).
        prefix: prepended to each registered name (``synth-`` gives ``synth-outdoor-ams``).
        data_root: where splits are registered (default :func:`default_data_root`).
        names: only these built-ins (default: all).

    Returns:
        One :class:`PrepareOutcome` per built-in considered, registered or skipped with why.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError("dataset root is not a directory", root)
    definitions = builtin_definitions()
    selected = list(definitions) if names is None else [get_definition(n).name for n in names]
    sources: dict = {}
    outcomes = []
    for builtin in selected:
        definition = definitions[builtin]
        target = prefix + builtin
        required = _source_of(definition, sources).required_files(definition, root)
        missing = [path for path in required if not path.is_file()]
        if missing:
            reason = "missing " + ", ".join(str(path) for path in missing)
            logger.debug("skipped %s: %s", target, reason)
            outcomes.append(PrepareOutcome(target, False, reason=reason))
            continue
        split = split_from_definition(definition, root, name=target, sources=sources)
        path = register_split(split, data_root)
        outcomes.append(PrepareOutcome(target, True, path=path))
    return outcomes


