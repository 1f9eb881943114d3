"""The small public Python API: ``harness.evaluate``, ``harness.load_split``,
``harness.read_features``.

``import harness`` stays light: these are loaded on first use (``harness.__getattr__``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from harness.evaluate import evaluate_files_or_ranking
from harness.features import (
    expand_feature_paths,
    read_descriptors,
    read_info,
    read_names,
)
from harness.splits import Split, get_split
from harness.validate import check_features


def load_split(name_or_path, data_root: str | os.PathLike | None = None):
    """A registered split by name (or a ``.split.npz`` path): :class:`harness.splits.Split`.

    ``split.query_names``, ``split.database_names`` (sorted), ``split.query_utm``,
    ``split.database_utm`` (UTM metres), ``split.radius_m``, ``split.positives[q]``.
    """
    if isinstance(name_or_path, Split):
        return name_or_path
    return get_split(name_or_path, data_root)


def evaluate(features=None, split=None, config=None, *, ranking=None, method: str | None = None,
             data_root: str | os.PathLike | None = None, **options):
    """Evaluate feature files (or a ranking file) on a split; returns the record
    (:func:`harness.evaluate.evaluate_files_or_ranking`, which documents the arguments)."""
    return evaluate_files_or_ranking(features, split, config, ranking=ranking, method=method,
                                     data_root=data_root, **options)


@dataclass(frozen=True, eq=False)
class Features:
    """Descriptors of one feature file (or a query file plus database shards), float32."""

    query_names: tuple[str, ...]
    query: np.ndarray
    database_names: tuple[str, ...]
    database: np.ndarray
    method: str = ""


def read_features(paths, split=None, data_root: str | os.PathLike | None = None) -> Features:
    """Read feature files into memory (float16 is widened to float32).

    Without ``split`` the rows come as stored (shards concatenated in path order). With a
    ``split`` (name, path or Split) the files are validated against it and the rows come in
    the split's order, so that row ``i`` is ``split.query_names[i]``.
    """
    paths = expand_feature_paths([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    if split is not None:
        split = load_split(split, data_root)
        report = check_features(paths, split, check_values=False)
        query = np.empty((split.num_queries, report.dim), dtype=np.float32)
        query[report.query.rows] = read_descriptors(report.query.path, "query")
        database = np.empty((split.num_database, report.dim), dtype=np.float32)
        for part in report.database:
            database[part.rows] = read_descriptors(part.path, "database")
        return Features(split.query_names, query, split.database_names, database, report.method)
    names = {"query": [], "database": []}
    blocks = {"query": [], "database": []}
    method = ""
    for path in paths:
        info = read_info(path)
        method = method or info.method
        for part in info.parts:
            names[part] += read_names(path, part)
            blocks[part].append(read_descriptors(path, part))
    stacked = {p: np.concatenate(b) if b else np.zeros((0, 0), np.float32)
               for p, b in blocks.items()}
    return Features(tuple(names["query"]), stacked["query"], tuple(names["database"]),
                    stacked["database"], method)


__all__ = ("Features", "evaluate", "load_split", "read_features")
