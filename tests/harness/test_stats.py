"""Bootstrap intervals, paired tests and the exact McNemar test (hand-computed references)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.stats import (
    BootstrapSettings,
    bootstrap_distribution,
    bootstrap_interval,
    format_interval,
    mcnemar_exact,
    paired_scores,
    per_query_scores,
    point_estimate,
    score_intervals,
    verdict,
)


def test_mcnemar_known_table():
    # b = 1, c = 9: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == 0.021484375
    assert mcnemar_exact(9, 1) == 0.021484375
    # b = 0, c = 5: p = 2 / 32
    assert mcnemar_exact(0, 5) == 0.0625
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(4, 4) == 1.0  # capped at 1


def test_mcnemar_matches_a_brute_force_binomial_sum():
    for b, c in [(3, 11), (20, 35), (7, 0), (120, 80)]:
        n = b + c
        probabilities = [math.comb(n, k) / 2 ** n for k in range(n + 1)]
        lower = sum(probabilities[: min(b, c) + 1])
        assert mcnemar_exact(b, c) == pytest.approx(min(1.0, 2 * lower), rel=1e-12)


def test_interval_of_a_constant_vector_is_degenerate():
    settings = BootstrapSettings(resamples=200, seed=3)
    for value in (0.0, 1.0):
        low, high = bootstrap_interval(np.full(57, value), settings)[0]
        assert low == high == value


def test_intervals_are_reproducible_with_the_seed_and_change_with_it():
    values = (np.arange(300) % 3 == 0).astype(float)
    first = bootstrap_interval(values, BootstrapSettings(resamples=500, seed=11))
    again = bootstrap_interval(values, BootstrapSettings(resamples=500, seed=11))
    other = bootstrap_interval(values, BootstrapSettings(resamples=500, seed=12))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bootstrap_equals_a_brute_force_resampling_loop():
    rng = np.random.default_rng(5)
    values = rng.random((40, 2))
    settings = BootstrapSettings(resamples=64, seed=9)
    # The same draws, one resample at a time: rows of query indices, then their means.
    reference_rng = np.random.default_rng([settings.seed, 0])
    draws = reference_rng.integers(0, 40, size=(64, 40))
    expected = np.stack([values[row].mean(axis=0) for row in draws])
    assert np.allclose(bootstrap_distribution(values, settings), expected, rtol=0, atol=1e-12)
    tail = (1 - settings.confidence) / 2
    assert np.allclose(bootstrap_interval(values, settings).T,
                       np.quantile(expected, [tail, 1 - tail], axis=0))


def test_stratified_bootstrap_is_the_mean_of_the_strata():
    values = np.concatenate([np.ones(30), np.zeros(10)])
    strata = np.array(["one"] * 30 + ["two"] * 10)
    # Each set is constant: every resample's mean of the two set means is exactly 0.5,
    # although the pooled mean is 0.75.
    assert point_estimate(values, strata)[0] == 0.5
    low, high = bootstrap_interval(values, BootstrapSettings(resamples=100), strata)[0]
    assert low == high == 0.5


def test_per_query_scores_follow_the_no_positive_policy():
    rank = np.array([0, 3, -1, -1])
    has_positive = np.array([True, True, True, False])
    miss = per_query_scores(rank, has_positive, (1, 5), "miss")
    exclude = per_query_scores(rank, has_positive, (1, 5), "exclude")
    assert miss["recall@1"].tolist() == [1, 0, 0, 0] and miss["recall@5"].tolist() == [1, 1, 0, 0]
    assert exclude["recall@5"].tolist() == [1, 1, 0]


def test_paired_comparison_of_a_result_with_itself_is_no_difference():
    rng = np.random.default_rng(0)
    scores = per_query_scores(rng.integers(-1, 30, 200), np.ones(200, bool), (1, 5, 10), "miss")
    for paired in paired_scores(scores, scores, BootstrapSettings(resamples=100)):
        assert paired.difference == paired.low == paired.high == 0.0
        assert paired.a_only == paired.b_only == 0 and paired.p_value == 1.0
    assert verdict(paired_scores(scores, scores)[0]).startswith("no significant difference")


def test_paired_comparison_counts_wins_losses_and_decides():
    a = {"recall@1": np.array([1.0] * 50 + [0.0] * 50)}
    b = {"recall@1": np.array([1.0] * 49 + [0.0] + [1.0] * 9 + [0.0] * 41)}
    paired, = paired_scores(a, b, BootstrapSettings(resamples=300))
    assert (paired.a_only, paired.b_only) == (1, 9)
    assert paired.p_value == 0.021484375
    assert paired.difference == pytest.approx(0.08)
    assert paired.low <= paired.difference <= paired.high
    assert verdict(paired, "base", "new") == "new > base at R@1, p = 0.0215"


def test_score_intervals_and_formatting():
    intervals = score_intervals({"recall@1": np.ones(10), "recall@5": np.ones(10)})
    assert intervals == {"recall@1": (1.0, 1.0), "recall@5": (1.0, 1.0)}
    assert format_interval(0.613, 0.592, 0.634) == "61.3 ± 2.1"
    assert format_interval(0.613, 0.592, 0.634, "bracket") == "61.3 [59.2, 63.4]"


def test_bad_settings_are_refused():
    with pytest.raises(HarnessError):
        BootstrapSettings(resamples=0)
    with pytest.raises(HarnessError):
        BootstrapSettings(confidence=1.0)
