"""Intervals and "not significantly different from the best" marks for leaderboard tables.

For every row of a :class:`~leaderboard.tables.Table`:

* the interval of each Recall@N column: the record's own bootstrap interval for a split,
  and for the mean of a benchmark with several splits (Indoor-Ams 1 and 2) a stratified
  bootstrap over the records' committed rankings (each set's queries resampled within the
  set; the statistic is the mean of the sets' recalls, as the benchmark ranks them);
* whether it is distinguishable from the best row (rank 1) at the rank column (Recall@1 or
  its mean): an exact McNemar test on the paired queries (the hits at 1 of both methods,
  pooled over the benchmark's splits) when both records have committed rankings of the same
  queries, p >= alpha meaning "not significantly different"; otherwise the weaker
  criterion that their intervals overlap.

All resampling uses one fixed seed, so a build is byte-for-byte reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import numpy as np

from harness.errors import HarnessError
from harness.stats import BootstrapSettings, mcnemar_exact, per_query_scores, score_intervals
from leaderboard.benchmarks import RECALL_COLUMNS
from leaderboard.tables import MEAN_GROUP, Entry, Row, Table

logger = logging.getLogger(__name__)

ALPHA = 0.05
SETTINGS = BootstrapSettings()
TIE_PAIRED = "paired"
TIE_OVERLAP = "overlap"


def _hits(entry: Entry | None) -> dict[str, np.ndarray] | None:
    """Per-query hits at every leaderboard N from the entry's committed rankings, or None."""
    if entry is None or not entry.predictions_path:
        return None
    from leaderboard.records import read_topk

    try:
        topk = read_topk(entry.predictions_path)
    except HarnessError as exc:
        logger.warning("no paired statistics for %s on %s: %s", entry.method, entry.split,
                       exc.one_line())
        return None
    ns = [n for n in RECALL_COLUMNS if n <= topk.indices.shape[1]]
    return per_query_scores(topk.first_positive_rank, topk.has_positive, ns, entry.no_positive)


def _row_statistics(table: Table, row: Row, entries: Mapping[tuple[str, str], Entry]):
    """(intervals per column key, per-split hits or None) of one row."""
    splits = table.benchmark.splits
    per_split = [entries.get((row.method, split)) for split in splits]
    intervals: dict[str, tuple[float, float]] = {}
    for split, entry in zip(splits, per_split):
        for n in RECALL_COLUMNS:
            bounds = None if entry is None else entry.intervals.get(f"recall@{n}")
            if bounds is not None:
                intervals[f"{split}/recall@{n}"] = (float(bounds[0]), float(bounds[1]))
    hits = [_hits(entry) for entry in per_split]
    if any(h is None for h in hits):
        return intervals, None
    if table.benchmark.has_mean:
        names = [f"recall@{n}" for n in RECALL_COLUMNS if all(f"recall@{n}" in h for h in hits)]
        strata = np.concatenate([np.full(len(h[names[0]]), i) for i, h in enumerate(hits)])
        pooled = {name: np.concatenate([h[name] for h in hits]) for name in names}
        for name, bounds in score_intervals(pooled, SETTINGS, strata).items():
            intervals[f"{MEAN_GROUP}/{name}"] = bounds
    return intervals, hits


def annotate_table(table: Table, entries: Mapping[tuple[str, str], Entry],
                   alpha: float = ALPHA) -> Table:
    """The table with each row's intervals and its tie-with-the-best mark filled in."""
    key = table.rank_column
    stats = {row.method: _row_statistics(table, row, entries) for row in table.rows}
    best = [row for row in table.rows if row.rank == 1]
    rows = []
    for row in table.rows:
        intervals, hits = stats[row.method]
        tie, p_value = None, None
        if row.rank is not None and best and row.rank != 1:
            tie, p_value = _tie(row, best[0], stats, key, alpha)
        rows.append(dataclasses.replace(row, intervals=intervals, tie_with_best=tie,
                                        tie_p_value=p_value))
    return dataclasses.replace(table, rows=tuple(rows))


def _tie(row: Row, best: Row, stats, key: str, alpha: float):
    intervals, hits = stats[row.method]
    best_intervals, best_hits = stats[best.method]
    if hits is not None and best_hits is not None and all(
            len(a["recall@1"]) == len(b["recall@1"]) for a, b in zip(hits, best_hits)):
        mine = np.concatenate([h["recall@1"] for h in hits]) > 0
        theirs = np.concatenate([h["recall@1"] for h in best_hits]) > 0
        p_value = mcnemar_exact(int(np.count_nonzero(theirs & ~mine)),
                                int(np.count_nonzero(mine & ~theirs)))
        return (TIE_PAIRED if p_value >= alpha else None), p_value
    mine, theirs = intervals.get(key), best_intervals.get(key)
    if mine is not None and theirs is not None and mine[1] >= theirs[0]:
        return TIE_OVERLAP, None
    return None, None
