"""Name-level predictions: the evaluated rankings as image names, with distances in metres.

``--predictions-out FILE.csv`` writes one row per query::

    query,first_positive_rank,positives,db_1,distance_m_1,db_2,distance_m_2,...

``first_positive_rank`` is 1-based (empty when no positive is in the ranking), ``positives``
the number of positives the query has in the database, ``distance_m_r`` the UTM distance from
the rank-r database image to the query. ``FILE.txt`` writes the MSLS line format
``query_key db_key1 db_key2 ...`` (keys: file names without extension, when they identify
images uniquely in the split; full names otherwise), which ``--ranking`` reads back.
The ranking is the evaluated one: after spatial NMS when the protocol applies it, cut to the
protocol's depth.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.ground_truth import squared_distances_m2
from harness.io import write_bytes_atomic
from harness.metrics import database_places, spatial_nms
from harness.results import read_predictions, read_result
from harness.sources.msls import msls_key
from harness.sources.rankings import NameResolver
from harness.splits import get_split

logger = logging.getLogger(__name__)

FORMATS = (".csv", ".txt")


@dataclass(frozen=True, eq=False)
class NamedPredictions:
    """The evaluated ranking of every query (split rows, -1 pads) and what it is measured by."""

    split: object
    ranking: np.ndarray  # (Q, depth) database rows
    scores: np.ndarray | None  # (Q, depth) or None
    first_positive_rank: np.ndarray  # (Q,) 0-based, -1 none
    positives: np.ndarray  # (Q,) number of positives

    def distances_m(self) -> np.ndarray:
        """(Q, depth) metres from each ranked database image to its query (NaN for pads)."""
        valid = self.ranking >= 0
        db = self.split.database_utm[np.where(valid, self.ranking, 0)]
        squared = squared_distances_m2(db, self.split.query_utm[:, None, :])
        return np.where(valid, np.sqrt(squared), np.nan)


def named_predictions(result, split) -> NamedPredictions:
    """The evaluated ranking of a record's predictions (``result.prediction_data``)."""
    data = result.prediction_data
    if data is None:
        raise HarnessError("the result holds no predictions")
    if result.split_sha256 != split.sha256:
        raise HarnessError(f"the result was computed on another version of split {split.name} "
                           "(checksums differ)")
    protocol = result.protocol
    depth = max(max(protocol.recall_ns), protocol.map_k)
    indices, scores = np.asarray(data.indices), np.asarray(data.scores)
    if protocol.metric == "ranking":
        scores = None  # a ranking submission has ranks, not scores
    if protocol.spatial_nms:
        kept = spatial_nms(indices, database_places(split.database_utm), protocol.nms_pool)
        scores = None  # NMS drops ranks; the scores of the survivors are not kept aligned
        indices = kept
    indices = indices[:, :depth]
    if indices.shape[1] < depth:
        pad = np.full((indices.shape[0], depth - indices.shape[1]), -1, dtype=np.int64)
        indices = np.concatenate([indices, pad], axis=1)
    return NamedPredictions(
        split=split, ranking=indices, scores=None if scores is None else scores[:, :depth],
        first_positive_rank=np.asarray(data.first_positive_rank),
        positives=split.positives.counts,
    )


def _keys_or_names(names) -> list[str]:
    keys = [msls_key(n) for n in names]
    return keys if len(set(keys)) == len(keys) else list(names)


def render(predictions: NamedPredictions, fmt: str) -> str:
    """The file's text in ``fmt`` (``.csv`` or ``.txt``)."""
    split = predictions.split
    ranking = predictions.ranking
    out = io.StringIO()
    if fmt == ".txt":
        queries = _keys_or_names(split.query_names)
        database = _keys_or_names(split.database_names)
        for q, row in enumerate(ranking):
            out.write(" ".join([queries[q]] + [database[i] for i in row if i >= 0]) + "\n")
        return out.getvalue()
    distances = predictions.distances_m()
    writer = csv.writer(out, lineterminator="\n")
    header = ["query", "first_positive_rank", "positives"]
    for rank in range(1, ranking.shape[1] + 1):
        header += [f"db_{rank}", f"distance_m_{rank}"]
    writer.writerow(header)
    for q, row in enumerate(ranking):
        first = int(predictions.first_positive_rank[q])
        line = [split.query_names[q], "" if first < 0 else first + 1, int(predictions.positives[q])]
        for i, distance in zip(row, distances[q]):
            line += ["", ""] if i < 0 else [split.database_names[i], f"{distance:.2f}"]
        writer.writerow(line)
    return out.getvalue()


def write_named_predictions(path: str | os.PathLike, result, split) -> Path:
    """Write ``path`` (``.csv`` or ``.txt``, by its suffix) atomically."""
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise HarnessError(f"predictions file must end in {' or '.join(FORMATS)}", path)
    text = render(named_predictions(result, split), fmt)
    return write_bytes_atomic(path, text.encode("utf-8"))


def describe_query(predictions: NamedPredictions, query: str) -> list[str]:
    """Lines describing one query's ranking (``harness predictions show``)."""
    split = predictions.split
    row = NameResolver(split.query_names, split.query_index)(query)
    if row < 0:
        raise HarnessError(f"query {query!r} is not in split {split.name}")
    positives = set(split.positives[row].tolist())
    first = int(predictions.first_positive_rank[row])
    distances = predictions.distances_m()[row]
    lines = [
        f"query {split.query_names[row]} (split {split.name}, row {row})",
        f"{len(positives)} positives within {split.radius_m:g} m; first positive at rank "
        + ("-" if first < 0 else str(first + 1)),
        f"{'rank':>4}  {'hit':<3}  {'distance':>10}  {'score':>9}  database image",
    ]
    for rank, index in enumerate(predictions.ranking[row], start=1):
        if index < 0:
            break
        score = "-" if predictions.scores is None else f"{predictions.scores[row, rank - 1]:.4f}"
        hit = "yes" if int(index) in positives else ""
        lines.append(f"{rank:>4}  {hit:<3}  {distances[rank - 1]:>9.1f}m  {score:>9}  "
                     f"{split.database_names[index]}")
    return lines


def load_result_predictions(record_path, data_root=None) -> NamedPredictions:
    """A JSON record (``harness eval --json``) with its sidecar, and its split, as names."""
    result = read_result(record_path)
    data = read_predictions(record_path, result)
    split = get_split(result.split, data_root)
    return named_predictions(dataclasses.replace(result, prediction_data=data), split)
