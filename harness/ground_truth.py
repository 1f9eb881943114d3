"""Ground truth: which database images are positives of each query.

Definition (the one place it is made): database image ``d`` is a positive of query ``q`` iff

    dx * dx + dy * dy <= (radius_m + BOUNDARY_TOLERANCE_M) ** 2,   dx, dy = utm_d - utm_q

in float64, i.e. the boundary is *included*, as in the NetVLAD/OpenIBL lineage (scikit-learn's
``radius_neighbors`` keeps points at exactly the radius; faiss range search would drop them,
and takes a squared radius). ``BOUNDARY_TOLERANCE_M`` (1 micrometre) only absorbs float
rounding: a point meant to be exactly 25 m away whose coordinates are not exactly
representable (``0.3`` and ``25.3``) still counts; physically it changes nothing (UTM
coordinates are centimetre-precise at best). A KD-tree (``scipy.spatial.cKDTree``) finds
candidates with a slightly larger radius; the rule above then decides, so the tree's own
rounding never matters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

BOUNDARY_TOLERANCE_M = 1e-6


@dataclass(frozen=True, eq=False)
class Positives:
    """Positives of every query in compressed sparse row form.

    ``indices[offsets[q]:offsets[q + 1]]`` are the database rows within the radius of query
    ``q``, sorted ascending. ``offsets`` is int64 ``(Q + 1,)``, ``indices`` int64.
    """

    offsets: np.ndarray
    indices: np.ndarray
    num_database: int
    radius_m: float

    def __post_init__(self):
        assert self.offsets.dtype == np.int64 and self.offsets.ndim == 1 and self.offsets.size >= 1
        assert self.indices.dtype == np.int64 and self.indices.ndim == 1
        assert self.offsets[0] == 0 and self.offsets[-1] == self.indices.size

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def num_queries(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, query: int) -> np.ndarray:
        """Sorted database rows that are positives of ``query``."""
        query = int(query)
        if query < 0:
            query += len(self)
        if not 0 <= query < len(self):
            raise IndexError(f"query {query} out of range for {len(self)} queries")
        return self.indices[self.offsets[query] : self.offsets[query + 1]]

    @property
    def counts(self) -> np.ndarray:
        """Number of positives per query, int64 ``(Q,)``."""
        return np.diff(self.offsets)

    @property
    def has_positive(self) -> np.ndarray:
        """Boolean ``(Q,)``: whether each query has at least one positive."""
        return self.counts > 0

    @property
    def num_without_positive(self) -> int:
        return int(np.count_nonzero(self.counts == 0))

    def is_positive(self, predictions: np.ndarray) -> np.ndarray:
        """Vectorised membership: ``predictions`` (Q, K) database rows -> (Q, K) bool.

        Row ``q`` of ``predictions`` is tested against the positives of query ``q``; negative
        entries (faiss pads missing results with -1) are never positive.
        """
        predictions = np.asarray(predictions)
        assert predictions.ndim == 2 and predictions.shape[0] == len(
            self
        ), f"predictions must be ({len(self)}, K), got {predictions.shape}"
        if self.indices.size == 0 or predictions.size == 0:
            return np.zeros(predictions.shape, dtype=bool)
        # Keys query * N + row are globally sorted because rows are sorted per query.
        stride = np.int64(max(self.num_database, 1))
        positive_keys = np.repeat(np.arange(len(self), dtype=np.int64), self.counts) * stride
        positive_keys += self.indices
        rows = predictions.astype(np.int64, copy=False)
        valid = (rows >= 0) & (rows < stride)
        keys = np.arange(len(self), dtype=np.int64)[:, None] * stride + np.where(valid, rows, 0)
        found = np.searchsorted(positive_keys, keys)
        found = np.minimum(found, positive_keys.size - 1)
        return valid & (positive_keys[found] == keys)


def _check_utm(utm: np.ndarray, label: str) -> np.ndarray:
    utm = np.ascontiguousarray(utm, dtype=np.float64)
    assert utm.ndim == 2 and utm.shape[1] == 2, f"{label} must be (n, 2), got {utm.shape}"
    return utm


def within_radius(squared_distance_m2: np.ndarray, radius_m: float) -> np.ndarray:
    """The positive rule on squared distances (boundary included, see the module docstring)."""
    limit = float(radius_m) + BOUNDARY_TOLERANCE_M
    return squared_distance_m2 <= limit * limit


def squared_distances_m2(utm_a: np.ndarray, utm_b: np.ndarray) -> np.ndarray:
    """Element-wise squared distance ``dx*dx + dy*dy`` in float64 (pairs, broadcasting)."""
    delta = np.asarray(utm_a, dtype=np.float64) - np.asarray(utm_b, dtype=np.float64)
    return delta[..., 0] * delta[..., 0] + delta[..., 1] * delta[..., 1]


def build_tree(database_utm: np.ndarray):
    """A KD-tree over database positions (reusable across :func:`positives_within_radius` calls)."""
    from scipy.spatial import cKDTree  # ~0.2 s to import; most commands never need positives

    database_utm = _check_utm(database_utm, "database_utm")
    # Unbalanced, non-compact trees build ~2x faster and query as fast for 2-D points.
    return cKDTree(database_utm, leafsize=32, balanced_tree=False, compact_nodes=False)


def positives_within_radius(
    database_utm: np.ndarray,
    query_utm: np.ndarray,
    radius_m: float,
    *,
    tree=None,
    workers: int = 1,
) -> Positives:
    """Database rows within ``radius_m`` of each query (boundary included).

    Args:
        database_utm: ``(N, 2)`` UTM easting/northing in metres.
        query_utm: ``(Q, 2)``.
        radius_m: positive radius in metres (> 0).
        tree: optional :func:`build_tree` result for ``database_utm``, to reuse it.
        workers: threads for the KD-tree query (``-1``: all cores).

    Returns:
        :class:`Positives` with per-query sorted database rows.
    """
    database_utm = _check_utm(database_utm, "database_utm")
    query_utm = _check_utm(query_utm, "query_utm")
    radius_m = float(radius_m)
    if not radius_m > 0:
        raise ValueError(f"radius_m must be > 0, got {radius_m}")
    num_queries, num_database = len(query_utm), len(database_utm)
    if num_queries == 0 or num_database == 0:
        return Positives(
            offsets=np.zeros(num_queries + 1, dtype=np.int64),
            indices=np.zeros(0, dtype=np.int64),
            num_database=num_database,
            radius_m=radius_m,
        )
    if tree is None:
        tree = build_tree(database_utm)
    assert tree.n == num_database, "tree was built for another database"
    # Candidates with a margin; within_radius() then applies the one definition exactly.
    search_radius = radius_m + 2 * BOUNDARY_TOLERANCE_M + radius_m * 1e-9
    candidates = tree.query_ball_point(
        query_utm, search_radius, workers=workers, return_sorted=True
    )
    counts = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=num_queries)
    total = int(counts.sum())
    rows = np.fromiter((row for found in candidates for row in found), dtype=np.int64, count=total)
    query_rows = np.repeat(np.arange(num_queries, dtype=np.int64), counts)
    keep = within_radius(squared_distances_m2(database_utm[rows], query_utm[query_rows]), radius_m)
    rows, query_rows = rows[keep], query_rows[keep]
    offsets = np.zeros(num_queries + 1, dtype=np.int64)
    np.cumsum(np.bincount(query_rows, minlength=num_queries), out=offsets[1:])
    return Positives(offsets=offsets, indices=rows, num_database=num_database, radius_m=radius_m)


def nearest_database_distance_m(
    database_utm: np.ndarray, query_utm: np.ndarray, *, tree=None, workers: int = 1
) -> np.ndarray:
    """Distance in metres from each query to its nearest database image, float64 ``(Q,)``.

    ``inf`` when the database is empty. Useful to report how far queries without a positive
    are from the database.
    """
    database_utm = _check_utm(database_utm, "database_utm")
    query_utm = _check_utm(query_utm, "query_utm")
    if len(database_utm) == 0:
        return np.full(len(query_utm), np.inf)
    if len(query_utm) == 0:
        return np.zeros(0)
    if tree is None:
        tree = build_tree(database_utm)
    _, rows = tree.query(query_utm, k=1, workers=workers)
    return np.sqrt(squared_distances_m2(database_utm[rows], query_utm))


def place_ids_from_positions(utm: np.ndarray) -> np.ndarray:
    """Group images taken at the exact same position into places, int64 ``(n,)``.

    Tokyo 24/7's database holds 12 perspective crops per Street View panorama, all with the
    panorama's position; spatial NMS keeps one prediction per such place. Ids are dense and
    numbered in order of first appearance.
    """
    utm = _check_utm(utm, "utm")
    if len(utm) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(utm, axis=0, return_index=True, return_inverse=True)
    # renumber so that ids follow the order of first appearance
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)].astype(np.int64)
