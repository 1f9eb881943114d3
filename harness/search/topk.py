"""The exact top-K result type, its exact merge, and the running top-K that blocks fold into.

Ties are deterministic: at equal score the lower database index ranks first, whatever order the
blocks (or shards) arrive in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Index of a padded (missing) rank.
INDEX_PAD = -1
_NO_INDEX_KEY = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class TopK:
    """The K best database rows per query, best first.

    ``scores`` (Q, K) float32 inner products, descending along each row; ``indices`` (Q, K)
    int64 split database rows. When the database holds fewer than K rows the tail of each row
    is padded with score ``-inf`` and index ``-1``. At equal score the lower index comes first.
    """

    scores: np.ndarray
    indices: np.ndarray

    def __post_init__(self):
        scores = np.ascontiguousarray(self.scores, dtype=np.float32)
        indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != indices.shape:
            raise ValueError(
                f"TopK scores {scores.shape} and indices {indices.shape} must be equal 2-D shapes"
            )
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "indices", indices)

    @property
    def num_queries(self) -> int:
        return int(self.scores.shape[0])

    @property
    def k(self) -> int:
        return int(self.scores.shape[1])

    @classmethod
    def empty(cls, num_queries: int, k: int) -> "TopK":
        """All ranks padded (score ``-inf``, index ``-1``)."""
        return cls(
            np.full((num_queries, k), -np.inf, dtype=np.float32),
            np.full((num_queries, k), INDEX_PAD, dtype=np.int64),
        )

    def truncate(self, k: int) -> "TopK":
        """The first ``k`` ranks (``k`` <= :attr:`k`)."""
        if not 0 < k <= self.k:
            raise ValueError(f"cannot truncate a top-{self.k} to {k}")
        return TopK(self.scores[:, :k], self.indices[:, :k])

    def select_queries(self, rows: np.ndarray | slice) -> "TopK":
        return TopK(self.scores[rows], self.indices[rows])

    def same_ranking(self, other: "TopK") -> bool:
        """Identical indices and scores (bit for bit)."""
        return (
            self.scores.shape == other.scores.shape
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.scores, other.scores)
        )


def _index_key(indices: np.ndarray) -> np.ndarray:
    """Sort key that puts padding (-1) after every real index."""
    return np.where(indices < 0, _NO_INDEX_KEY, indices)


def _select_rows(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best entries of (R, W) candidates: score descending, index ascending.

    A plain (SIMD) argsort orders most rows; the rows with an exact tie inside the first
    ``k + 1`` ranks are redone with a lexicographic sort, so ties never depend on input order.
    """
    rows, width = scores.shape
    assert indices.shape == (rows, width), (indices.shape, scores.shape)
    if width < k:
        pad = k - width
        scores = np.concatenate([scores, np.full((rows, pad), -np.inf, np.float32)], axis=1)
        indices = np.concatenate([indices, np.full((rows, pad), INDEX_PAD, np.int64)], axis=1)
        width = k
    order = np.argsort(-scores, axis=1)
    span = min(width, k + 1)
    head = np.take_along_axis(scores, order[:, :span], axis=1)
    tied = np.any((head[:, 1:] == head[:, :-1]) & np.isfinite(head[:, 1:]), axis=1)
    if tied.any():
        tied_rows = np.flatnonzero(tied)
        order[tied_rows] = np.lexsort(
            (_index_key(indices[tied_rows]), -scores[tied_rows]), axis=1
        )
    order = order[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


def merge_topk(parts: Sequence[TopK], k: int | None = None) -> TopK:
    """Exact top-``k`` of several partial results over disjoint database rows.

    Each part is the top-K of one shard of the database for the same queries. The merge equals
    a single search over the union (same ranks, same tie order: lower index first). ``k``
    defaults to the largest K among the parts. Overlapping shards (one database row in two
    parts) raise ``ValueError``: merging the same shard twice is a bookkeeping error.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    num_queries = parts[0].num_queries
    for part in parts:
        if part.num_queries != num_queries:
            raise ValueError(
                f"merge_topk: parts hold {part.num_queries} and {num_queries} queries"
            )
    k = max(p.k for p in parts) if k is None else int(k)
    if k < 1:
        raise ValueError("k must be >= 1")
    scores = np.concatenate([p.scores for p in parts], axis=1)
    indices = np.concatenate([p.indices for p in parts], axis=1)
    if len(parts) > 1:
        _check_disjoint(indices)
    merged_scores, merged_indices = _select_rows(scores, indices, k)
    return TopK(merged_scores, merged_indices)


def _check_disjoint(indices: np.ndarray) -> None:
    ordered = np.sort(indices, axis=1)
    duplicate = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if duplicate.any():
        row = int(np.flatnonzero(duplicate.any(axis=1))[0])
        value = int(ordered[row, 1:][duplicate[row]][0])
        raise ValueError(
            f"merge_topk: database row {value} appears in more than one part (query {row}); "
            "were the same shard's results merged twice?"
        )


class RunningTopK:
    """Exact running top-K of ``num_queries`` queries, fed one scored block at a time."""

    def __init__(self, num_queries: int, k: int):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)
        self.scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
        self.indices = np.full((num_queries, k), INDEX_PAD, dtype=np.int64)
        #: Per query: holds K real entries (its threshold is then its K-th score).
        self.full = np.zeros(num_queries, dtype=bool)

    def result(self) -> TopK:
        return TopK(self.scores.copy(), self.indices.copy())

    def add_scores(self, query_rows: slice, scores: np.ndarray, database_rows: np.ndarray,
                   floor: np.ndarray | None = None) -> None:
        """Fold ``scores`` (q, b) of queries ``query_rows`` vs ``database_rows`` (b,) in.

        ``floor`` (q,): scores below it are known to miss the final top-K (another part of the
        database already holds K better entries: a partial top-K searched beside this one);
        they are dropped, and this state may then hold fewer than K entries for a row.
        """
        q, b = scores.shape
        assert database_rows.shape == (b,), (database_rows.shape, b)
        assert floor is None or floor.shape == (q,), (None if floor is None else floor.shape, q)
        k = self.k
        state_scores = self.scores[query_rows]
        assert state_scores.shape[0] == q
        full = self.full[query_rows]
        threshold = np.where(full, state_scores[:, k - 1], -np.inf).astype(np.float32)
        if b <= k:
            cand_rows = np.repeat(np.arange(q), b)
            cand_cols = np.tile(np.arange(b), q)
            if floor is not None:
                keep = scores[cand_rows, cand_cols] >= floor[cand_rows]
                cand_rows, cand_cols = cand_rows[keep], cand_cols[keep]
        else:
            # Rows not yet full take the block's K-th score as a threshold: only the block's
            # top K (plus ties at K) can enter. Full rows take their own K-th score first and
            # fall back to the block's K-th only when many entries pass.
            open_rows = np.flatnonzero(~full)
            if open_rows.size:
                threshold[open_rows] = _kth_largest(scores[open_rows], k)
            if floor is not None:
                np.maximum(threshold, floor, out=threshold)
            # Once the running top-K has settled, most rows gain nothing from a block: a row
            # maximum (one cheap reduction) rules them out before the full comparison.
            active = np.flatnonzero(scores.max(axis=1) >= threshold)
            if active.size == 0:
                return
            if active.size > q // 2:
                cand_rows, cand_cols = np.nonzero(scores >= threshold[:, None])
            else:
                cand_rows, cand_cols = np.nonzero(scores[active] >= threshold[active, None])
                cand_rows = active[cand_rows]
            counts = np.bincount(cand_rows, minlength=q)
            crowded = np.flatnonzero(counts > 2 * k)
            if crowded.size:
                threshold[crowded] = np.maximum(
                    threshold[crowded], _kth_largest(scores[crowded], k)
                )
                keep = scores[cand_rows, cand_cols] >= threshold[cand_rows]
                cand_rows, cand_cols = cand_rows[keep], cand_cols[keep]
        if cand_rows.size == 0:
            return
        self.add_candidates(
            query_rows, cand_rows, scores[cand_rows, cand_cols], database_rows[cand_cols]
        )

    def add_candidates(self, query_rows: slice, local_rows: np.ndarray, scores: np.ndarray,
                       database_rows: np.ndarray) -> None:
        """Fold scattered candidates in: ``scores[i]`` of query ``local_rows[i]`` (relative to
        ``query_rows``, ascending) against database row ``database_rows[i]``."""
        n = local_rows.size
        assert scores.shape == (n,) and database_rows.shape == (n,), (
            scores.shape,
            database_rows.shape,
        )
        if n == 0:
            return
        k = self.k
        state_scores = self.scores[query_rows]
        q = state_scores.shape[0]
        counts = np.bincount(local_rows, minlength=q)
        touched = np.flatnonzero(counts)
        width = k + int(counts.max())
        merged_scores = np.full((touched.size, width), -np.inf, dtype=np.float32)
        merged_indices = np.full((touched.size, width), INDEX_PAD, dtype=np.int64)
        merged_scores[:, :k] = state_scores[touched]
        merged_indices[:, :k] = self.indices[query_rows][touched]
        # Candidates come row-major (ascending rows), so a row's entries are contiguous.
        position_in_touched = np.cumsum(counts > 0) - 1
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = k + np.arange(n) - starts[local_rows]
        target = position_in_touched[local_rows]
        merged_scores[target, slot] = scores
        merged_indices[target, slot] = database_rows
        best_scores, best_indices = _select_rows(merged_scores, merged_indices, k)
        absolute = np.arange(self.scores.shape[0])[query_rows][touched]
        self.scores[absolute] = best_scores
        self.indices[absolute] = best_indices
        self.full[absolute] = best_indices[:, k - 1] >= 0

    def add_scores_at(
        self, query_index: np.ndarray, scores: np.ndarray, database_rows: np.ndarray
    ) -> None:
        """:meth:`add_scores` for the (ascending) queries ``query_index`` of (len, b) ``scores``."""
        q, b = scores.shape
        assert query_index.shape == (q,), (query_index.shape, q)
        full = self.full[query_index]
        threshold = np.where(full, self.scores[query_index, self.k - 1], -np.inf).astype(np.float32)
        rows, cols = np.nonzero(scores >= threshold[:, None])
        if rows.size == 0:
            return
        # Whole-state candidates: rows relative to query 0, ascending since query_index is.
        self.add_candidates(slice(0, self.scores.shape[0]), query_index[rows], scores[rows, cols],
                            database_rows[cols])

    def add_topk(self, query_rows: slice, part: TopK) -> None:
        """Fold an already selected partial top-K (e.g. from faiss) in."""
        current = TopK(self.scores[query_rows], self.indices[query_rows])
        merged = merge_topk([current, part], self.k)
        absolute = np.arange(self.scores.shape[0])[query_rows]
        self.scores[absolute] = merged.scores
        self.indices[absolute] = merged.indices
        self.full[absolute] = merged.indices[:, self.k - 1] >= 0


def _kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value of each row of (r, b) ``scores`` (b > k)."""
    b = scores.shape[1]
    return np.partition(scores, b - k, axis=1)[:, b - k]

