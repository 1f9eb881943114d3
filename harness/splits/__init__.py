"""Splits: frozen metadata plus the query/database image lists and their UTM positions.

A split is stored under the data root as one ``<name>.split.npz`` file. Built-in definitions
(which files a split comes from) live as data in ``splits/builtin.toml``;
:func:`prepare_builtin_splits` builds them through their split source (NetVLAD ``.mat`` files
read by :mod:`harness.matfile` for every built-in), :func:`import_split` from any ``.mat`` pair.

Modules::

    split        Split, its .split.npz file, the data root (get_split, list_splits, register_split)
    definitions  SplitDefinition, parse_split_definitions, the built-ins, build_split
    sources      the split-source registry, split_from_definition, prepare_builtin_splits
    netvlad_mat  the netvlad-mat source (dbStruct .mat files) and import_split
"""

from __future__ import annotations

import importlib

from harness.splits.definitions import (
    DEFINITIONS_FORMAT_VERSION,
    SplitDefinition,
    build_split,
    builtin_definitions,
    get_definition,
    parse_split_definitions,
    sorted_order,
)
from harness.splits.sources import (
    DEFAULT_SOURCE,
    SPLIT_SOURCES,
    PrepareOutcome,
    list_split_sources,
    prepare_builtin_splits,
    register_split_source,
    resolve_path,
    split_from_definition,
)
from harness.splits.split import (
    DATA_ROOT_ENV,
    DEFAULT_RECALL_NS,
    NO_POSITIVE_POLICIES,
    SPLIT_FORMAT_VERSION,
    SPLIT_SUFFIX,
    Split,
    SplitSummary,
    default_data_root,
    get_split,
    list_splits,
    load_split,
    read_split_metadata,
    register_split,
    save_split,
    split_from_metadata,
    split_path,
    summarize_split,
)

# Imported on first use: the .mat reader pulls in scipy.io (~0.2 s), which `harness --help`
# and evaluations of registered splits never need.
_LAZY = {"import_split": "harness.splits.netvlad_mat", "MatCache": "harness.splits.netvlad_mat",
         "NetvladMatSource": "harness.splits.netvlad_mat"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATA_ROOT_ENV", "DEFAULT_RECALL_NS", "DEFAULT_SOURCE", "DEFINITIONS_FORMAT_VERSION",
    "NO_POSITIVE_POLICIES", "PrepareOutcome", "SPLIT_FORMAT_VERSION", "SPLIT_SOURCES",
    "SPLIT_SUFFIX", "Split", "SplitDefinition", "SplitSummary", "build_split",
    "builtin_definitions", "default_data_root", "get_definition", "get_split", "import_split",
    "list_split_sources", "list_splits", "load_split", "parse_split_definitions",
    "prepare_builtin_splits", "read_split_metadata", "register_split", "register_split_source",
    "resolve_path", "save_split", "sorted_order", "split_from_definition", "split_from_metadata",
    "split_path", "summarize_split",
]
