"""Training tuples: positives within 10 m, hard negatives beyond 25 m, mined from cached features.

As OpenIBL's samplers (``DistributedRandomTupleSampler`` / ``...DiffTupleSampler``), for a query:

* positive: its nearest (in feature space) database image within ``pos_radius_m``;
* negatives: the ``neg_num`` nearest among a random pool of ``neg_pool`` database images
  beyond ``neg_radius_m``, joined with the query's negatives of the previous round;
* SFRS difficult positives: among the ``pos_pool`` nearest positives, those the re-ranked
  (k-reciprocal) distance moves up most, then those it leaves in place, ``pos_num`` in all
  (generation 0 has no re-ranking: the ``pos_num`` nearest).

Queries without a positive are not trained on (as OpenIBL). Where a pool holds fewer
candidates than needed (tiny datasets) the chosen ones are repeated cyclically; OpenIBL would
fail there. Distances are computed for each query against its candidates only: no
query x database matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import HarnessError


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """The trainable queries of a split with their positives and non-negatives (database rows)."""

    query_rows: np.ndarray  # split query rows that have a positive
    positives: tuple  # per trainable query: database rows within pos_radius_m
    non_negatives: tuple  # per trainable query: database rows within neg_radius_m
    num_database: int

    def __len__(self) -> int:
        return int(self.query_rows.shape[0])


def build_training_set(split, pos_radius_m: float, neg_radius_m: float) -> TrainingSet:
    from harness.ground_truth import build_tree, positives_within_radius

    tree = build_tree(split.database_utm)
    positives = positives_within_radius(
        split.database_utm, split.query_utm, pos_radius_m, tree=tree
    )
    near = positives_within_radius(split.database_utm, split.query_utm, neg_radius_m, tree=tree)
    keep = np.flatnonzero(positives.has_positive)
    if keep.size == 0:
        raise HarnessError(
            f"split {split.name}: no query has a database image within {pos_radius_m} m to train on"
        )
    return TrainingSet(
        query_rows=keep.astype(np.int64),
        positives=tuple(positives[int(q)].copy() for q in keep),
        non_negatives=tuple(near[int(q)].copy() for q in keep),
        num_database=split.num_database,
    )


def _cyclic(rows: np.ndarray, count: int) -> np.ndarray:
    assert rows.size > 0
    return rows[np.arange(count) % rows.size]


def difficult_positive_order(reranked: np.ndarray, count: int) -> np.ndarray:
    """Positions (in the distance-sorted pool) of the difficult positives, OpenIBL's rule.

    ``reranked``: re-ranked distance of each pool position. Rank ``r`` of the re-ranked order
    holds pool position ``p``; a gap ``r - p < 0`` means re-ranking moved it up. Taken: moved
    up, most first, then unmoved, at most ``count``.
    """
    order = np.argsort(reranked, kind="stable")  # re-ranked rank -> pool position
    gap = np.arange(order.size) - order
    moved_up = np.flatnonzero(gap < 0)
    moved_up = moved_up[np.argsort(gap[moved_up], kind="stable")]
    unmoved = np.flatnonzero(gap == 0)
    return order[np.concatenate((moved_up, unmoved))[:count]]


class Miner:
    """Builds tuples for a round of queries; keeps each query's last negatives (OpenIBL's cache)."""

    def __init__(
        self,
        training_set: TrainingSet,
        *,
        neg_num: int,
        neg_pool: int,
        pos_num: int = 0,
        pos_pool: int = 0,
    ):
        self.training_set = training_set
        self.neg_num = neg_num
        self.neg_pool = neg_pool
        self.pos_num = pos_num
        self.pos_pool = pos_pool
        self.negative_cache = np.full((len(training_set), neg_num), -1, dtype=np.int64)

    @property
    def tuple_size(self) -> int:
        return 2 + self.neg_num + self.pos_num

    def mine(
        self,
        queries,
        query_features: torch.Tensor,
        database_features: torch.Tensor,
        rng: np.random.Generator,
        rerank=None,
    ) -> np.ndarray:
        """Tuples ``(len(queries), tuple_size)`` for training-query positions ``queries``.

        Columns: split query row, positive, ``neg_num`` negatives, ``pos_num`` difficult
        positives (database rows). ``query_features`` are indexed by split query row.
        ``rerank(query_row, database_rows) -> distances`` enables SFRS re-ranking.
        """
        ts = self.training_set
        tuples = np.empty((len(queries), self.tuple_size), dtype=np.int64)
        all_database = np.arange(ts.num_database)
        with torch.no_grad():
            for out_row, position in enumerate(queries):
                query_row = int(ts.query_rows[position])
                feature = query_features[query_row]
                positives = ts.positives[position]
                similarity = (
                    (
                        database_features[
                            torch.as_tensor(positives, device=database_features.device)
                        ]
                        @ feature
                    )
                    .cpu()
                    .numpy()
                )
                ranked = positives[np.argsort(-similarity, kind="stable")]
                row = [query_row, int(ranked[0])]

                candidates = np.setdiff1d(
                    all_database, ts.non_negatives[position], assume_unique=True
                )
                if candidates.size == 0:
                    raise HarnessError(
                        f"query {query_row} has no database image beyond the negative radius "
                        "to use as negative"
                    )
                pool = rng.choice(
                    candidates, size=min(self.neg_pool, candidates.size), replace=False
                )
                cached = self.negative_cache[position]
                cached = cached[cached >= 0]
                pool = np.union1d(pool, np.intersect1d(cached, candidates))
                pool_similarity = (
                    (
                        database_features[torch.as_tensor(pool, device=database_features.device)]
                        @ feature
                    )
                    .cpu()
                    .numpy()
                )
                hardest = pool[np.argsort(-pool_similarity, kind="stable")[: self.neg_num]]
                negatives = _cyclic(hardest, self.neg_num)
                self.negative_cache[position] = negatives
                row.extend(negatives.tolist())

                if self.pos_num:
                    pool_positives = ranked[: self.pos_pool]
                    if rerank is not None and pool_positives.size > 1:
                        chosen = pool_positives[
                            difficult_positive_order(
                                rerank(query_row, pool_positives), self.pos_num
                            )
                        ]
                    else:
                        chosen = pool_positives[: self.pos_num]
                    row.extend(_cyclic(chosen, self.pos_num).tolist())
                tuples[out_row] = row
        return tuples
