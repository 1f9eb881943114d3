"""Leaderboard: submit (dedup, validation, 8 concurrent processes), tables, build, check.

Records come from real evaluations of real feature files: training-free pixel descriptors of
the tiny synthetic city's images (``tiny_city``), so the tables, curves and retrieval grids are
built from genuine results. Table formatting is also tested on small hand-made entries.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from badinputs import start_together
from click.testing import CliRunner

from harness.cli import cli
from harness.errors import HarnessError, ValidationError
from harness.features import write_features
from leaderboard.benchmarks import REAL_BENCHMARKS, benchmarks_for, get_benchmark
from leaderboard.build import build_from_entries, build_leaderboard
from leaderboard.check import check_results
from leaderboard.records import (
    MethodMetadata,
    content_checksum,
    load_records,
    read_record,
    read_topk,
    record_from_dict,
)
from leaderboard.submit import submit
from leaderboard.tables import Entry, latest_entries, make_table, to_csv, to_latex, to_markdown

INDOOR_1, INDOOR_2, OUTDOOR = "synth-indoor-ams-1", "synth-indoor-ams-2", "synth-outdoor-ams"

# (method name, thumbnail size, PIL mode): three training-free descriptors of different quality.
PIXEL_METHODS = (
    ("pix-16x12-rgb", (16, 12), "RGB"),
    ("pix-8x6-gray", (8, 6), "L"),
    ("pix-2x2-gray", (2, 2), "L"),
)
META = {
    "paper": "https://example.org/paper",
    "code_url": "https://example.org/code",
    "backbone": "none (downsampled pixels)",
    "training_data": "none",
    "license": "MIT",
    "checkpoint_sha256": "0" * 64,
    "extraction_ms_per_image": 0.5,
}


# --- real feature files from the tiny city ----------------------------------------------------

_DESCRIPTOR_CACHE: dict = {}


def pixel_descriptors(root, names, size, mode) -> np.ndarray:
    """Downsampled, mean-centred, L2-normalised pixels of each image (training-free)."""
    from PIL import Image

    key = (str(root), tuple(names), size, mode)
    if key not in _DESCRIPTOR_CACHE:
        rows = []
        for name in names:
            with Image.open(Path(root) / name) as image:
                pixels = np.asarray(
                    image.convert(mode).resize(size, Image.Resampling.BILINEAR), np.float32
                ).ravel()
            pixels = pixels - pixels.mean()
            rows.append(pixels / max(float(np.linalg.norm(pixels)), 1e-6))
        _DESCRIPTOR_CACHE[key] = np.stack(rows)
    return _DESCRIPTOR_CACHE[key]


def write_pixel_features(
    split, path: Path, method: str, size, mode, *, seed: int | None = None
) -> Path:
    queries = pixel_descriptors(split.query_root, split.query_names, size, mode)
    database = pixel_descriptors(split.database_root, split.database_names, size, mode)
    if seed is not None:  # a random projection: another method, other files, other scores
        rng = np.random.default_rng(seed)
        projection = rng.normal(size=(queries.shape[1], 24)).astype(np.float32)
        queries, database = queries @ projection, database @ projection
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        database /= np.linalg.norm(database, axis=1, keepdims=True)
    return write_features(
        path,
        split=split.name,
        method=method,
        query=(split.query_names, queries),
        database=(split.database_names, database),
        attrs={"extraction_ms_per_image": 0.25},
    )


@pytest.fixture(scope="module")
def submitted(tiny_city, tmp_path_factory):
    """Three pixel methods on the synthetic Indoor-Ams 1, 2 and Outdoor-Ams, really submitted."""
    base = tmp_path_factory.mktemp("leaderboard")
    results = base / "results"
    features = base / "features"
    paths = {}
    for split_name in (INDOOR_1, INDOOR_2, OUTDOOR):
        split = tiny_city.split(split_name)
        for method, size, mode in PIXEL_METHODS:
            if method == "pix-2x2-gray" and split_name == INDOOR_2:
                continue  # a method without both indoor sets: listed, not ranked, in Indoor-Ams
            path = write_pixel_features(
                split, features / split_name / method / "features.h5", method, size, mode
            )
            outcome = submit(
                [path],
                split=split_name,
                method_name=method,
                metadata=META,
                results_dir=results,
                data_root=tiny_city.data_root,
            )
            assert outcome.created
            paths[(method, split_name)] = outcome.path
    return base, results, features, paths


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- submit -------------------------------------------------------------------------------------


def test_submit_writes_a_valid_record_and_a_resubmission_is_recognised(
    tiny_city, submitted, tmp_path
):
    base, results, features, paths = submitted
    path = paths[("pix-8x6-gray", INDOOR_1)]
    record = read_record(path)
    assert path == results / INDOOR_1 / "pix-8x6-gray" / f"{record.id}.json"
    assert record.submission_key.startswith(record.id)
    assert record.metadata.descriptor_dim == 48 and record.metadata.descriptor_dtype == "float32"
    assert record.metadata.backbone == META["backbone"]
    assert [f.path for f in record.result.features] == ["features.h5"]  # no submitter paths leak
    assert 0.0 <= record.main_score <= 1.0
    topk = read_topk(path.parent / record.predictions.file)
    assert topk.indices.shape == (tiny_city.split(INDOOR_1).num_queries, 20)
    assert topk.recall_at(record.result.protocol.recall_ns, "miss") == pytest.approx(
        {k: v for k, v in record.scores.items() if k.startswith("recall@")}, abs=1e-6
    )

    # Same bytes from another folder (a copy): the same submission, nothing new written.
    copy = tmp_path / "copy" / "features.h5"
    copy.parent.mkdir()
    shutil.copy(features / INDOOR_1 / "pix-8x6-gray" / "features.h5", copy)
    before = _files(results)
    again = submit(
        [copy.parent],
        split=INDOOR_1,
        method_name="pix-8x6-gray",
        results_dir=results,
        data_root=tiny_city.data_root,
    )
    assert not again.created and again.path == path and again.record == record
    assert _files(results) == before

    # The same files under another name are refused, not duplicated.
    with pytest.raises(HarnessError, match="already submitted as method 'pix-8x6-gray'"):
        submit(
            [copy],
            split=INDOOR_1,
            method_name="renamed",
            results_dir=results,
            data_root=tiny_city.data_root,
        )
    assert _files(results) == before


def test_submit_cli_reports_and_resubmits(tiny_city, submitted, tmp_path):
    _, _, features, _ = submitted
    results = tmp_path / "results"
    feature_file = features / OUTDOOR / "pix-16x12-rgb" / "features.h5"
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"backbone": "pixels", "license": "MIT"}))
    args = [
        "submit",
        str(feature_file),
        "--split",
        OUTDOOR,
        "--method-name",
        "pix",
        "--meta-file",
        str(meta),
        "--results",
        str(results),
        "--data-root",
        str(tiny_city.data_root),
        "--ngpu",
        "0",
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "submitted:" in first.output and "recall@1" in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0 and "already submitted" in second.output
    (record_path,) = results.rglob("*.json")
    record = read_record(record_path)
    assert record.metadata.backbone == "pixels"
    assert record.metadata.extraction_ms_per_image == 0.25  # from the feature file's attribute


def test_submit_with_spatial_nms_keeps_the_evaluated_ranking(tmp_path):
    """Tokyo-style protocol: the committed top-k is the ranking after NMS (one row per place)."""
    from harness.splits import Split, register_split

    rng = np.random.default_rng(7)
    places = rng.uniform(0, 2000, size=(30, 2))
    database_utm = np.repeat(places, 3, axis=0)  # 3 views per place, one position
    query_utm = places[:10] + rng.normal(0, 3, size=(10, 2))
    split = Split(
        name="nms-toy",
        query_names=tuple(f"q{i:02d}.jpg" for i in range(10)),
        database_names=tuple(f"d{i:03d}.jpg" for i in range(90)),
        query_utm=query_utm,
        database_utm=database_utm,
        recall_ns=(1, 5),
        spatial_nms=True,
    )
    register_split(split, tmp_path / "data")
    place_codes = rng.normal(size=(30, 16))
    database = np.repeat(place_codes, 3, axis=0) + rng.normal(0, 0.05, size=(90, 16))
    queries = place_codes[:10] + rng.normal(0, 0.5, size=(10, 16))
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    path = write_features(
        tmp_path / "f.h5",
        split=split.name,
        method="toy",
        query=(split.query_names, queries.astype(np.float32)),
        database=(split.database_names, database.astype(np.float32)),
    )
    outcome = submit(
        [path],
        split=split.name,
        method_name="toy",
        results_dir=tmp_path / "results",
        data_root=tmp_path / "data",
    )
    topk = read_topk(outcome.path.parent / outcome.record.predictions.file)
    assert topk.spatial_nms and topk.indices.shape == (10, 20)
    for row in topk.indices:
        kept = row[row >= 0] // 3  # the place of each kept database row
        assert len(set(kept)) == len(kept)
    assert topk.recall_at((1, 5), "miss") == pytest.approx(
        {
            "recall@1": outcome.record.scores["recall@1"],
            "recall@5": outcome.record.scores["recall@5"],
        },
        abs=1e-6,
    )


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_query", "have no descriptor"),
        ("nan", "NaN"),
        ("not_hdf5", "not a readable HDF5 file"),
        ("wrong_split", "split"),
    ],
)
def test_invalid_features_write_nothing(tiny_city, tmp_path, breakage, message):
    split = tiny_city.split(INDOOR_1)
    results = tmp_path / "results"
    path = tmp_path / "bad.h5"
    queries = pixel_descriptors(split.query_root, split.query_names, (8, 6), "L").copy()
    database = pixel_descriptors(split.database_root, split.database_names, (8, 6), "L")
    query_names = list(split.query_names)
    if breakage == "missing_query":
        queries, query_names = queries[1:], query_names[1:]
    if breakage == "nan":
        queries[3, 5] = np.nan
    if breakage == "not_hdf5":
        path.write_bytes(b"this is not an HDF5 file\n")
    else:
        write_features(
            path,
            split=split.name,
            method="m",
            query=(query_names, queries),
            database=(split.database_names, database),
        )
    target = INDOOR_2 if breakage == "wrong_split" else INDOOR_1
    result = CliRunner().invoke(
        cli,
        [
            "submit",
            str(path),
            "--split",
            target,
            "--method-name",
            "m",
            "--results",
            str(results),
            "--data-root",
            str(tiny_city.data_root),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert not results.exists() or not any(p.is_file() for p in results.rglob("*"))


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"paper": "x", "github": "https://x"}, "unknown metadata keys ['github']"),
        ({"checkpoint_sha256": "abc"}, "checkpoint_sha256 must be 64 lowercase hex digits"),
        ({"code_url": "ftp://x"}, "code_url must be an http(s) URL"),
        ({"descriptor_dim": 4096}, "metadata says descriptor_dim 4096"),
        ({"extraction_ms_per_image": -1}, "extraction_ms_per_image must be a non-negative number"),
    ],
)
def test_invalid_metadata_writes_nothing(tiny_city, submitted, tmp_path, meta, message):
    _, _, features, _ = submitted
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(meta))
    results = tmp_path / "results"
    result = CliRunner().invoke(
        cli,
        [
            "submit",
            str(features / INDOOR_1 / "pix-8x6-gray" / "features.h5"),
            "--split",
            INDOOR_1,
            "--method-name",
            "m",
            "--meta-file",
            str(meta_file),
            "--results",
            str(results),
            "--data-root",
            str(tiny_city.data_root),
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not results.exists() or not any(p.is_file() for p in results.rglob("*"))


def test_bad_method_name_is_refused(tiny_city, submitted, tmp_path):
    _, _, features, _ = submitted
    with pytest.raises(HarnessError, match="invalid method name"):
        submit(
            [features / INDOOR_1 / "pix-8x6-gray" / "features.h5"],
            split=INDOOR_1,
            method_name="../x",
            results_dir=tmp_path / "r",
            data_root=tiny_city.data_root,
        )
    assert not (tmp_path / "r").exists()


_WORKER = r"""
import json, sys, time
from pathlib import Path
# Imported before the start signal, so that the submissions themselves race.
import harness.config, harness.evaluate, harness.ground_truth, scipy.spatial
from leaderboard.submit import submit
feature, split, method, results, data_root, ready, go = sys.argv[1:8]
Path(ready).touch()
deadline = time.time() + 120
while not Path(go).exists():
    if time.time() > deadline:
        sys.exit("no start signal")
    time.sleep(0.002)
outcome = submit([feature], split=split, method_name=method, results_dir=results,
                 data_root=data_root)
print(json.dumps({"path": str(outcome.path), "created": outcome.created}))
"""


def test_eight_concurrent_submitters_lose_nothing(tiny_city, tmp_path):
    """8 real processes submit at the same instant: 7 distinct submissions and one duplicate."""
    split = tiny_city.split(OUTDOOR)
    results = tmp_path / "results"
    jobs = []
    for number in range(7):
        path = write_pixel_features(
            split,
            tmp_path / f"f{number}" / "features.h5",
            f"proj{number}",
            (8, 6),
            "L",
            seed=number,
        )
        jobs.append((path, f"proj{number}"))
    jobs.append(jobs[0])  # the same files and name as job 0, racing it
    argvs = [
        lambda ready, go, path=path, method=method: [
            sys.executable,
            "-c",
            _WORKER,
            path,
            OUTDOOR,
            method,
            results,
            tiny_city.data_root,
            ready,
            go,
        ]
        for path, method in jobs
    ]
    outcomes = []
    for code, stdout, stderr in start_together(tmp_path, argvs, timeout=120):
        assert code == 0, stderr
        outcomes.append(json.loads(stdout.strip().splitlines()[-1]))

    records = sorted(results.rglob("*.json"))
    assert len(records) == 7
    assert sorted(Path(o["path"]) for o in outcomes[:7]) == records
    assert outcomes[7]["path"] == outcomes[0]["path"]
    assert sorted([outcomes[0]["created"], outcomes[7]["created"]]) == [False, True]
    assert {read_record(p).method for p in records} == {f"proj{n}" for n in range(7)}
    leftovers = [p for p in results.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []
    report = check_results(results, data_root=tiny_city.data_root, git=False)
    assert report.ok and report.records == 7, [p.line() for p in report.problems]


# --- tables ------------------------------------------------------------------------------------


def _entry(
    method, split, recall1, *, submitted_at="2025-01-01T00:00:00Z", record_id="0" * 16, **extra
):
    scores = {
        f"recall@{n}": min(1.0, recall1 + 0.05 * i) for i, n in enumerate((1, 5, 10, 20, 50, 100))
    }
    return Entry(
        method=method,
        split=split,
        record_id=record_id,
        submitted_at=submitted_at,
        scores=scores,
        descriptor_dim=4096,
        descriptor_dtype="float32",
        search_seconds=2.0,
        peak_memory_bytes=3 << 30,
        **extra,
    )


def test_indoor_table_ranks_by_mean_recall_at_1():
    entries = [
        _entry("sfrs", "indoor-ams-1", 0.30),
        _entry("sfrs", "indoor-ams-2", 0.50),  # mean 0.40
        _entry("iovpr", "indoor-ams-1", 0.50),
        _entry("iovpr", "indoor-ams-2", 0.42),  # mean 0.46
        _entry("netvlad", "indoor-ams-1", 0.60),  # no set 2
        _entry("twin", "indoor-ams-1", 0.42),
        _entry("twin", "indoor-ams-2", 0.38),  # mean 0.40: tie
        _entry("sfrs", "outdoor-ams", 0.9),
    ]
    table = make_table(get_benchmark("indoor-ams"), entries)
    assert [(r.method, r.rank) for r in table.rows] == [
        ("iovpr", 1),
        ("sfrs", 2),
        ("twin", 2),
        ("netvlad", None),
    ]
    iovpr = table.rows[0].values
    assert iovpr["mean/recall@1"] == pytest.approx(0.46)
    assert iovpr["mean/recall@5"] == pytest.approx((0.55 + 0.47) / 2)
    assert table.rows[3].values["mean/recall@1"] is None
    assert iovpr["search_seconds"] == pytest.approx(4.0)  # summed over the two sets
    assert iovpr["descriptor_bytes"] == 4096 * 4

    markdown = to_markdown(table)
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert "Mean R@1" in lines[0] and "Indoor-Ams 2 R@20" in lines[0]
    assert [line.split("|")[2].strip() for line in lines[2:]] == [
        "iovpr",
        "sfrs",
        "twin",
        "netvlad",
    ]
    assert "**46.0**" in lines[2] and "**60.0**" in lines[5]  # best per column in bold

    latex = to_latex(table)
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    assert r"\multicolumn{4}{c}{Mean}" in latex and r"\cmidrule(lr){10-13}" in latex
    assert latex.index("iovpr &") < latex.index("sfrs &") < latex.index("netvlad &")

    import io

    import pandas as pd

    frame = pd.read_csv(io.StringIO(to_csv(table)))
    assert list(frame["method"]) == ["iovpr", "sfrs", "twin", "netvlad"]
    assert frame.loc[0, "mean/recall@1"] == pytest.approx(0.46)
    assert pd.isna(frame.loc[3, "rank"]) and pd.isna(frame.loc[3, "mean/recall@1"])
    assert frame.loc[0, "peak_memory_bytes"] == 3 << 30


def test_efficiency_columns_show_measured_values_and_where(tiny_city, submitted, tmp_path):
    """Harness-measured extraction times appear with their hardware; a value the harness did
    not measure is "–" with the reason (the submitter's declared figure is named, not shown);
    the search cost in GFLOP is 2 Q N D; a sub-10-ms search is not printed as 0.00."""
    from leaderboard.records import load_records

    split = tiny_city.split(OUTDOOR)
    queries = pixel_descriptors(split.query_root, split.query_names, (8, 6), "L")
    database = pixel_descriptors(split.database_root, split.database_names, (8, 6), "L")
    timing = {"extraction_device": "cpu", "extraction_hardware": "Test CPU (2 cores)",
              "extraction_precision": "bf16"}
    query_file = write_features(tmp_path / "q.h5", split=split.name, method="timed",
                                query=(split.query_names, queries),
                                attrs={**timing, "extraction_seconds": 0.5,
                                       "extraction_images": split.num_queries})
    database_file = write_features(tmp_path / "d.h5", split=split.name, method="timed",
                                   database=(split.database_names, database),
                                   attrs={**timing, "extraction_seconds": 1.5,
                                          "extraction_images": split.num_database})
    results = tmp_path / "results"
    shutil.copytree(submitted[1], results)
    submit([query_file, database_file], split=OUTDOOR, method_name="timed", metadata=META,
           results_dir=results, data_root=tiny_city.data_root)
    record = next(r for r in load_records(results) if r.method == "timed")
    measured = record.result.efficiency["extraction"]
    images = split.num_queries + split.num_database
    assert measured["ms_per_image"] == pytest.approx(2000.0 / images)
    assert record.result.efficiency["search_cost"]["flop"] == (
        2 * split.num_queries * split.num_database * queries.shape[1])
    build_leaderboard(results, tmp_path / "out", data_root=tiny_city.data_root, grids=False)
    readme = (tmp_path / "out" / "README.md").read_text()
    section = readme[readme.index("## Synthetic city: Outdoor-Ams"):]
    section = section[:section.index("\n## ", 5)]
    table = [line.split("|") for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0]]
    rows = {row[2].strip().split("]")[0].lstrip("["): row for row in table[2:]}
    extract_col, gflop_col, seconds_col = (header.index(label) for label in
                                           ("Extract ms/img", "Search GFLOP", "Search s"))
    assert rows["timed"][extract_col].strip() == f"{2000.0 / images:.1f}"
    assert rows["pix-8x6-gray"][extract_col].strip() == "–"
    gflop = 2 * split.num_queries * split.num_database * 48 / 1e9
    assert rows["timed"][gflop_col].strip() == f"{gflop:.3g}"
    assert len(rows) == 4 and all(float(row[seconds_col]) > 0 for row in rows.values())
    plain = re.sub(r"\\(.)", r"\1", section)  # as GitHub shows it (the notes are escaped)
    assert "timed, extraction: " in plain and "on Test CPU (2 cores) (cpu, bf16" in plain
    assert "pix-8x6-gray, extraction: – (" in plain
    assert "features.h5 was not extracted by the harness" in plain
    assert "declared 0.5 ms/img (not measured, not shown)" in plain


def test_single_split_table_and_newest_record_wins():
    entries = [
        _entry("a", "tokyo247", 0.7, submitted_at="2025-01-01T00:00:00Z", record_id="1" * 16),
        _entry("a", "tokyo247", 0.2, submitted_at="2025-02-01T00:00:00Z", record_id="2" * 16),
        _entry("b", "tokyo247", 0.5),
    ]
    assert latest_entries(entries)[("a", "tokyo247")].record_id == "2" * 16
    table = make_table(get_benchmark("tokyo247"), entries)
    assert [r.method for r in table.rows] == ["b", "a"]
    assert table.rank_column == "tokyo247/recall@1"
    assert "No submissions yet" in to_markdown(make_table(get_benchmark("pitts30k"), entries))


def test_benchmarks_cover_every_split():
    keys = [b.key for b in benchmarks_for(["synth-indoor-ams-1", "synth-foo", "ams30k-val"])]
    assert keys[: len(REAL_BENCHMARKS)] == [
        "indoor-ams",
        "outdoor-ams",
        "ams30k",
        "pitts30k",
        "tokyo247",
    ]
    assert "synth-indoor-ams" in keys and "split-synth-foo" in keys and "split-ams30k-val" in keys
    synthetic = get_benchmark("synth-indoor-ams")
    assert synthetic.splits == (INDOOR_1, INDOOR_2) and synthetic.has_mean
    with pytest.raises(KeyError, match="did you mean"):
        get_benchmark("indor-ams")


# --- build -------------------------------------------------------------------------------------


def test_build_is_deterministic_and_complete(tiny_city, submitted, tmp_path):
    _, results, _, _ = submitted
    first = build_leaderboard(results, tmp_path / "a", data_root=tiny_city.data_root)
    second = build_leaderboard(results, tmp_path / "b", data_root=tiny_city.data_root)
    build_leaderboard(results, tmp_path / "a", data_root=tiny_city.data_root)  # rebuilt in place
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a == files_b
    assert first.grids == second.grids == 8  # 3 + 2 + 3 method/split pairs with images
    for name in (
        "README.md",
        "tables/synth-indoor-ams.tex",
        "tables/synth-indoor-ams.csv",
        "tables/indoor-ams.tex",
        "site/index.html",
        "site/plots/synth-indoor-ams.svg",
        "site/plots/synth-outdoor-ams.svg",
    ):
        assert name in files_a, name
    assert any(name.startswith("site/thumbs/") and name.endswith(".jpg") for name in files_a)

    readme = files_a["README.md"].decode()
    assert readme.startswith("<!-- GENERATED")
    section = readme[
        readme.index("## Synthetic city: Indoor-Ams") : readme.index(
            "## Synthetic city: Outdoor-Ams"
        )
    ]
    records = {(r.method, r.split): r for r in load_records(results)}
    means = {
        m: (records[(m, INDOOR_1)].scores["recall@1"] + records[(m, INDOOR_2)].scores["recall@1"])
        / 2
        for m in ("pix-16x12-rgb", "pix-8x6-gray")
    }
    ranked = sorted(means, key=lambda m: -means[m])
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    assert [r.split("|")[2].strip().split("]")[0].lstrip("[") for r in rows] == ranked + [
        "pix-2x2-gray"
    ]
    assert f"{100 * means[ranked[0]]:.1f}" in rows[0]
    assert "## Indoor-Ams" in readme and "No submissions yet" in readme


def test_build_verify_catches_hand_edits_and_missing_rebuilds(submitted, tmp_path):
    _, results, _, _ = submitted
    out = tmp_path / "out"
    empty = tmp_path / "empty-results"
    empty.mkdir()
    runner = CliRunner()
    assert (
        runner.invoke(
            cli, ["leaderboard", "build", "--results", str(empty), "--out", str(out)]
        ).exit_code
        == 0
    )
    assert "No submissions yet" in (out / "README.md").read_text()
    verify = ["leaderboard", "build", "--results", str(empty), "--out", str(out), "--verify"]
    assert runner.invoke(cli, verify).exit_code == 0

    readme = out / "README.md"
    readme.write_text(readme.read_text().replace("No submissions yet", "We are the best"))
    result = runner.invoke(cli, verify)
    assert (
        result.exit_code == 2 and f"{readme}: differs from what the records give" in result.output
    )

    result = runner.invoke(
        cli, ["leaderboard", "build", "--results", str(results), "--out", str(out), "--verify"]
    )
    assert result.exit_code == 2 and "tables/synth-indoor-ams.csv: missing" in result.output


def test_build_removes_stale_outputs(tmp_path):
    out = tmp_path / "out"
    build_from_entries([_entry("a", "split-x", 0.5)], out, plots=False, grids=False)
    assert (out / "tables" / "split-split-x.csv").is_file()
    build_from_entries([_entry("a", "tokyo247", 0.5)], out, plots=False, grids=False)
    assert not (out / "tables" / "split-split-x.csv").exists()
    assert (out / "tables" / "tokyo247.csv").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --- check -------------------------------------------------------------------------------------


def _copy_results(results: Path, target: Path) -> Path:
    shutil.copytree(results, target)
    return target


def _rewrite(path: Path, change, *, fix_checksum: bool) -> None:
    data = json.loads(path.read_text())
    change(data)
    if fix_checksum:
        data["content_sha256"] = content_checksum(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_check_passes_then_catches_a_hand_edited_score(tiny_city, submitted, tmp_path):
    _, results, features, paths = submitted
    results = _copy_results(results, tmp_path / "results")
    report = check_results(
        results, data_root=tiny_city.data_root, feature_dirs=[features], git=True
    )
    assert report.ok, [p.line() for p in report.problems]
    assert report.records == 8 and report.split_checked == 8 and report.recomputed == 8
    assert any("not in a git work tree" in n for n in report.notes)

    edited = results / paths[("pix-8x6-gray", INDOOR_1)].relative_to(submitted[1])
    _rewrite(
        edited, lambda d: d["result"]["scores"].update({"recall@1": 0.999}), fix_checksum=False
    )
    result = CliRunner().invoke(
        cli,
        [
            "leaderboard",
            "check",
            "--results",
            str(results),
            "--no-git",
            "--data-root",
            str(tiny_city.data_root),
        ],
    )
    assert result.exit_code == 2
    assert f"{edited}: content checksum mismatch" in result.output
    assert "8 records checked" in result.output and "1 problems" in result.output


def test_check_catches_a_forged_record_with_a_valid_checksum(tiny_city, submitted, tmp_path):
    """A score changed and its checksum recomputed: the saved predictions and features disagree."""
    _, results, features, paths = submitted
    results = _copy_results(results, tmp_path / "results")
    forged = results / paths[("pix-16x12-rgb", INDOOR_1)].relative_to(submitted[1])
    stored = read_record(forged).scores["recall@1"]
    new = 1.0 if stored < 0.5 else 0.0
    _rewrite(forged, lambda d: d["result"]["scores"].update({"recall@1": new}), fix_checksum=True)
    read_record(forged)  # the record itself is consistent
    report = check_results(
        results, data_root=tiny_city.data_root, feature_dirs=[features / INDOOR_1], git=False
    )
    lines = [p.line() for p in report.problems]
    assert any("that its saved predictions give" in line for line in lines), lines
    assert any("that its feature files give" in line for line in lines), lines
    assert all(str(forged) in line for line in lines)


def test_check_catches_a_forged_interval(tiny_city, submitted, tmp_path):
    """A narrowed interval with its checksum recomputed: the fixed-seed bootstrap of the saved
    predictions gives the true one back."""
    _, results, _, paths = submitted
    results = _copy_results(results, tmp_path / "results")
    forged = results / paths[("pix-16x12-rgb", INDOOR_1)].relative_to(submitted[1])
    score = read_record(forged).scores["recall@1"]
    _rewrite(forged, lambda d: d["result"]["intervals"].update({"recall@1": [score, score]}),
             fix_checksum=True)
    report = check_results(results, data_root=tiny_city.data_root, git=False)
    lines = [p.line() for p in report.problems]
    assert len(lines) == 1 and "stored interval of recall@1" in lines[0], lines
    assert str(forged) in lines[0]


def test_check_catches_protocol_and_split_changes(tiny_city, submitted, tmp_path):
    _, results, _, _ = submitted
    data_root = tmp_path / "data"
    shutil.copytree(tiny_city.data_root, data_root)
    from harness.splits import get_split, register_split

    register_split(get_split(OUTDOOR, data_root).replace(radius_m=30.0), data_root)
    report = check_results(results, data_root=data_root, git=False)
    lines = [p.line() for p in report.problems]
    assert len(lines) == 3 and all(
        "split checksum" in line and OUTDOOR in line for line in lines
    ), lines


def test_check_catches_score_drift_between_commits(tiny_city, submitted, tmp_path):
    _, results, _, paths = submitted
    repo = tmp_path / "repo"
    results = _copy_results(results, repo / "leaderboard" / "results")

    def git(*args):
        subprocess.run(
            [
                "git",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "records")
    assert check_results(results, data_root=tmp_path / "no-splits", git=True).ok

    record = results / paths[("pix-8x6-gray", OUTDOOR)].relative_to(submitted[1])
    small = results / paths[("pix-16x12-rgb", OUTDOOR)].relative_to(submitted[1])
    old = read_record(record).scores["recall@5"]
    _rewrite(
        record,
        lambda d: d["result"]["scores"].update(
            {"recall@5": round(old + 0.01 if old < 0.5 else old - 0.01, 6)}
        ),
        fix_checksum=True,
    )
    old_small = read_record(small).scores["recall@5"]
    _rewrite(
        small,
        lambda d: d["result"]["scores"].update(
            {"recall@5": round(old_small + 0.0005 if old_small < 0.5 else old_small - 0.0005, 6)}
        ),
        fix_checksum=True,
    )
    git("commit", "-q", "-am", "rewrite scores")
    report = check_results(results, data_root=tmp_path / "no-splits", git=True)
    drift = [p.line() for p in report.problems if "between commits" in p.message]
    assert len(drift) == 1, drift
    assert str(record.resolve()) in drift[0] and "recall@5 changed by" in drift[0]

    # Outside git the drift check is skipped with a note, not failed.
    outside = _copy_results(results, tmp_path / "plain")
    report = check_results(outside, data_root=tmp_path / "no-splits", git=True)
    assert any("not in a git work tree" in n for n in report.notes)


def test_check_reports_stray_and_orphan_files(submitted, tmp_path):
    _, results, _, paths = submitted
    results = _copy_results(results, tmp_path / "results")
    (results / INDOOR_1 / "notes.txt").write_text("x")
    record = results / paths[("pix-8x6-gray", INDOOR_1)].relative_to(submitted[1])
    record.unlink()
    report = check_results(results, data_root=tmp_path / "no-splits", git=False)
    lines = [p.line() for p in report.problems]
    assert any("notes.txt: not a record" in line for line in lines)
    assert any("predictions file without its record" in line for line in lines)


# --- records: schema versions -------------------------------------------------------------------


def test_reader_rejects_unknown_versions_and_keys(submitted):
    _, _, _, paths = submitted
    data = json.loads(paths[("pix-8x6-gray", INDOOR_1)].read_text())
    assert record_from_dict(data).to_dict() == data  # round trip, byte-stable content

    future = dict(data, record_schema_version=99)
    with pytest.raises(
        ValidationError, match="record_schema_version 99 is not one this harness reads"
    ):
        record_from_dict(future, verify_checksum=False)
    extra = dict(data, score_override=1.0)
    extra["content_sha256"] = content_checksum(extra)
    with pytest.raises(ValidationError, match="unknown record keys"):
        record_from_dict(extra)
    meta = dataclasses.replace(MethodMetadata.from_dict(META), license="x\ny")
    assert meta.problems() == ["license must be one line of at most 2000 characters"]


# --- the page in a real browser -----------------------------------------------------------------


def test_page_in_headless_chromium(tiny_city, submitted, tmp_path):
    """Headless Chromium loads the page, runs its script, sorts a table; DOM and screenshot."""
    import re

    from PIL import Image

    from leaderboard.browser import dump_dom, find_chromium, screenshot

    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "chromium is not installed: run `bash .ci/browser.sh` "
            "(Debian: apt-get install -y chromium)"
        )
    _, results, _, _ = submitted
    output = build_leaderboard(results, tmp_path / "out", data_root=tiny_city.data_root)
    url = output.page.resolve().as_uri()
    records = {(r.method, r.split): r for r in load_records(results)}

    dom = dump_dom(f"{url}#sort=table-synth-indoor-ams:method:asc", binary=binary)
    assert 'data-sortable="ready"' in dom  # the inline script ran
    table = dom[dom.index('id="table-synth-indoor-ams"') :]
    table = table[: table.index("</table>")]
    assert 'data-sorted-by="method:asc"' in table
    rows = re.findall(r'<tr data-method="([^"]+)" data-rank="(\d*)"', table)
    assert [method for method, _ in rows] == sorted(
        m for m, _, _ in PIXEL_METHODS
    )  # sorted by the script
    assert dict(rows)["pix-2x2-gray"] == ""  # unranked: no Indoor-Ams 2 record
    outdoor = dom[dom.index('id="table-synth-outdoor-ams"') :]
    outdoor = outdoor[: outdoor.index("</table>")]
    ranked = sorted(
        (m for m, _, _ in PIXEL_METHODS), key=lambda m: (-records[(m, OUTDOOR)].main_score, m)
    )
    assert re.findall(r'<tr data-method="([^"]+)"', outdoor) == ranked  # as built: ranked by R@1
    first = records[(ranked[0], OUTDOOR)].main_score
    low, high = records[(ranked[0], OUTDOOR)].result.intervals["recall@1"]
    shown = f"{100 * first:.1f} ± {100 * (high - low) / 2:.1f}"  # R@1 with half its interval
    assert f'data-value="{first!r}">{shown}</td>' in outdoor

    plot = dom[dom.index('id="plot-synth-indoor-ams"') :]
    plot = plot[: plot.index("</figure>")]
    assert "<svg" in plot and "<path" in plot
    assert 'id="curve-synth-indoor-ams-1-pix-8x6-gray' in plot
    grids = re.findall(r'<div class="grid" data-method="([^"]+)" data-split="([^"]+)"', dom)
    assert (("pix-8x6-gray", INDOOR_1) in grids) and len(grids) == output.grids
    assert (
        dom.count('class="query"') == 4 * len(grids)
        and 'class="hit"' in dom
        and 'class="miss"' in dom
    )

    png = screenshot(url, tmp_path / "page.png", binary=binary, width=1400, height=2600)
    with Image.open(png) as image:
        assert image.size == (1400, 2600)
        colours = image.convert("RGB").resize((140, 260)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # rendered content, not a blank page
