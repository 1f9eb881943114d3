"""Ranking submissions on the leaderboard (re-ranking marker) and unofficial splits."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from harness.cli import cli
from harness.evaluate import evaluate
from harness.features import write_features
from harness.splits import Split, register_split
from leaderboard.build import build_leaderboard
from leaderboard.check import check_results
from leaderboard.records import read_record
from leaderboard.submit import submit

DIM = 8


def _split(name: str) -> Split:
    rng = np.random.default_rng(5)
    database_utm = np.stack([np.arange(30) * 10.0, np.zeros(30)], 1)
    return Split(name=name, query_names=tuple(f"q{i:02d}.jpg" for i in range(6)),
                 database_names=tuple(f"d{i:02d}.jpg" for i in range(30)),
                 query_utm=database_utm[[2, 7, 12, 17, 22, 27]] + rng.uniform(-4, 4, (6, 2)),
                 database_utm=database_utm, recall_ns=(1, 5))


def _features(tmp_path, split):
    rng = np.random.default_rng(6)
    database = rng.standard_normal((30, DIM))
    queries = database[[2, 7, 12, 17, 22, 27]] + 0.8 * rng.standard_normal((6, DIM))
    for array in (database, queries):
        array /= np.linalg.norm(array, axis=1, keepdims=True)
    return write_features(tmp_path / f"{split.name}.h5", split=split.name, method="toy",
                          query=(split.query_names, queries.astype(np.float32)),
                          database=(split.database_names, database.astype(np.float32)))


def test_ranking_submission_is_scored_like_features_and_marked(tmp_path):
    split = _split("street")
    data_root, results = tmp_path / "data", tmp_path / "results"
    register_split(split, data_root)
    features = _features(tmp_path, split)
    by_features = submit([features], split="street", method_name="retrieval",
                         results_dir=results, data_root=data_root)
    top = by_features.record.result
    # the record keeps no rankings: the ranking file is the descriptor search's top 5
    ranking = evaluate([features], split).prediction_data.indices[:, :5]
    path = tmp_path / "reranked.txt"
    path.write_text("".join(f"{q} {' '.join(split.database_names[i] for i in row)}\n"
                            for q, row in zip(split.query_names, ranking)))
    result = CliRunner().invoke(cli, ["submit", "--ranking", str(path), "--split", "street",
                                      "--method-name", "reranker", "--results",
                                      str(results), "--data-root", str(data_root)])
    assert result.exit_code == 0, result.output
    records = sorted(results.rglob("*.json"))
    reranked = read_record(next(p for p in records if "reranker" in str(p)))
    assert reranked.result.scores == top.scores
    assert reranked.result.protocol.metric == "ranking"
    assert reranked.metadata.descriptor_dim is None
    build_leaderboard(results, tmp_path / "out", data_root=data_root, plots=False, grids=False)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "reranker \\(re-ranking\\)" in readme and "| retrieval" in readme  # escaped text
    report = check_results(results, data_root=data_root, feature_dirs=[tmp_path], git=False)
    assert not report.problems and report.recomputed == 2


def test_a_split_that_is_not_the_canonical_one_is_listed_as_unofficial(tmp_path):
    wrong = _split("tokyo247")  # 6 queries, 30 database images: not Tokyo 24/7
    results = tmp_path / "results"
    outcome = submit([_features(tmp_path, wrong)], split=wrong, method_name="toy",
                     results_dir=results)
    assert outcome.created
    build_leaderboard(results, tmp_path / "out", plots=False, grids=False)
    readme = (tmp_path / "out" / "README.md").read_text()
    official = readme.split("## Tokyo 24/7", 1)[1].split("\n## ", 1)[0]
    unofficial = readme.split("## Unofficial: tokyo247", 1)[1].split("\n## ", 1)[0]
    assert "| toy" not in official and "| toy" in unofficial
    assert (tmp_path / "out" / "tables" / "unofficial-tokyo247.csv").is_file()


def test_pinned_public_splits_get_their_own_titled_table():
    from leaderboard.benchmarks import benchmarks_for

    tables = {b.splits[0]: b for b in benchmarks_for(["msls-val", "pitts30k-test (unofficial)",
                                                      "my-split"]) if len(b.splits) == 1}
    assert tables["msls-val"].title == "MSLS val (740 queries)"
    assert "18,871 database images / 740 queries" in tables["msls-val"].description
    assert tables["pitts30k-test (unofficial)"].key == "unofficial-pitts30k-test"
    assert tables["my-split"].title == "Split my-split"
