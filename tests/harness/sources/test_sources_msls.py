"""MSLS: the official layout and protocol, and its prediction file in and out."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from formats_helpers import write_msls_city

from harness.cli import cli
from harness.errors import HarnessError, ValidationError
from harness.results import read_result
from harness.sources.msls import read_msls_predictions, split_from_msls
from harness.sources.rankings import evaluate_ranking
from harness.splits import get_split

# (key, easting, northing, pano, in subtask "all")
CPH = {
    "query": [
        ("qa", 0.0, 0.0, False, True),      # positives d0 (10 m) and d2 (exactly 25 m)
        ("qb", 0.0, 1000.0, False, True),   # no positive: left out
        ("qc", 10.0, 0.0, True, True),      # panorama: excluded
        ("qd", 10.0, 0.0, False, False),    # not in subtask "all": excluded
    ],
    "database": [
        ("d0", 10.0, 0.0, False, True),
        ("d1", 20.0, 0.0, True, True),      # panorama: excluded (though 20 m from qa)
        ("d2", 25.0, 0.0, False, True),
        ("d3", 5.0, 0.0, False, False),     # not in subtask "all"
    ],
}
SF = {
    "query": [("qe", 5000.0, 5000.0, False, True)],
    "database": [("de", 5000.0, 5010.0, False, True), ("df", 5000.0, 5100.0, False, True)],
}


@pytest.fixture()
def msls_root(tmp_path):
    root = tmp_path / "msls"
    write_msls_city(root, "cph", CPH)
    write_msls_city(root, "sf", SF)
    return root


def test_official_protocol(msls_root):
    split = split_from_msls("msls-mini", msls_root)
    assert split.query_names == ("cph/query/images/qa.jpg", "sf/query/images/qe.jpg")
    assert split.database_names == ("cph/database/images/d0.jpg", "cph/database/images/d2.jpg",
                                    "sf/database/images/de.jpg", "sf/database/images/df.jpg")
    assert (msls_root / "train_val" / split.query_names[0]).is_file()
    assert split.positives[0].tolist() == [0, 1]  # d2 at exactly 25 m included
    assert split.positives[1].tolist() == [2]
    assert split.positives.num_without_positive == 0
    assert "queries without a positive left out: 1" in split.source
    assert split.radius_m == 25.0 and not split.spatial_nms
    only_sf = split_from_msls("msls-sf", msls_root, cities=["sf"])
    assert only_sf.query_names == ("sf/query/images/qe.jpg",)


def test_bad_layouts_are_named(msls_root, tmp_path):
    with pytest.raises(HarnessError, match="has no train_val"):
        split_from_msls("x", tmp_path)
    with pytest.raises(HarnessError, match="city 'zurich' has no query/ folder"):
        split_from_msls("x", msls_root, cities=["zurich"])
    raw = msls_root / "train_val" / "sf" / "database" / "raw.csv"
    raw.write_text(raw.read_text().replace("False", "maybe", 1))
    with pytest.raises(HarnessError, match="'maybe' is not a boolean") as info:
        split_from_msls("x", msls_root)
    assert info.value.path == str(raw)


def test_msls_cli_import_and_prediction_file_both_ways(msls_root, tmp_path):
    runner = CliRunner()
    store = str(tmp_path / "store")
    result = runner.invoke(cli, ["splits", "import", "--name", "msls-mini", "--msls",
                                 str(msls_root), "--data-root", store])
    assert result.exit_code == 0, result.output
    split = get_split("msls-mini", store)
    assert split.num_queries == 2
    # an MSLS prediction file: query key, then database keys, best first; '#' comments
    predictions = tmp_path / "msls_prediction.csv"
    predictions.write_text("# im2im\nqa d2 de df d0\nqe df de d0 d2\n")
    result = runner.invoke(cli, ["eval", "--ranking", str(predictions), "--split", "msls-mini",
                                 "--recall-ns", "1,2", "--data-root", store,
                                 "--predictions-out", str(tmp_path / "out.txt"),
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "ranking submission (re-ranking)" in result.output
    # qa: rank 1 is d2 (a positive at 25 m); qe: rank 1 df (100 m), rank 2 de (10 m)
    record = read_result(tmp_path / "r.json")
    assert (record.scores["recall@1"], record.scores["recall@2"]) == (0.5, 1.0)
    assert record.protocol.metric == "ranking" and record.features[0].path == str(predictions)
    assert (tmp_path / "out.txt").read_text() == "qa d2 de\nqe df de\n"
    shown = runner.invoke(cli, ["predictions", "show", str(tmp_path / "r.json"), "--query", "qa",
                                "--data-root", store])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "query cph/query/images/qa.jpg (split msls-mini, row 0)"
    assert lines[1] == "2 positives within 25 m; first positive at rank 1"
    assert lines[3].split() == ["1", "yes", "25.0m", "-", "cph/database/images/d2.jpg"]
    # de is at (5000, 5010): sqrt(5000^2 + 5010^2) = 7078.1 m from qa at (0, 0)
    assert lines[4].split() == ["2", "7078.1m", "-", "sf/database/images/de.jpg"]
    assert read_msls_predictions(tmp_path / "out.txt") == [("qa", ["d2", "de"]),
                                                           ("qe", ["df", "de"])]
    again = evaluate_ranking(tmp_path / "out.txt", split,
                             __import__("harness").EvalConfig(recall_ns=(1, 2)))
    # AP@2: qa (2 positives) hit at rank 1 -> (1/1) / 2; qe (1 positive) hit at rank 2 -> 1/2
    assert again.scores == {"recall@1": 0.5, "recall@2": 1.0, "map@2": 0.5}


def test_prediction_file_problems_are_all_reported(msls_root, tmp_path):
    split = split_from_msls("msls-mini", msls_root)
    bad = tmp_path / "bad.csv"
    bad.write_text("qa d2 d2\nqa d0 d2\nqz d0 d2\n")
    with pytest.raises(ValidationError) as info:
        evaluate_ranking(bad, split, __import__("harness").EvalConfig(recall_ns=(1, 2)))
    problems = " | ".join(info.value.problems)
    assert "1 queries are not in the split (first: 'qz')" in problems
    assert "1 queries are listed more than once (first: 'qa')" in problems
    assert "1 queries rank a database image more than once (first: 'qa')" in problems
    assert "1 of 2 split queries have no ranking" in problems
    sequences = tmp_path / "seq.csv"
    sequences.write_text("qa,qb d0,d2\n")
    with pytest.raises(HarnessError, match="comma-joined sequence keys"):
        read_msls_predictions(sequences)
    assert np.isfinite(split.query_utm).all()
