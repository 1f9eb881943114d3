"""Downloader-layout folders as splits, the folder built-ins and the canonical pins."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from formats_helpers import downloader_name, write_downloader_folder, write_jpeg

from harness.canonical import (
    canonical_splits,
    check_canonical,
    parse_canonical,
    record_status,
)
from harness.cli import cli
from harness.errors import HarnessError
from harness.sources.builtin_folders import folder_definitions, prepare_all
from harness.sources.downloader import split_from_folder, utm_from_name
from harness.splits import builtin_definitions, get_split

# Database along a street every 10 m (east 0..50); query 0 is 25 m (exactly), 15 m and 5 m
# from images 3, 4, 5; query 1 exactly 25 m north of image 3; query 2 1 km away (no positive).
DATABASE_UTM = np.array([[584000.0 + 10 * i, 4477000.0] for i in range(6)])
QUERY_UTM = np.array([[584000.0 + 55.0, 4477000.0],
                      [584000.0 + 30.0, 4477000.0 + 25.0],
                      [585000.0, 4478000.0]])


def test_name_parsing_matches_the_downloader_fields():
    name = downloader_name(584213.34, 4477114.53)
    assert name.count("@") == 15 and name.split("@")[0] == ""  # 14 fields, then .jpg
    assert utm_from_name(name) == (584213.34, 4477114.53)
    assert utm_from_name("sub/dir/" + name) == (584213.34, 4477114.53)
    assert utm_from_name("@0@2.4@@@@@1@@@@@@@@.jpg") == (0.0, 2.4)  # Nordland's dummy UTM
    for bad in ("000123.jpg", "@east@north@@.jpg", "x@1@2@3.jpg"):
        with pytest.raises(ValueError):
            utm_from_name(bad)


def test_folder_split_sorted_names_positions_and_boundary(tmp_path):
    db_names, q_names = write_downloader_folder(tmp_path / "test", DATABASE_UTM, QUERY_UTM)
    (tmp_path / "test" / "database" / "notes.txt").write_text("not an image")
    split = split_from_folder("street", tmp_path / "test")
    assert split.database_names == tuple(sorted(db_names))
    assert split.query_names == tuple(sorted(q_names))
    assert split.radius_m == 25.0
    for names, utm, ordered, stored in (
            (db_names, DATABASE_UTM, split.database_names, split.database_utm),
            (q_names, QUERY_UTM, split.query_names, split.query_utm)):
        by_name = dict(zip(names, map(tuple, utm)))  # positions follow their names
        assert [by_name[n] for n in ordered] == [tuple(p) for p in stored]
    # brute-force positives (boundary included): distance <= 25 m
    for q, name in enumerate(split.query_names):
        position = QUERY_UTM[q_names.index(name)]
        expected = sorted(
            split.database_index[n] for n, p in zip(db_names, DATABASE_UTM)
            if np.hypot(*(p - position)) <= 25.0)
        assert split.positives[q].tolist() == expected
    for query in (0, 1):  # exactly 25 m away: a positive
        row = split.query_index[q_names[query]]
        assert split.database_index[db_names[3]] in split.positives[row].tolist()
    assert split.positives.num_without_positive == 1
    assert split.query_root == str((tmp_path / "test" / "queries").resolve())


def test_a_name_that_does_not_parse_names_file_and_name(tmp_path):
    write_downloader_folder(tmp_path / "test", DATABASE_UTM, QUERY_UTM)
    write_jpeg(tmp_path / "test" / "queries" / "IMG_0001.jpg", seed=9)
    runner = CliRunner()
    result = runner.invoke(cli, ["splits", "import", "--name", "street", "--folder",
                                 str(tmp_path / "test"), "--data-root", str(tmp_path / "store")])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'test' / 'queries' / 'IMG_0001.jpg'}: ")
    assert "image name 'IMG_0001.jpg' is not a VPR-datasets-downloader name" in line
    assert not (tmp_path / "store" / "splits").exists()  # nothing written


def test_import_folder_cli_registers_and_missing_subfolder_is_explained(tmp_path):
    write_downloader_folder(tmp_path / "ds" / "images" / "test", DATABASE_UTM, QUERY_UTM)
    runner = CliRunner()
    store = str(tmp_path / "store")
    result = runner.invoke(cli, ["splits", "import", "--name", "street", "--folder",
                                 str(tmp_path / "ds"), "--data-root", store])
    assert result.exit_code == 2 and "pass that folder" in result.output
    result = runner.invoke(cli, ["splits", "import", "--name", "street", "--folder",
                                 str(tmp_path / "ds" / "images" / "test"), "--radius-m", "10",
                                 "--data-root", store])
    assert result.exit_code == 0, result.output
    split = get_split("street", store)
    assert (split.num_queries, split.num_database, split.radius_m) == (3, 6, 10.0)


def test_canonical_pins_cover_the_issue_numbers():
    pins = canonical_splits()
    assert (pins["pitts30k-test"].database, pins["pitts30k-test"].queries) == (10000, 6816)
    assert (pins["pitts250k-test"].database, pins["pitts250k-test"].queries) == (83952, 8280)
    assert (pins["tokyo247"].database, pins["tokyo247"].queries) == (75984, 315)
    assert pins["tokyo247"].spatial_nms and not pins["tokyo247-nonms"].spatial_nms
    assert (pins["msls-val"].database, pins["msls-val"].queries) == (18871, 740)
    assert (pins["sf-xl-test-v1"].database, pins["sf-xl-test-v1"].queries) == (None, 1000)
    assert not pins["sf-xl-test-v1"].mismatches(queries=1000, database=2_800_123,
                                                 radius_m=25.0, spatial_nms=False)
    assert pins["sf-xl-test-v1"].mismatches(queries=999, database=2_800_123, radius_m=25.0,
                                            spatial_nms=False)
    with pytest.raises(HarnessError, match="unknown keys"):
        parse_canonical("format_version = 1\n[canonical.x]\nqueries = 1\ndatabase = 1\n"
                        "radius_m = 25.0\nqueris = 3\n")


def test_a_canonical_count_mismatch_is_refused_unless_renamed(tmp_path):
    write_downloader_folder(tmp_path / "test", DATABASE_UTM, QUERY_UTM)
    runner = CliRunner()
    store = str(tmp_path / "store")
    result = runner.invoke(cli, ["splits", "import", "--name", "pitts30k-test", "--folder",
                                 str(tmp_path / "test"), "--data-root", store])
    assert result.exit_code == 2
    assert "'pitts30k-test' is a canonical benchmark name" in result.output
    assert "3 queries / 6 database images, expected 6,816 / 10,000" in result.output
    assert not (tmp_path / "store" / "splits" / "pitts30k-test.split.npz").exists()
    result = runner.invoke(cli, ["splits", "import", "--name", "pitts30k-test-subset",
                                 "--folder", str(tmp_path / "test"), "--data-root", store])
    assert result.exit_code == 0, result.output


def test_record_status_compares_counts_and_protocol():
    class Result:  # the fields record_status reads, as an EvalResult holds them
        class counts:
            queries, database = 315, 75984

        class protocol:
            radius_m, spatial_nms = 25.0, True

        split, split_sha256 = "tokyo247", "0" * 64

    assert record_status(Result).official
    Result.protocol.spatial_nms = False
    status = record_status(Result)
    assert not status.official and "spatial NMS off" in status.reason
    Result.split = "my-own-split"
    assert record_status(Result).official


def test_builtin_folder_definitions_and_prepare(tmp_path):
    definitions = folder_definitions()
    assert {"pitts30k-test", "msls-val", "nordland", "st-lucia", "sf-xl-test-v1", "tokyo247",
            "tokyo247-nonms"} <= set(definitions)
    assert definitions["tokyo247"].spatial_nms and not definitions["tokyo247-nonms"].spatial_nms
    assert "tokyo247-nonms" in builtin_definitions()  # also from the .mat file
    root = tmp_path / "datasets"
    write_downloader_folder(root / "st_lucia" / "images" / "test", DATABASE_UTM, QUERY_UTM)
    write_downloader_folder(root / "tokyo247" / "images" / "test", DATABASE_UTM, QUERY_UTM)
    # a pinned name with the wrong content is an error ...
    with pytest.raises(HarnessError, match="canonical benchmark name"):
        prepare_all(root, data_root=tmp_path / "store")
    # ... while a prefix registers every folder found
    outcomes = prepare_all(root, prefix="mini-", data_root=tmp_path / "store")
    registered = {o.name for o in outcomes if o.registered}
    assert registered == {"mini-st-lucia", "mini-tokyo247", "mini-tokyo247-nonms"}
    skipped = {o.name: o.reason for o in outcomes if not o.registered}
    assert "pitts30k_test.mat" in skipped["mini-pitts30k-test"]
    assert "pitts30k/images/test/database" in skipped["mini-pitts30k-test"]
    tokyo = get_split("mini-tokyo247", tmp_path / "store")
    nonms = get_split("mini-tokyo247-nonms", tmp_path / "store")
    assert tokyo.spatial_nms and not nonms.spatial_nms
    assert tokyo.database_names == nonms.database_names
    with pytest.raises(HarnessError, match="did you mean st-lucia"):
        prepare_all(root, names=["st-lucai"], data_root=tmp_path / "store")


def test_check_canonical_accepts_a_matching_split():
    from harness.splits import Split

    pin = canonical_splits()["tokyo247"]
    split = Split(name="tokyo247", query_names=tuple(f"q{i:03d}.jpg" for i in range(pin.queries)),
                  database_names=tuple(f"d{i:05d}.jpg" for i in range(pin.database)),
                  query_utm=np.zeros((pin.queries, 2)), database_utm=np.zeros((pin.database, 2)),
                  radius_m=25.0, spatial_nms=True)
    check_canonical(split)
    with pytest.raises(HarnessError, match="spatial NMS off, expected on"):
        check_canonical(split.replace(spatial_nms=False))
