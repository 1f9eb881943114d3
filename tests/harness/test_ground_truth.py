"""Ground truth: positives within the radius, boundary included, against a naive scan."""

from __future__ import annotations

import numpy as np
import pytest

from harness.ground_truth import (
    BOUNDARY_TOLERANCE_M,
    Positives,
    build_tree,
    nearest_database_distance_m,
    place_ids_from_positions,
    positives_within_radius,
)


def naive_positives(database_utm, query_utm, radius_m):
    """O(Q x N) reference: hypot distance <= radius (+ the documented rounding tolerance)."""
    result = []
    for query in query_utm:
        distances = np.hypot(database_utm[:, 0] - query[0], database_utm[:, 1] - query[1])
        result.append(np.flatnonzero(distances <= radius_m + BOUNDARY_TOLERANCE_M))
    return result


ORIGIN = (583000.25, 5800000.75)  # UTM-sized coordinates


@pytest.mark.parametrize(
    "query, database, radius_m, expected",
    [
        pytest.param((0.0, 0.0), [(25.0, 0.0)], 25.0, [0], id="exactly-at-radius-axis"),
        pytest.param((0.0, 0.0), [(15.0, 20.0)], 25.0, [0], id="exactly-at-radius-diagonal"),
        pytest.param((0.0, 0.0), [(0.0, -50.0)], 50.0, [0], id="exactly-at-50m"),
        # 32.2 - 7.2 == 25.000000000000004 in float64: meant as 25 m, still a positive.
        pytest.param((7.2, 0.0), [(32.2, 0.0)], 25.0, [0], id="at-radius-after-rounding"),
        pytest.param(ORIGIN, [(ORIGIN[0] + 25.0, ORIGIN[1])], 25.0, [0], id="at-radius-utm-scale"),
        pytest.param((0.0, 0.0), [(25.001, 0.0)], 25.0, [], id="1mm-outside"),
        pytest.param((0.0, 0.0), [(15.0, 20.0001)], 25.0, [], id="just-outside-diagonal"),
        pytest.param((0.0, 0.0), [(100.0, 100.0), (-30.0, 0.0)], 25.0, [], id="no-positive"),
        pytest.param(
            (1.0, 1.0),
            [(2.0, 2.0), (2.0, 2.0), (2.0, 2.0), (90.0, 0)],
            25.0,
            [0, 1, 2],
            id="duplicate-positions",
        ),
        pytest.param((5.0, 5.0), [(5.0, 5.0)], 25.0, [0], id="same-position"),
    ],
)
def test_boundary_cases(query, database, radius_m, expected):
    positives = positives_within_radius(
        np.array(database, float), np.array([query], float), radius_m
    )
    assert positives[0].tolist() == expected
    assert positives.num_without_positive == (0 if expected else 1)
    naive = naive_positives(np.array(database, float), np.array([query], float), radius_m)
    assert naive[0].tolist() == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_scan_on_random_data(seed):
    rng = np.random.default_rng(seed)
    # A coarse grid makes many points fall exactly at integer distances such as 25 m.
    database_utm = rng.integers(0, 200, size=(1500, 2)).astype(float) + ORIGIN
    query_utm = rng.integers(0, 200, size=(120, 2)).astype(float) + ORIGIN
    query_utm[-3:] += 10_000  # far away: no positive
    positives = positives_within_radius(database_utm, query_utm, 25.0)
    expected = naive_positives(database_utm, query_utm, 25.0)
    assert len(positives) == len(expected) == 120
    for query, rows in enumerate(expected):
        np.testing.assert_array_equal(positives[query], rows)
    np.testing.assert_array_equal(positives.counts, [len(r) for r in expected])
    assert positives.num_without_positive == sum(len(r) == 0 for r in expected) >= 3
    assert positives.indices.dtype == np.int64 and positives.offsets.dtype == np.int64


def test_reused_tree_gives_same_result():
    rng = np.random.default_rng(3)
    database_utm = rng.uniform(0, 300, size=(400, 2))
    query_utm = rng.uniform(0, 300, size=(30, 2))
    tree = build_tree(database_utm)
    first = positives_within_radius(database_utm, query_utm, 25.0, tree=tree)
    second = positives_within_radius(database_utm, query_utm, 40.0, tree=tree)
    plain = positives_within_radius(database_utm, query_utm, 25.0)
    np.testing.assert_array_equal(first.indices, plain.indices)
    assert second.counts.sum() > first.counts.sum()


@pytest.mark.parametrize("num_queries, num_database", [(0, 10), (5, 0), (0, 0)])
def test_empty_inputs(num_queries, num_database):
    positives = positives_within_radius(
        np.zeros((num_database, 2)), np.ones((num_queries, 2)), 25.0
    )
    assert len(positives) == num_queries
    assert positives.num_without_positive == num_queries
    assert positives.indices.size == 0


def test_is_positive_matches_membership():
    rng = np.random.default_rng(4)
    database_utm = rng.uniform(0, 200, size=(300, 2))
    query_utm = rng.uniform(0, 200, size=(25, 2))
    positives = positives_within_radius(database_utm, query_utm, 25.0)
    predictions = rng.integers(-1, 300, size=(25, 12))
    predictions[:, 0] = [positives[q][0] if positives.counts[q] else -1 for q in range(25)]
    hits = positives.is_positive(predictions)
    expected = np.array(
        [[row in set(positives[q].tolist()) for row in predictions[q]] for q in range(25)]
    )
    np.testing.assert_array_equal(hits, expected)
    assert hits[:, 0].sum() == int((positives.counts > 0).sum())


def test_is_positive_hand_case():
    positives = Positives(
        offsets=np.array([0, 2, 2, 3], dtype=np.int64),
        indices=np.array([1, 4, 0], dtype=np.int64),
        num_database=5,
        radius_m=25.0,
    )
    predictions = np.array([[4, 0, -1], [1, 4, 0], [0, 0, 5]])
    expected = [[True, False, False], [False, False, False], [True, True, False]]
    assert positives.is_positive(predictions).tolist() == expected
    assert positives.counts.tolist() == [2, 0, 1]
    assert positives.num_without_positive == 1
    assert positives[-1].tolist() == [0]
    with pytest.raises(IndexError):
        positives[3]


def test_nearest_database_distance():
    rng = np.random.default_rng(5)
    database_utm = rng.uniform(0, 500, size=(200, 2))
    query_utm = rng.uniform(0, 500, size=(20, 2))
    distances = nearest_database_distance_m(database_utm, query_utm)
    brute = np.array([np.hypot(*(database_utm - q).T).min() for q in query_utm])
    np.testing.assert_allclose(distances, brute, rtol=1e-12)
    assert np.isinf(nearest_database_distance_m(np.zeros((0, 2)), query_utm)).all()


def test_radius_must_be_positive():
    with pytest.raises(ValueError, match="radius_m"):
        positives_within_radius(np.zeros((3, 2)), np.zeros((1, 2)), 0.0)


def test_place_ids_from_positions():
    utm = np.array([[5.0, 1.0], [0.0, 0.0], [5.0, 1.0], [0.0, 0.0], [2.0, 2.0], [5.0, 1.0]])
    assert place_ids_from_positions(utm).tolist() == [0, 1, 0, 1, 2, 0]
    assert place_ids_from_positions(np.zeros((0, 2))).tolist() == []
