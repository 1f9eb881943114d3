"""Other tools' descriptors (.npy, hloc), ranking submissions, name-level predictions, and the
public Python API: every path gives the Recall@N of the harness's own feature file."""

from __future__ import annotations

import csv
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from formats_helpers import write_downloader_folder

import harness
from harness.cli import cli
from harness.config import EvalConfig
from harness.errors import HarnessError, ValidationError
from harness.features import write_features
from harness.ground_truth import positives_within_radius
from harness.sources.descriptors import import_hloc_descriptors, import_vme_descriptors
from harness.sources.downloader import split_from_folder
from harness.sources.predictions import named_predictions
from harness.sources.rankings import evaluate_ranking, write_ranking_hdf5
from harness.splits import register_split

DIM = 8
CONFIG = EvalConfig(recall_ns=(1, 2, 5), ngpu=0)


@pytest.fixture()
def street(tmp_path):
    """A downloader-layout split (20 database images every 10 m, 7 queries) and descriptors
    that make the ranking imperfect: (split, queries, database) in split row order."""
    rng = np.random.default_rng(3)
    database_utm = np.stack([584000.0 + 10 * np.arange(20), np.full(20, 4477000.0)], 1)
    query_utm = database_utm[[1, 4, 7, 10, 13, 16, 19]] + rng.uniform(-8, 8, (7, 2))
    write_downloader_folder(tmp_path / "test", database_utm, query_utm)
    split = split_from_folder("street", tmp_path / "test", recall_ns=(1, 2, 5))
    database = rng.standard_normal((split.num_database, DIM)).astype(np.float32)
    nearest = [int(np.argmin(np.hypot(*(split.database_utm - q).T))) for q in split.query_utm]
    queries = database[nearest] + 0.9 * rng.standard_normal((split.num_queries, DIM))
    for array in (database, queries):
        array /= np.linalg.norm(array, axis=1, keepdims=True)
    return split, queries.astype(np.float32), database


def brute_force_recalls(split, queries, database, ns):
    ranking = np.argsort(-(queries @ database.T), axis=1, kind="stable")
    positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
    return {f"recall@{n}": np.mean([np.isin(ranking[q, :n], positives[q]).any()
                                    for q in range(split.num_queries)]) for n in ns}


def test_npy_and_hloc_round_trips_give_the_hdf5_recalls(street, tmp_path):
    split, queries, database = street
    native = write_features(tmp_path / "native.h5", split=split.name, method="toy",
                            query=(split.query_names, queries),
                            database=(split.database_names, database))
    reference = harness.evaluate(native, split, CONFIG)
    expected = brute_force_recalls(split, queries, database, (1, 2, 5))
    assert {k: reference.scores[k] for k in expected} == pytest.approx(expected)
    assert 0 < reference.scores["recall@1"] < 1

    # VPR-methods-evaluation: rows in sorted image order = the split's order
    np.save(tmp_path / "queries_descriptors.npy", queries)
    np.save(tmp_path / "database_descriptors.npy", database.astype(np.float16))
    vme = import_vme_descriptors(tmp_path / "queries_descriptors.npy",
                                 tmp_path / "database_descriptors.npy", split,
                                 tmp_path / "vme.h5", method="toy")
    # hloc: one nested group per image under queries/ and database/, stored as float16
    with h5py.File(tmp_path / "global-feats.h5", "w") as handle:
        for folder, names, rows in (("queries", split.query_names, queries),
                                    ("database", split.database_names, database)):
            for name, row in zip(names, rows):
                handle.create_group(f"{folder}/{name}").create_dataset(
                    "global_descriptor", data=row.astype(np.float16))
        handle.create_group("elsewhere/other.jpg").create_dataset(
            "global_descriptor", data=np.ones(DIM, np.float32))
    hloc = import_hloc_descriptors(tmp_path / "global-feats.h5", split, tmp_path / "hloc.h5",
                                   method="toy")
    half = write_features(tmp_path / "half.h5", split=split.name, method="toy",
                          query=(split.query_names, queries.astype(np.float16)),
                          database=(split.database_names, database.astype(np.float16)))
    for converted, same_as in ((vme, native), (hloc, half)):
        result = harness.evaluate(converted, split, CONFIG)
        assert result.scores == harness.evaluate(same_as, split, CONFIG).scores
    np.testing.assert_array_equal(harness.read_features(vme, split).database,
                                  database.astype(np.float16).astype(np.float32))


def test_npy_rows_follow_an_images_paths_file(street, tmp_path):
    """VPR-methods-evaluation keeps the order of <folder>_images_paths.txt when it exists."""
    split, queries, database = street
    order = np.random.default_rng(4).permutation(split.num_queries)
    listing = tmp_path / "test" / "queries_images_paths.txt"
    listing.write_text("".join(split.query_names[i] + "\n" for i in order))
    relisted = split_from_folder("street", tmp_path / "test", recall_ns=(1, 2, 5))
    assert relisted.query_names == split.query_names  # the split stays in sorted order
    np.save(tmp_path / "q.npy", queries[order])  # rows in the file's order
    np.save(tmp_path / "db.npy", database)
    converted = import_vme_descriptors(tmp_path / "q.npy", tmp_path / "db.npy", split,
                                       tmp_path / "vme.h5", method="toy")
    np.testing.assert_array_equal(harness.read_features(converted, split).query, queries)
    listing.write_text(split.query_names[0] + "\n")
    with pytest.raises(HarnessError, match="lists other images than the split"):
        import_vme_descriptors(tmp_path / "q.npy", tmp_path / "db.npy", split,
                               tmp_path / "vme2.h5", method="toy")


def test_npy_errors(street, tmp_path):
    split, queries, database = street
    np.save(tmp_path / "q.npy", queries[:-1])
    np.save(tmp_path / "db.npy", database)
    with pytest.raises(HarnessError, match="has 6 rows, the split 7") as info:
        import_vme_descriptors(tmp_path / "q.npy", tmp_path / "db.npy", split,
                               tmp_path / "out.h5", method="toy")
    assert info.value.path == str(tmp_path / "q.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(HarnessError, match="not a readable .npy array"):
        import_vme_descriptors(tmp_path / "objects.npy", tmp_path / "db.npy", split,
                               tmp_path / "out.h5", method="toy")
    assert not (tmp_path / "out.h5").exists()
    renamed = split.replace(name="from-mat", query_names=tuple(
        f"{i:03d}/{i:06d}_pitch1_yaw1.jpg" for i in range(split.num_queries)))
    with pytest.raises(HarnessError, match="not built from a downloader-layout folder"):
        import_vme_descriptors(tmp_path / "db.npy", tmp_path / "db.npy", renamed,
                               tmp_path / "out.h5", method="toy")
    store = tmp_path / "store"
    register_split(split, store)
    result = CliRunner().invoke(cli, ["eval", "--features", str(tmp_path / "db.npy"), "--split",
                                      "street", "--data-root", str(store)])
    assert result.exit_code == 2
    assert "harness features import --split SPLIT --vme-queries" in result.output


def test_features_import_cli(street, tmp_path):
    split, queries, database = street
    store = tmp_path / "store"
    register_split(split, store)
    np.save(tmp_path / "queries_descriptors.npy", queries)
    np.save(tmp_path / "database_descriptors.npy", database)
    result = CliRunner().invoke(cli, [
        "features", "import", "--split", "street", "--vme-queries",
        str(tmp_path / "queries_descriptors.npy"), "--vme-database",
        str(tmp_path / "database_descriptors.npy"), "--out", str(tmp_path / "f.h5"),
        "--method-name", "toy", "--data-root", str(store)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "f.h5"), "--split", "street",
                                      "--data-root", str(store)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("fmt", ["text", "hdf5"])
def test_a_ranking_file_equal_to_the_descriptor_result(street, tmp_path, fmt):
    split, queries, database = street
    features = write_features(tmp_path / "f.h5", split=split.name, method="toy",
                              query=(split.query_names, queries),
                              database=(split.database_names, database))
    reference = harness.evaluate(features, split, CONFIG)
    ranked = [[split.database_names[i] for i in row[:5]]
              for row in reference.prediction_data.indices]
    order = np.random.default_rng(0).permutation(split.num_queries)  # any query order
    if fmt == "text":
        path = tmp_path / "ranking.txt"
        path.write_text("".join(f"{split.query_names[q]} {' '.join(ranked[q])}\n" for q in order))
    else:
        path = write_ranking_hdf5(tmp_path / "ranking.h5", [split.query_names[q] for q in order],
                                  [ranked[q] for q in order], method="toy-rerank")
    result = harness.evaluate(split=split, ranking=path, config=CONFIG)
    assert result.scores == reference.scores
    assert result.protocol.metric == "ranking"
    assert result.method == ("ranking" if fmt == "text" else "toy-rerank")


def test_ranking_validation(street, tmp_path):
    split, _, _ = street
    rows = [f"{q} {' '.join(split.database_names[:5])}" for q in split.query_names]
    rows[0] = f"{split.query_names[0]} {' '.join(split.database_names[:4])}"  # too short
    rows[1] = f"{split.query_names[1]} nowhere.jpg " + " ".join(split.database_names[:4])
    path = tmp_path / "r.txt"
    path.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValidationError) as info:
        evaluate_ranking(path, split, CONFIG)
    problems = " | ".join(info.value.problems)
    assert "rank fewer than the 5 database images" in problems
    assert "1 database images are not in the split (first: 'nowhere.jpg')" in problems
    assert "1 of 7 split queries have no ranking" in problems
    assert info.value.path == str(path)


def test_predictions_out_csv_and_show(street, tmp_path):
    split, queries, database = street
    store = tmp_path / "store"
    register_split(split, store)
    write_features(tmp_path / "f.h5", split=split.name, method="toy",
                   query=(split.query_names, queries), database=(split.database_names, database))
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--features", str(tmp_path / "f.h5"), "--split",
                                 "street", "--recall-ns", "1,2,5", "--ngpu", "0",
                                 "--data-root", str(store), "--json", str(tmp_path / "r.json"),
                                 "--predictions-out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:5] == ["query", "first_positive_rank", "positives", "db_1", "distance_m_1"]
    assert len(rows) == split.num_queries + 1 and len(rows[0]) == 3 + 2 * 5
    ranking = np.argsort(-(queries @ database.T), axis=1, kind="stable")
    for q, row in enumerate(rows[1:]):
        assert row[0] == split.query_names[q]
        assert row[3::2] == [split.database_names[i] for i in ranking[q, :5]]
        metres = [np.hypot(*(split.database_utm[i] - split.query_utm[q])) for i in ranking[q, :5]]
        assert [float(m) for m in row[4::2]] == pytest.approx(metres, abs=0.006)
        hits = [m <= 25.0 for m in metres]
        assert row[1] == (str(hits.index(True) + 1) if any(hits) else "")
        assert int(row[2]) == len(split.positives[q])
    result = runner.invoke(cli, ["predictions", "show", str(tmp_path / "r.json"), "--query",
                                 split.query_names[2], "--data-root", str(store)])
    assert result.exit_code == 0, result.output
    assert split.database_names[ranking[2, 0]] in result.output.splitlines()[3]
    result = runner.invoke(cli, ["predictions", "show", str(tmp_path / "r.json"), "--query",
                                 "nope.jpg", "--data-root", str(store)])
    assert result.exit_code == 2 and "'nope.jpg' is not in split street" in result.output


def test_spatial_nms_predictions_are_the_evaluated_ranking(street, tmp_path):
    split, queries, database = street
    places = split.database_utm.copy()
    places[1::2] = places[0::2]  # two views per place
    nms_split = split.replace(database_utm=places, spatial_nms=True)
    features = write_features(tmp_path / "f.h5", split=split.name, method="toy",
                              query=(split.query_names, queries),
                              database=(split.database_names, database))
    result = harness.evaluate(features, nms_split, CONFIG)
    named = named_predictions(result, nms_split)
    for row in named.ranking:
        kept = row[row >= 0]
        assert len({tuple(places[i]) for i in kept}) == len(kept)  # one per place


def test_import_harness_is_light_and_the_api_is_there():
    code = ("import sys, harness; assert 'harness.evaluate' not in sys.modules; "
            "assert 'numpy' not in sys.modules; f = harness.evaluate; "
            "assert callable(f) and callable(harness.load_split) and "
            "callable(harness.read_features); assert 'torch' not in sys.modules; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr
