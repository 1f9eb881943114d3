"""Property-based tests (hypothesis): random splits, descriptors full of exact ties.

* the exact search (every CPU backend, any block size) equals a brute-force numpy ranking,
  ties broken by the lower database row, as ``harness.search.TopK`` documents;
* ``harness.evaluate.evaluate`` on sharded, shuffled feature files equals a brute-force
  evaluation written from the metric definitions (per-query loops, no shared code);
* the ground truth equals a naive radius scan, points exactly on the radius included, at
  UTM-sized coordinates;
* spatial NMS equals its definition (first prediction of each place among the first
  ``pool``, in order, padded with -1).

Descriptors are small integers stored as float32, so every inner product is exact and ties
are exact: the harness must match the reference bit for bit, tie order included.
(``tests/harness/search/test_search.py``, ``tests/harness/test_ground_truth.py`` and
``tests/harness/test_metrics.py`` hold the
hand-made and seeded cases these generalise.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------------
# Strategies


@st.composite
def tied_descriptors(draw, rows: int, dim: int):
    """``rows`` x ``dim`` small integers (-2..2) as float32, no all-zero row; duplicates likely."""
    values = draw(hnp.arrays(np.int8, (rows, dim), elements=st.integers(-2, 2)))
    values = values.astype(np.float32)
    zero = ~values.any(axis=1)
    values[zero, 0] = 1.0
    if rows > 1 and draw(st.booleans()):  # exact duplicate rows: ties across the database
        source = draw(st.integers(0, rows - 1))
        for target in draw(st.lists(st.integers(0, rows - 1), max_size=3)):
            values[target] = values[source]
    return values


@st.composite
def search_problems(draw):
    num_queries = draw(st.integers(1, 6))
    num_database = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 6))
    queries = draw(tied_descriptors(num_queries, dim))
    database = draw(tied_descriptors(num_database, dim))
    k = draw(st.integers(1, num_database + 3))
    block_rows = draw(st.integers(1, num_database + 2))
    return queries, database, k, block_rows


def reference_topk(queries, database, k):
    """Brute force: every score, sorted by (-score, row); -inf / -1 padding past N."""
    scores = queries.astype(np.float64) @ database.astype(np.float64).T  # exact for small ints
    order = np.stack([np.lexsort((np.arange(len(row)), -row)) for row in scores])
    top = order[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    pad = k - top.shape[1]
    if pad > 0:
        top = np.concatenate([top, np.full((len(top), pad), -1)], axis=1)
        top_scores = np.concatenate([top_scores, np.full((len(top), pad), -np.inf)], axis=1)
    return top, top_scores.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The exact search


@pytest.mark.parametrize("backend", ["numpy", "faiss", "bf16"])
@settings(max_examples=60, **SETTINGS)
@given(problem=search_problems())
def test_search_equals_brute_force_with_ties(backend, problem):
    from harness.search import search

    queries, database, k, block_rows = problem
    if backend == "faiss":
        pytest.importorskip("faiss")
    found = search(queries, database, k, block_rows=block_rows, ngpu=0, cpu_backend=backend)
    indices, scores = reference_topk(queries, database, k)
    np.testing.assert_array_equal(found.scores, scores)
    np.testing.assert_array_equal(found.indices, indices)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["faiss-gpu", "torch-cuda"])
def test_gpu_search_equals_brute_force_with_ties(backend):
    """The GPU backends under the same property (skipped where no GPU is visible)."""
    from harness.search import (
        faiss_gpu_count,
        get_backend,
        iter_array_blocks,
        search_blocks,
        torch_gpu_count,
    )

    count = faiss_gpu_count() if backend == "faiss-gpu" else torch_gpu_count()
    if count < 1:
        pytest.skip(f"no GPU for {backend}")
    engine = get_backend(backend)

    @settings(max_examples=40, **SETTINGS)
    @given(problem=search_problems())
    def run(problem):
        queries, database, k, block_rows = problem
        found = search_blocks(queries, iter_array_blocks(database, block_rows), k,
                              backend=engine)
        indices, scores = reference_topk(queries, database, k)
        np.testing.assert_array_equal(found.scores, scores)
        np.testing.assert_array_equal(found.indices, indices)

    run()


@settings(max_examples=40, **SETTINGS)
@given(problem=search_problems(), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_merging_shard_topks_equals_one_search(problem, cuts):
    """merge_topk of the top-K of any cut of the database into shards is the single search."""
    from harness.search import merge_topk, search

    queries, database, k, _ = problem
    bounds = sorted({0, len(database), *[min(c, len(database)) for c in cuts]})
    parts = []
    for start, stop in zip(bounds, bounds[1:]):
        rows = np.arange(start, stop)
        parts.append(search(queries, database[start:stop], k, rows=rows, ngpu=0,
                            cpu_backend="numpy"))
    merged = merge_topk(parts, k=k)
    indices, scores = reference_topk(queries, database, k)
    np.testing.assert_array_equal(merged.scores, scores)
    np.testing.assert_array_equal(merged.indices, indices)


# --------------------------------------------------------------------------------------------
# The evaluator, end to end on feature files


@st.composite
def evaluation_problems(draw):
    num_queries = draw(st.integers(1, 8))
    num_database = draw(st.integers(2, 30))
    dim = draw(st.integers(1, 5))
    grid = st.integers(0, 12)  # positions on a 5 m grid: distances hit the radius exactly
    query_utm = np.array(draw(st.lists(st.tuples(grid, grid), min_size=num_queries,
                                       max_size=num_queries)), dtype=np.float64) * 5.0
    database_utm = np.array(draw(st.lists(st.tuples(grid, grid), min_size=num_database,
                                          max_size=num_database)), dtype=np.float64) * 5.0
    offset = draw(st.sampled_from([0.0, 583_000.0]))  # UTM-sized eastings as well
    recall_ns = tuple(sorted(draw(st.sets(st.integers(1, num_database + 2), min_size=1,
                                          max_size=3))))
    return dict(
        queries=draw(tied_descriptors(num_queries, dim)),
        database=draw(tied_descriptors(num_database, dim)),
        query_utm=query_utm + offset,
        database_utm=database_utm + offset,
        radius_m=float(draw(st.sampled_from([5.0, 10.0, 12.5, 25.0]))),
        recall_ns=recall_ns,
        no_positive=draw(st.sampled_from(["miss", "exclude"])),
        spatial_nms=draw(st.booleans()),
        shards=draw(st.integers(1, 3)),
        shuffle=draw(st.randoms(use_true_random=False)),
    )


def brute_force_scores(problem) -> dict[str, float]:
    """Recall@N and mAP@K from the definitions in harness/metrics.py, one query at a time."""
    queries, database = problem["queries"], problem["database"]
    ns = problem["recall_ns"]
    depth = max(ns)
    ranked = [list(np.lexsort((np.arange(len(database)), -(database.astype(np.float64) @ q))))
              for q in queries.astype(np.float64)]
    places = {}
    place_of = [places.setdefault(tuple(p), len(places)) for p in problem["database_utm"]]
    limit = (problem["radius_m"] + 1e-6) ** 2
    hits = {n: 0 for n in ns}
    ap_sum, counted = 0.0, 0
    for q, ranking in enumerate(ranked):
        dx = problem["database_utm"][:, 0] - problem["query_utm"][q, 0]
        dy = problem["database_utm"][:, 1] - problem["query_utm"][q, 1]
        positives = {d for d in range(len(database)) if dx[d] * dx[d] + dy[d] * dy[d] <= limit}
        if problem["spatial_nms"]:
            kept, seen = [], set()
            for d in ranking[: depth * 12]:
                if place_of[d] not in seen:
                    seen.add(place_of[d])
                    kept.append(d)
            ranking = kept
            wanted = len({place_of[d] for d in positives})
        else:
            wanted = len(positives)
        if not positives and problem["no_positive"] == "exclude":
            continue
        counted += 1
        first = next((r for r, d in enumerate(ranking[:depth]) if d in positives), None)
        for n in ns:
            hits[n] += first is not None and first < n
        found, precision = 0, 0.0
        for r, d in enumerate(ranking[:depth], start=1):
            if d in positives:
                found += 1
                precision += found / r
        ap_sum += precision / min(wanted, depth) if wanted else 0.0
    assume(counted > 0)  # policy "exclude" with no positive anywhere is an error, tested elsewhere
    scores = {f"recall@{n}": hits[n] / counted for n in ns}
    scores[f"map@{depth}"] = ap_sum / counted
    return scores


@settings(max_examples=30, **SETTINGS)
@given(problem=evaluation_problems())
def test_evaluate_equals_brute_force(problem, tmp_path_factory):
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.features import write_features
    from harness.splits import Split

    num_queries, num_database = len(problem["queries"]), len(problem["database"])
    split = Split(
        name="prop", query_names=tuple(f"q/{i:03d}.jpg" for i in range(num_queries)),
        database_names=tuple(f"db/{i:03d}.jpg" for i in range(num_database)),
        query_utm=problem["query_utm"], database_utm=problem["database_utm"],
        radius_m=problem["radius_m"], recall_ns=problem["recall_ns"],
        spatial_nms=problem["spatial_nms"], no_positive=problem["no_positive"])
    expected = brute_force_scores(problem)
    folder = tmp_path_factory.mktemp("prop")
    rng = problem["shuffle"]
    order = list(range(num_queries))
    rng.shuffle(order)
    write_features(folder / "query.h5", split="prop", method="prop",
                   query=([split.query_names[i] for i in order], problem["queries"][order]))
    rows = list(range(num_database))
    rng.shuffle(rows)  # stored in any order, across shards: names place them
    for number, part in enumerate(np.array_split(np.array(rows), problem["shards"])):
        write_features(folder / f"db-{number}.h5", split="prop", method="prop",
                       database=([split.database_names[i] for i in part],
                                 problem["database"][part]))
    result = evaluate([folder], split, EvalConfig(ngpu=0, cpu_backend="numpy",
                                                  checksums=False, progress=False))
    assert set(result.scores) == set(expected)
    for name, value in expected.items():
        assert result.scores[name] == pytest.approx(value, abs=1e-12), name


# --------------------------------------------------------------------------------------------
# Ground truth


@st.composite
def radius_problems(draw):
    """Queries, and database points around them, many exactly on the radius."""
    radius = float(draw(st.sampled_from([5.0, 10.0, 13.0, 25.0, 50.0])))
    offset = np.array(draw(st.sampled_from([(0.0, 0.0), (583_041.0, 5_800_117.0)])))
    num_queries = draw(st.integers(1, 5))
    queries = np.array(draw(st.lists(st.tuples(st.integers(-50, 50), st.integers(-50, 50)),
                                     min_size=num_queries, max_size=num_queries)), float)
    points = []
    # (3, 4, 5), (5, 12, 13), (6, 8, 10), (7, 24, 25), (15, 20, 25), axes: exact distances
    triples = [(3, 4, 5), (5, 12, 13), (6, 8, 10), (7, 24, 25), (15, 20, 25), (0, 1, 1)]
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["on", "near", "free"]))
        centre = queries[draw(st.integers(0, num_queries - 1))]
        if kind == "free":
            points.append(draw(st.tuples(st.floats(-120, 120), st.floats(-120, 120))))
            continue
        a, b, c = draw(st.sampled_from(triples))
        scale = radius / c
        sign_a, sign_b = draw(st.sampled_from([1, -1])), draw(st.sampled_from([1, -1]))
        swap = draw(st.booleans())
        dx, dy = (b, a) if swap else (a, b)
        delta = np.array([sign_a * dx * scale, sign_b * dy * scale])
        if kind == "near":  # just inside or outside: a centimetre, a micrometre, less
            delta *= 1 + draw(st.sampled_from([-1e-4, 1e-4, -1e-8, 1e-8, 1e-12]))
        points.append(tuple(centre + delta))
    database = np.array(points, float).reshape(-1, 2)
    return radius, queries + offset, database + offset


@settings(max_examples=100, **SETTINGS)
@given(problem=radius_problems())
def test_ground_truth_equals_a_naive_radius_scan(problem):
    from harness.ground_truth import BOUNDARY_TOLERANCE_M, positives_within_radius

    radius, queries, database = problem
    positives = positives_within_radius(database, queries, radius)
    limit = (radius + BOUNDARY_TOLERANCE_M) ** 2
    for q, (x, y) in enumerate(queries):
        naive = [d for d, (u, v) in enumerate(database)
                 if (u - x) * (u - x) + (v - y) * (v - y) <= limit]
        assert positives[q].tolist() == naive


def test_points_exactly_on_the_radius_are_positives():
    """The boundary is included even when rounding puts 25 m a hair beyond 25 (0.3 + 25.3)."""
    from harness.ground_truth import positives_within_radius

    database = np.array([[583_000.3 + 25.0, 5_800_000.0], [583_000.3, 5_800_025.0],
                         [583_000.3 + 15.0, 5_800_020.0], [583_000.3 + 25.001, 5_800_000.0]])
    positives = positives_within_radius(database, np.array([[583_000.3, 5_800_000.0]]), 25.0)
    assert positives[0].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# Spatial NMS


def nms_by_definition(row, places, pool):
    kept, seen = [], set()
    for prediction in row[:pool]:
        if prediction < 0 or places[prediction] in seen:
            continue
        seen.add(places[prediction])
        kept.append(prediction)
    width = min(len(row), pool)
    return kept + [-1] * (width - len(kept))


@st.composite
def nms_problems(draw):
    num_database = draw(st.integers(1, 30))
    places = np.array(draw(st.lists(st.integers(0, 6), min_size=num_database,
                                    max_size=num_database)), dtype=np.int64)
    num_queries = draw(st.integers(1, 5))
    width = draw(st.integers(1, 40))
    rows = []
    for _ in range(num_queries):
        valid = draw(st.lists(st.integers(0, num_database - 1), max_size=width, unique=True))
        rows.append(valid + [-1] * (width - len(valid)))
    pool = draw(st.integers(1, 50))
    return np.array(rows, dtype=np.int64), places, pool


@settings(max_examples=200, **SETTINGS)
@given(problem=nms_problems())
def test_spatial_nms_equals_its_definition(problem):
    from harness.metrics import spatial_nms

    predictions, places, pool = problem
    got = spatial_nms(predictions, places, pool)
    expected = np.array([nms_by_definition(row.tolist(), places, pool) for row in predictions],
                        dtype=np.int64).reshape(len(predictions), -1)
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=100, **SETTINGS)
@given(utm=hnp.arrays(np.float64, st.tuples(st.integers(0, 30), st.just(2)),
                      elements=st.sampled_from([0.0, 1.5, 583_000.25, -3.0])))
def test_places_are_identical_positions(utm):
    from harness.metrics import database_places

    places = database_places(utm)
    for i in range(len(utm)):
        for j in range(len(utm)):
            assert (places[i] == places[j]) == bool((utm[i] == utm[j]).all())
