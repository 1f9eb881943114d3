"""Retrieval metrics on ranked predictions: Recall@N, mAP@K, spatial NMS. Vectorised numpy.

Definitions (the ones the result records state):

* **Positive**: a database image within the split's radius of the query
  (:func:`harness.ground_truth.positives_within_radius`, boundary included).
* **Recall@N**: the fraction of evaluated queries with at least one positive among their first
  N predictions. Cumulative by construction (a hit at rank r counts for every N >= r), as in
  NetVLAD/OpenIBL.
* **No-positive policy**: ``"miss"`` keeps queries without any positive in the denominator
  (they always fail; OpenIBL divides by all queries); ``"exclude"`` removes them from the
  denominator of every metric.
* **mAP@K**: mean over evaluated queries of
  ``AP@K = (1 / min(K, P)) * sum_{r=1..K} rel(r) * precision@r``, where ``rel(r)`` is 1 when the
  prediction at rank r is a positive, ``precision@r`` the fraction of positives in the first r,
  and ``P`` the number of positives the query has in the database (with spatial NMS: the number
  of distinct places among them, since only one prediction per place survives). Capping ``P``
  at K makes a perfect top-K score 1 even when a query has more than K positives. A query
  without positives has AP 0 (policy "miss") or is left out ("exclude").
* **Spatial NMS** (Tokyo 24/7, as OpenIBL evaluates it): of the first ``pool = max(N) * 12``
  predictions keep only the first per database *place*, then rank the survivors in order.
  A place is a distinct database UTM position (identical easting and northing): Tokyo 24/7
  cuts each Street View panorama into 12 views that share one folder and one position;
  OpenIBL's place id is that folder (and it asserts that the folder's positions are equal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

NO_POSITIVE_POLICIES = ("miss", "exclude")


def database_places(database_utm: np.ndarray) -> np.ndarray:
    """Place id of every database row: rows with identical UTM positions share an id. (N,) int64."""
    database_utm = np.asarray(database_utm, dtype=np.float64)
    assert database_utm.ndim == 2 and database_utm.shape[1] == 2, database_utm.shape
    if database_utm.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(database_utm, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def spatial_nms(predictions: np.ndarray, places: np.ndarray, pool: int) -> np.ndarray:
    """Keep the first prediction per place among the first ``pool`` of each row.

    Args:
        predictions: (Q, K) database rows, best first; -1 pads.
        places: (N,) place id of every database row (see :func:`database_places`).
        pool: how many leading predictions NMS looks at (OpenIBL: max(N) * 12).

    Returns:
        (Q, min(K, pool)) surviving rows, left-aligned in their original order, -1 padded.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    assert predictions.ndim == 2, predictions.shape
    head = predictions[:, : max(1, int(pool))]
    q, width = head.shape
    valid = head >= 0
    # Padding gets place ids that never repeat, so it is never taken for a duplicate.
    place = np.where(valid, places[np.where(valid, head, 0)], -1 - np.arange(width)[None, :])
    order = np.argsort(place, axis=1, kind="stable")
    sorted_place = np.take_along_axis(place, order, axis=1)
    first = np.ones((q, width), dtype=bool)
    first[:, 1:] = sorted_place[:, 1:] != sorted_place[:, :-1]
    keep = np.zeros((q, width), dtype=bool)
    np.put_along_axis(keep, order, first, axis=1)
    keep &= valid
    out = np.full((q, width), -1, dtype=np.int64)
    slot = np.cumsum(keep, axis=1) - 1
    rows, cols = np.nonzero(keep)
    out[rows, slot[rows, cols]] = head[rows, cols]
    return out


def first_positive_rank(is_positive: np.ndarray) -> np.ndarray:
    """0-based rank of the first positive per row, -1 if none. (Q,) int64."""
    is_positive = np.asarray(is_positive, dtype=bool)
    assert is_positive.ndim == 2
    if is_positive.shape[1] == 0:
        return np.full(is_positive.shape[0], -1, dtype=np.int64)
    rank = np.argmax(is_positive, axis=1).astype(np.int64)
    rank[~is_positive.any(axis=1)] = -1
    return rank


def recall_at_n(
    first_rank: np.ndarray, ns: Sequence[int], evaluated: np.ndarray | None = None
) -> dict[int, float]:
    """Recall@N for every N: share of evaluated queries whose first positive rank is < N."""
    first_rank = np.asarray(first_rank)
    evaluated = (
        np.ones(first_rank.shape, bool) if evaluated is None else np.asarray(evaluated, bool)
    )
    total = int(evaluated.sum())
    if total == 0:
        raise HarnessError(
            "no query to evaluate (every query lacks a positive under policy 'exclude')"
        )
    hit_rank = first_rank[evaluated]
    found = hit_rank >= 0
    return {int(n): float(np.count_nonzero(found & (hit_rank < n)) / total) for n in ns}


def average_precision_at_k(
    is_positive: np.ndarray, num_positives: np.ndarray, k: int
) -> np.ndarray:
    """AP@K per query (see the module docstring); 0 for queries without positives. (Q,) float64."""
    is_positive = np.asarray(is_positive, dtype=bool)[:, :k]
    num_positives = np.asarray(num_positives, dtype=np.int64)
    assert num_positives.shape == (is_positive.shape[0],)
    hits = np.cumsum(is_positive, axis=1)
    ranks = np.arange(1, is_positive.shape[1] + 1)
    precision_sum = np.where(is_positive, hits / ranks, 0.0).sum(axis=1)
    denominator = np.minimum(num_positives, k)
    return np.divide(
        precision_sum, denominator, out=np.zeros(len(denominator)), where=denominator > 0
    )


def distinct_places_per_query(positives, places: np.ndarray) -> np.ndarray:
    """Number of distinct places among each query's positives. (Q,) int64."""
    counts = positives.counts
    if positives.indices.size == 0:
        return np.zeros(len(counts), dtype=np.int64)
    query = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    pairs = np.stack([query, places[positives.indices]], axis=1)
    unique_pairs = np.unique(pairs, axis=0)
    return np.bincount(unique_pairs[:, 0], minlength=len(counts)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class MetricsResult:
    """Scores plus the per-query facts they were computed from."""

    scores: dict[str, float]  # "recall@N", "map@K"
    first_positive_rank: np.ndarray  # (Q,) 0-based rank in the evaluated ranking, -1 none
    has_positive: np.ndarray  # (Q,) bool
    evaluated: np.ndarray  # (Q,) bool: counted in the denominators
    ranking: np.ndarray  # (Q, depth) the evaluated ranking (after NMS when on)
    average_precision: np.ndarray | None = None  # (Q,) AP@K per query (0 without positives)

    @property
    def queries_without_positive(self) -> int:
        return int(np.count_nonzero(~self.has_positive))

    @property
    def evaluated_queries(self) -> int:
        return int(np.count_nonzero(self.evaluated))


def compute_metrics(
    predictions: np.ndarray,
    positives,
    *,
    recall_ns: Sequence[int],
    map_k: int | None = None,
    no_positive: str = "miss",
    places: np.ndarray | None = None,
    nms_pool: int = 0,
) -> MetricsResult:
    """Recall@N and mAP@K of ranked ``predictions`` against ``positives``.

    Args:
        predictions: (Q, K) database rows, best first (-1 pads).
        positives: :class:`harness.ground_truth.Positives` for the same Q queries.
        recall_ns: the N of Recall@N (every N <= the ranking depth, else it is an error).
        map_k: depth of mAP (default max N).
        no_positive: ``"miss"`` or ``"exclude"``.
        places: (N,) place ids; with ``nms_pool`` > 0, spatial NMS is applied first.
        nms_pool: leading predictions that spatial NMS looks at (0: no NMS).
    """
    if no_positive not in NO_POSITIVE_POLICIES:
        raise HarnessError(
            f"no_positive must be one of {NO_POSITIVE_POLICIES}, got {no_positive!r}"
        )
    predictions = np.asarray(predictions, dtype=np.int64)
    assert predictions.ndim == 2 and predictions.shape[0] == len(positives), (
        predictions.shape, len(positives))
    recall_ns = sorted({int(n) for n in recall_ns})
    map_k = max(recall_ns) if map_k is None else int(map_k)
    if nms_pool:
        if places is None:
            raise ValueError("spatial NMS needs the database places")
        ranking = spatial_nms(predictions, places, nms_pool)
        num_positive = distinct_places_per_query(positives, places)
    else:
        ranking = predictions
        num_positive = positives.counts
    depth = max(max(recall_ns), map_k)
    if predictions.shape[1] < depth and not nms_pool:
        raise ValueError(f"predictions hold {predictions.shape[1]} ranks; Recall/mAP need {depth}")
    if ranking.shape[1] < depth:
        pad = np.full((ranking.shape[0], depth - ranking.shape[1]), -1, dtype=np.int64)
        ranking = np.concatenate([ranking, pad], axis=1)
    ranking = ranking[:, :depth]
    is_positive = positives.is_positive(ranking)
    has_positive = positives.counts > 0
    evaluated = has_positive if no_positive == "exclude" else np.ones_like(has_positive)
    first_rank = first_positive_rank(is_positive)
    scores = {
        f"recall@{n}": value for n, value in recall_at_n(first_rank, recall_ns, evaluated).items()
    }
    ap = average_precision_at_k(is_positive, num_positive, map_k)
    scores[f"map@{map_k}"] = float(ap[evaluated].mean())
    return MetricsResult(scores, first_rank, has_positive, evaluated, ranking, ap)
