"""`harness compare`, `harness show --by`, breakdowns and intervals in real records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.breakdowns import (
    NO_MASK,
    UNKNOWN,
    compute_breakdowns,
    read_conditions_csv,
    window_bins,
)
from harness.cli import main
from harness.config import EvalConfig
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.ground_truth import positives_within_radius
from harness.metrics import compute_metrics
from harness.results import EvalResult, read_predictions, read_result
from harness.splits import Split


@pytest.fixture(scope="module")
def records(tiny_city, tmp_path_factory):
    """Probe records: raw and oracle-gray on Indoor-Ams 1, raw on Outdoor-Ams."""
    from synth.probe import write_probe_features

    folder = tmp_path_factory.mktemp("compare")
    config = EvalConfig(ngpu=0, checksums=False, bootstrap_resamples=300)
    paths = {}
    for key, split_name, masks in (("raw", "indoor-ams-1", None),
                                   ("gray", "indoor-ams-1", tiny_city.masks_dir),
                                   ("outdoor", "outdoor-ams", None)):
        split = tiny_city.split(split_name)
        features = write_probe_features(split, folder / f"{key}.h5", mask_dir=masks)
        result = evaluate([features], split, config, method=f"probe-{key}")
        paths[key] = result.write(folder / f"{key}.json")
    return paths


def test_records_carry_intervals_breakdowns_and_per_query_ap(records, tiny_city):
    result = read_result(records["raw"])
    assert result.schema_version == 3 and result.bootstrap["resamples"] == 300
    for name, value in result.scores.items():
        low, high = result.intervals[name]
        assert low <= value + 1e-6 and value - 1e-6 <= high
    predictions = read_predictions(records["raw"], result)
    assert predictions.average_precision.mean() == pytest.approx(result.scores["map@100"], abs=1e-6)
    window = result.breakdowns["window_fraction"]
    assert window["source"] == "true masks"
    # Breakdown counts sum to the split's queries.
    assert sum(g["queries"] for g in window["groups"].values()) == result.counts.queries
    # Top-1 within the split's radius is exactly a hit at 1 (no NMS, boundary included).
    radius = result.breakdowns["radius"]
    at_split_radius = radius["recall@1"][radius["radii_m"].index(50.0)]
    assert at_split_radius == pytest.approx(result.scores["recall@1"])
    assert radius["recall@1"] == sorted(radius["recall@1"])
    # Outdoor queries have no window masks: no window breakdown.
    assert "window_fraction" not in read_result(records["outdoor"]).breakdowns


def test_window_bins_against_true_fractions(tiny_city):
    split = tiny_city.split("indoor-ams-1")
    truth = {m["name"]: m["window_fraction"] for m in tiny_city.info.query_metadata()
             if "window_fraction" in m}
    from harness.breakdowns import window_fractions

    fractions = window_fractions(split, tiny_city.masks_dir)
    for name, fraction in zip(split.query_names, fractions):
        assert fraction == pytest.approx(truth[name], abs=1e-3)
    labels, order = window_bins(np.array([0.0, 0.05, 0.1, 0.39, 0.4, 1.0, np.nan]))
    assert labels.tolist() == ["0-10%", "0-10%", "10-20%", "30-40%", "40-100%", "40-100%",
                               NO_MASK]
    assert order[-1] == NO_MASK


def _condition_split():
    names = ("a/day/0001.jpg", "a/night/0002.jpg", "b/sunset_0003.jpg", "b/0004.jpg",
             "night-0005.jpg")
    query_utm = np.array([[0.0, 0], [100, 0], [200, 0], [300, 0], [400, 0]])
    database_utm = np.array([[0.0, 5], [100, 30], [200, 90], [300, 0], [400, 10]])
    database_names = tuple(f"d{i}.jpg" for i in range(5))
    return Split(name="cond", query_names=names, database_names=database_names,
                 query_utm=query_utm, database_utm=database_utm, radius_m=25.0, recall_ns=(1,))


def test_condition_breakdown_from_names_and_radius_curve():
    split = _condition_split()
    positives = positives_within_radius(split.database_utm, split.query_utm, 25.0)
    predictions = np.array([[0, 1], [1, 0], [2, 0], [3, 0], [0, 4]])
    metrics = compute_metrics(predictions, positives, recall_ns=(1,), map_k=2)
    protocol = EvalConfig().protocol(split)
    out = compute_breakdowns(split, metrics, protocol)
    groups = out["condition"]["groups"]
    assert list(groups) == ["day", "sunset", "night", UNKNOWN]
    assert {k: g["queries"] for k, g in groups.items()} == {"day": 1, "sunset": 1, "night": 2,
                                                           UNKNOWN: 1}
    assert groups["night"]["scores"]["recall@1"] == 0.0  # 30 m and 400 m away
    assert groups["day"]["scores"]["recall@1"] == 1.0
    # top-1 distances: 5, 30, 90, 0, 400 m
    curve = dict(zip(out["radius"]["radii_m"], out["radius"]["recall@1"]))
    assert curve[5.0] == 0.4 and curve[30.0] == 0.6 and curve[100.0] == 0.8


def test_conditions_csv(tmp_path):
    split = _condition_split()
    path = tmp_path / "conditions.csv"
    path.write_text("name,condition\na/day/0001.jpg,dusk\nb/0004.jpg,night\n")
    labels = read_conditions_csv(path, split)
    assert labels.tolist() == ["dusk", UNKNOWN, UNKNOWN, "night", UNKNOWN]
    path.write_text("nope.jpg,night\n")
    with pytest.raises(HarnessError, match="not a query of split cond"):
        read_conditions_csv(path, split)


def test_schema_1_records_still_read(records):
    data = json.loads(records["raw"].read_text())
    for key in ("intervals", "bootstrap", "breakdowns", "efficiency"):
        data.pop(key)
    data["schema_version"] = 1
    result = EvalResult.from_dict(data)
    assert result.schema_version == 3 and result.intervals == {} and result.bootstrap is None
    assert result.efficiency == {}
    assert result.scores == read_result(records["raw"]).scores


def test_compare_cli(records, tmp_path, capsys):
    plot = tmp_path / "cmp.png"
    markdown = tmp_path / "cmp.md"
    assert main(["compare", str(records["raw"]), str(records["gray"]), "--plot", str(plot),
                 "--markdown", str(markdown), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    raw, gray = read_result(records["raw"]), read_result(records["gray"])
    verdict_line = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert ("probe-gray > probe-raw at R@1" in verdict_line) or (
        "no significant difference at R@1" in verdict_line)
    difference = 100 * (gray.scores["recall@1"] - raw.scores["recall@1"])
    assert f"{difference:+.1f}" in out
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "| R@1 |" in markdown.read_text()


def test_compare_with_itself_is_no_difference(records, capsys):
    assert main(["compare", str(records["raw"]), str(records["raw"]), "--latex", "-"]) == 0
    out = capsys.readouterr().out
    assert "verdict: no significant difference at R@1 (p = 1.00" in out
    assert r"\begin{tabular}" in out


def test_compare_refuses_other_splits(records, capsys):
    assert main(["compare", str(records["raw"]), str(records["outdoor"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {records['outdoor']}: split synth-outdoor-ams")


def test_show_by(records, capsys):
    assert main(["show", str(records["raw"]), "--by", "window", "--by", "radius"]) == 0
    out = capsys.readouterr().out
    assert "Recall@N by window fraction (from true masks" in out
    assert "Recall@1 against the positive radius" in out
    assert main(["show", str(records["outdoor"]), "--by", "window"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no 'window_fraction' breakdown" in captured.err


def test_msls_day_night_from_postprocessed_csv(tmp_path):
    import csv

    from formats_helpers import write_msls_city

    from harness.breakdowns import msls_conditions
    from harness.sources.msls import split_from_msls

    city = {"query": [("qa", 0.0, 0.0, False, True), ("qb", 5.0, 0.0, False, True)],
            "database": [("d0", 10.0, 0.0, False, True)]}
    write_msls_city(tmp_path, "cph", city)
    path = tmp_path / "train_val" / "cph" / "query" / "postprocessed.csv"
    rows = list(csv.reader(path.open()))
    rows[2][4] = "True"  # qb was taken at night
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    split = split_from_msls("msls-tiny", tmp_path, cities=("cph",))
    labels, source = msls_conditions(split)
    assert split.query_names == ("cph/query/images/qa.jpg", "cph/query/images/qb.jpg")
    assert labels.tolist() == ["day", "night"] and "night column" in source
    assert msls_conditions(_condition_split()) is None
