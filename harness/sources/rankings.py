"""Ranking submissions: ranked database names per query instead of global descriptors.

Re-ranking methods (Patch-NetVLAD, R2Former, SelaVPR's re-ranking) produce a ranking, not one
descriptor per image. A ranking file gives, for every query of the split, its top-K database
images, best first (K at least the deepest Recall@N / mAP@K of the protocol). Two formats:

- **text** (``.txt``, ``.csv`` or anything not HDF5): one query per line, the query then its
  ranked database images, separated by whitespace; ``#`` starts a comment. This is also the
  MSLS prediction file (``query_key db_key1 db_key2 ...``). Images are split names
  (``cph/query/images/<key>.jpg``) or MSLS-style keys (the file name without its extension)
  where keys identify images uniquely in the split.
- **HDF5**: ``/queries`` (Q,) and ``/ranking`` (Q, K) UTF-8 strings; root attribute
  ``method`` optional.

Validated like feature files: every split query exactly once, every name in the split, no
database image twice in a row, rows deep enough; every problem is reported with the file.
Scored with the same metrics as descriptors (:func:`harness.record.build_record`); the
record's ``protocol.metric`` is ``"ranking"``, which the leaderboard marks as re-ranking.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from harness.config import EvalConfig
from harness.errors import HarnessError, ValidationError
from harness.features import check_heaps, open_hdf5, reading_errors
from harness.hdf5 import check_plain_type, read_plain_attribute
from harness.io import atomic_path
from harness.record import SearchOutput, build_record
from harness.results import FileDigest
from harness.search import TopK
from harness.sources.msls import msls_key, read_msls_predictions

logger = logging.getLogger(__name__)

RANKING_METRIC = "ranking"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SHOW = 3


def is_hdf5(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == _HDF5_SIGNATURE
    except OSError:
        return False


class NameResolver:
    """Maps split names, or unique MSLS-style keys (name stems), to split rows."""

    def __init__(self, names: Sequence[str], index: dict[str, int]):
        self._index = index
        keys: dict[str, int] = {}
        ambiguous = set()
        for row, name in enumerate(names):
            key = msls_key(name)
            if key in keys:
                ambiguous.add(key)
            keys[key] = row
        for key in ambiguous:
            del keys[key]
        self._keys = keys

    def __call__(self, token: str) -> int:
        row = self._index.get(token)
        if row is None:
            row = self._keys.get(token, -1)
        return row


def _read_text(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = read_msls_predictions(path)
    return [q for q, _ in rows], [r for _, r in rows]


def _read_hdf5(path: Path) -> tuple[list[str], list[list[str]], str]:
    with open_hdf5(path) as handle, reading_errors(path, "the ranking"):
        check_heaps(handle, path)
        datasets = {}
        for key, ndim in (("queries", 1), ("ranking", 2)):
            dataset = handle.get(key)
            if not isinstance(dataset, h5py.Dataset):
                raise HarnessError(f"/{key} is missing (a ranking file holds /queries (Q,) and "
                                   "/ranking (Q, K) strings)", path)
            check_plain_type(dataset.id.get_type(), f"/{key}", path)
            if dataset.id.get_type().get_class() != h5py.h5t.STRING or dataset.ndim != ndim:
                raise HarnessError(f"/{key} must be a {ndim}-D string dataset, has dtype "
                                   f"{dataset.dtype} and shape {dataset.shape}", path)
            datasets[key] = dataset.asstr()[()]
        method = ""
        if "method" in handle.attrs:
            _, value = read_plain_attribute(handle, "method", path)
            method = value.decode() if isinstance(value, bytes) else str(value)
    queries = [str(q) for q in datasets["queries"]]
    ranking = [[str(n) for n in row if str(n)] for row in datasets["ranking"]]
    if len(ranking) != len(queries):
        raise HarnessError(f"/ranking has {len(ranking)} rows, /queries {len(queries)}", path)
    return queries, ranking, method


def write_ranking_hdf5(path, queries: Sequence[str], ranking: Sequence[Sequence[str]],
                       method: str = "") -> Path:
    """Write a ranking file in the HDF5 format (rows of equal length), atomically."""
    width = {len(row) for row in ranking}
    if len(width) > 1:
        raise ValueError("every ranking row must have the same length")
    strings = h5py.string_dtype("utf-8")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("queries", data=np.array(list(queries), dtype=object), dtype=strings)
        handle.create_dataset("ranking", data=np.array([list(r) for r in ranking], dtype=object)
                              .reshape(len(queries), width.pop() if width else 0), dtype=strings)
        if method:
            handle.attrs["method"] = method
    return Path(path)


def read_ranking(path: str | os.PathLike, split, depth: int) -> tuple[np.ndarray, str]:
    """``(indices, method)``: the ranking as split database rows ``(Q, K)`` in split query order
    (-1 pads short rows of a database smaller than ``depth``).

    Raises :class:`ValidationError` listing every problem (unknown, missing or repeated
    queries; unknown or repeated database names; rows shorter than ``depth``).
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError("ranking file not found", path)
    if is_hdf5(path):
        queries, rows, method = _read_hdf5(path)
    else:
        (queries, rows), method = _read_text(path), ""
    need = min(depth, split.num_database)
    resolve_query = NameResolver(split.query_names, split.query_index)
    resolve_db = NameResolver(split.database_names, split.database_index)
    problems: list[str] = []
    unknown_queries, repeated_queries, unknown_db, repeated_db, short = [], [], [], [], []
    width = max((len(r) for r in rows), default=0)
    indices = np.full((split.num_queries, max(width, need, 1)), -1, dtype=np.int64)
    seen = np.zeros(split.num_queries, dtype=bool)
    for query, ranked in zip(queries, rows):
        row = resolve_query(query)
        if row < 0:
            unknown_queries.append(query)
            continue
        if seen[row]:
            repeated_queries.append(query)
            continue
        seen[row] = True
        found = np.fromiter((resolve_db(name) for name in ranked), dtype=np.int64,
                            count=len(ranked))
        if np.any(found < 0):
            unknown_db.append(ranked[int(np.flatnonzero(found < 0)[0])])
        elif np.unique(found).size != found.size:
            repeated_db.append(query)
        if len(ranked) < need:
            short.append(f"{query} ({len(ranked)})")
        indices[row, : found.size] = found
    for label, items in (
        ("queries are not in the split", unknown_queries),
        ("queries are listed more than once", repeated_queries),
        ("database images are not in the split", unknown_db),
        ("queries rank a database image more than once", repeated_db),
        (f"queries rank fewer than the {need} database images the protocol needs", short),
    ):
        if items:
            shown = ", ".join(repr(i) for i in items[:_SHOW])
            shown += ", ..." if len(items) > _SHOW else ""
            problems.append(f"{len(items)} {label} (first: {shown})")
    missing = np.flatnonzero(~seen)
    if missing.size:
        names = [split.query_names[i] for i in missing[:_SHOW]]
        problems.append(f"{missing.size} of {split.num_queries} split queries have no ranking "
                        f"(first: {', '.join(map(repr, names))})")
    if problems:
        raise ValidationError(problems, path)
    return indices, method


def evaluate_ranking(path: str | os.PathLike, split, config=None, *,
                     method: str | None = None):
    """Score a ranking file on ``split`` with the usual metrics; the record's
    ``protocol.metric`` is ``"ranking"``. Returns an :class:`harness.results.EvalResult`."""
    started = time.perf_counter()
    config = EvalConfig() if config is None else config
    protocol = config.protocol(split)
    depth = max(max(protocol.recall_ns), protocol.map_k)
    indices, stored_method = read_ranking(path, split, depth)
    if indices.shape[1] < protocol.k:  # spatial NMS looks deeper; it skips the -1 padding
        pad = np.full((indices.shape[0], protocol.k - indices.shape[1]), -1, dtype=np.int64)
        indices = np.concatenate([indices, pad], axis=1)
    scores = np.where(indices >= 0, -np.arange(indices.shape[1], dtype=np.float32), -np.inf)
    load_s = time.perf_counter() - started
    output = SearchOutput(
        topk=TopK(scores=scores, indices=indices), paths=(Path(path),),
        method=stored_method or Path(path).stem, method_attrs={"submission": RANKING_METRIC},
        descriptor_dim=0, descriptor_dtype="float32", search_backend=RANKING_METRIC,
        load_s=load_s, search_s=0.0,
        digests=(FileDigest.of(path),),  # ranking files are small: always hashed
    )
    result = build_record(split, output, config, method=method, started=started)
    return dataclasses.replace(
        result, protocol=dataclasses.replace(result.protocol, metric=RANKING_METRIC))


def is_ranking_result(result) -> bool:
    """Whether a record scored a ranking submission (shown as re-ranking)."""
    return getattr(result.protocol, "metric", "") == RANKING_METRIC
