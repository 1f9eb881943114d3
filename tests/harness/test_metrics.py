"""Hand-computed Recall@N, mAP@K, spatial NMS and the no-positive policies."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.ground_truth import Positives, positives_within_radius
from harness.metrics import (
    average_precision_at_k,
    compute_metrics,
    database_places,
    distinct_places_per_query,
    first_positive_rank,
    spatial_nms,
)


def make_positives(lists, num_database=100):
    counts = [len(p) for p in lists]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    indices = np.array([i for p in lists for i in sorted(p)], dtype=np.int64)
    return Positives(offsets=offsets, indices=indices, num_database=num_database, radius_m=25.0)


# Each case: predictions (Q, K), positives per query, policy, expected recall@{1,2,3} and map@3.
CASES = {
    "hit_at_1": ([[4, 5, 6]], [[4]], "miss", (1.0, 1.0, 1.0), 1.0),
    "hit_at_2_cumulative": ([[5, 4, 6]], [[4]], "miss", (0.0, 1.0, 1.0), 0.5),
    "hit_at_3": ([[5, 6, 4]], [[4, 9]], "miss", (0.0, 0.0, 1.0), (1 / 3) / 2),
    "never": ([[5, 6, 7]], [[4]], "miss", (0.0, 0.0, 0.0), 0.0),
    "two_positives": ([[4, 5, 9]], [[4, 9]], "miss", (1.0, 1.0, 1.0), (1 + 2 / 3) / 2),
    # P = 5 positives, capped at K = 3: three hits in a row is a perfect AP@3.
    "capped_at_k": ([[1, 2, 3]], [[1, 2, 3, 4, 5]], "miss", (1.0, 1.0, 1.0), 1.0),
    # Query 1 has no positive: a failure under "miss", left out under "exclude".
    "no_positive_miss": ([[4, 5, 6], [1, 2, 3]], [[5], []], "miss", (0.0, 0.5, 0.5), 0.25),
    "no_positive_exclude": ([[4, 5, 6], [1, 2, 3]], [[5], []], "exclude", (0.0, 1.0, 1.0), 0.5),
    # -1 padding (database smaller than K) is never a hit.
    "padding": ([[7, -1, -1]], [[7]], "miss", (1.0, 1.0, 1.0), 1.0),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hand_computed_recall_and_map(case):
    predictions, lists, policy, recalls, expected_map = case
    result = compute_metrics(np.array(predictions), make_positives(lists), recall_ns=(1, 2, 3),
                             map_k=3, no_positive=policy)
    assert [result.scores[f"recall@{n}"] for n in (1, 2, 3)] == pytest.approx(list(recalls))
    assert result.scores["map@3"] == pytest.approx(expected_map)


def test_counts_and_first_rank():
    result = compute_metrics(
        np.array([[4, 5, 6], [1, 2, 3], [9, 8, 3]]),
        make_positives([[5], [], [3]]),
        recall_ns=(1, 3),
        no_positive="exclude",
    )
    np.testing.assert_array_equal(result.first_positive_rank, [1, -1, 2])
    assert result.queries_without_positive == 1 and result.evaluated_queries == 2
    np.testing.assert_array_equal(result.has_positive, [True, False, True])


def test_exclude_with_no_positive_at_all_is_an_error():
    with pytest.raises(HarnessError, match="no query to evaluate"):
        compute_metrics(
            np.array([[1, 2]]), make_positives([[]]), recall_ns=(1,), no_positive="exclude"
        )


def test_too_shallow_predictions_are_an_error():
    with pytest.raises(ValueError, match="need 5"):
        compute_metrics(np.array([[1, 2]]), make_positives([[1]]), recall_ns=(1, 5))


@pytest.mark.parametrize(
    "row, places, pool, expected",
    [
        # places: rows 0,1 -> place 0; 2,3 -> place 1; 4 -> place 2
        ([1, 0, 3, 4, 2], [0, 0, 1, 1, 2], 5, [1, 3, 4, -1, -1]),
        ([0, 2, 1, 3, 4], [0, 0, 1, 1, 2], 5, [0, 2, 4, -1, -1]),
        # only the first `pool` predictions are looked at (then the list ends)
        ([0, 1, 2, 3, 4], [0, 0, 1, 1, 2], 3, [0, 2, -1]),
        # padding never counts as a duplicate and stays at the end
        ([4, -1, -1], [0, 0, 1, 1, 2], 3, [4, -1, -1]),
    ],
)
def test_spatial_nms_hand_cases(row, places, pool, expected):
    kept = spatial_nms(np.array([row]), np.array(places), pool)
    np.testing.assert_array_equal(kept[0], expected)


def test_spatial_nms_changes_recall_at_n():
    # Database: 6 images at 3 places (2 views each). Query positive: place 2 (rows 4, 5).
    utm = np.array([[0, 0], [0, 0], [100, 0], [100, 0], [500, 0], [500, 0]], dtype=float)
    places = database_places(utm)
    assert len(set(places[[0, 1]])) == 1 and len(set(places.tolist())) == 3
    positives = positives_within_radius(utm, np.array([[500.0, 3.0]]), 25.0)
    predictions = np.array([[0, 1, 2, 3, 4, 5]])
    plain = compute_metrics(predictions, positives, recall_ns=(1, 3, 5))
    nms = compute_metrics(predictions, positives, recall_ns=(1, 3, 5), places=places, nms_pool=6)
    assert plain.scores["recall@3"] == 0.0 and plain.scores["recall@5"] == 1.0
    assert nms.scores["recall@3"] == 1.0  # the NMS'd ranking is 0, 2, 4
    np.testing.assert_array_equal(nms.ranking[0, :3], [0, 2, 4])
    # One positive place: the positive at rank 3 gives AP@5 = 1/3.
    assert distinct_places_per_query(positives, places).tolist() == [1]
    assert nms.scores["map@5"] == pytest.approx(1 / 3)


def test_query_exactly_at_the_radius_is_a_hit():
    utm = np.array([[0.0, 0.0], [30.0, 0.0]])
    positives = positives_within_radius(utm, np.array([[25.0, 0.0]]), 25.0)
    result = compute_metrics(np.array([[0, 1]]), positives, recall_ns=(1, 2))
    assert result.scores["recall@1"] == 1.0  # row 0 is exactly 25 m away


def test_first_positive_rank_and_ap_vectorised_against_a_loop():
    rng = np.random.default_rng(0)
    is_positive = rng.random((200, 10)) < 0.2
    num_positives = is_positive.sum(1) + rng.integers(0, 3, 200)
    ap = average_precision_at_k(is_positive, num_positives, 10)
    ranks = first_positive_rank(is_positive)
    for q in range(200):
        hits = np.flatnonzero(is_positive[q])
        assert ranks[q] == (hits[0] if hits.size else -1)
        precision = [(i + 1) / (r + 1) for i, r in enumerate(hits)]
        expected = sum(precision) / min(10, num_positives[q]) if num_positives[q] else 0.0
        assert ap[q] == pytest.approx(expected)


def test_recall_matches_the_lineage_loop_on_random_data():
    """The seed's per-query loop (np.isin), on 300 queries: identical Recall@N."""
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 50, (300, 20))
    lists = [sorted(set(rng.integers(0, 50, rng.integers(0, 4)).tolist())) for _ in range(300)]
    ns = (1, 5, 10, 20)
    result = compute_metrics(predictions, make_positives(lists, 50), recall_ns=ns)
    correct = np.zeros(len(ns))
    for q, row in enumerate(predictions):
        for i, n in enumerate(ns):
            if np.any(np.isin(row[:n], lists[q])):
                correct[i:] += 1
                break
    assert [result.scores[f"recall@{n}"] for n in ns] == pytest.approx((correct / 300).tolist())
