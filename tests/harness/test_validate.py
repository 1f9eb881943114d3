"""Feature-file validation against a split: every problem is its own case, plus the CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.errors import ValidationError
from harness.features import write_features
from harness.splits import Split, register_split
from harness.validate import check_features, inspect_block, validate_features

NUM_QUERIES, NUM_DATABASE, DIM = 6, 40, 8


@pytest.fixture
def split() -> Split:
    rng = np.random.default_rng(0)
    return Split(
        name="tiny",
        query_names=tuple(f"q/{i:02d}.jpg" for i in range(NUM_QUERIES)),
        database_names=tuple(f"db/{i:03d}.jpg" for i in range(NUM_DATABASE)),
        query_utm=rng.uniform(0, 100, (NUM_QUERIES, 2)),
        database_utm=rng.uniform(0, 100, (NUM_DATABASE, 2)),
    )


def _unit(rows: int, seed: int, dim: int = DIM, dtype=np.float32) -> np.ndarray:
    values = np.random.default_rng(seed).normal(size=(rows, dim))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(dtype)


def _write(
    path,
    split,
    *,
    query=True,
    database=slice(None),
    split_name=None,
    method="netvlad",
    query_desc=None,
    database_desc=None,
    database_names=None,
    dtype=np.float32,
):
    q_part = db_part = None
    if query:
        q_part = (
            list(split.query_names),
            query_desc if query_desc is not None else _unit(NUM_QUERIES, 1, dtype=dtype),
        )
    if database is not None:
        names = (
            database_names if database_names is not None else list(split.database_names[database])
        )
        desc = database_desc if database_desc is not None else _unit(len(names), 2, dtype=dtype)
        db_part = (names, desc)
    return write_features(
        path,
        split=split.name if split_name is None else split_name,
        method=method,
        query=q_part,
        database=db_part,
    )


def _problems(paths, split, **options):
    report = validate_features(paths, split, **options)
    assert report.query is None or report.ok
    return report.problems


def _only_problem(paths, split, fragment, **options):
    problems = _problems(paths, split, **options)
    assert len(problems) == 1, problems
    assert fragment in problems[0], problems[0]
    return problems[0]


def _replace_descriptors(path, part, data):
    with h5py.File(path, "r+") as handle:
        del handle[part]["descriptors"]
        handle[part].create_dataset("descriptors", data=data)


# ----------------------------------------------------------------------------- valid input


def test_valid_single_file_with_shuffled_rows(tmp_path, split):
    order = np.random.default_rng(3).permutation(NUM_DATABASE)
    names = [split.database_names[i] for i in order]
    path = _write(
        tmp_path / "f.h5", split, database_names=names, database_desc=_unit(NUM_DATABASE, 4)
    )
    report = check_features([path], split)
    assert report.ok and report.warnings == ()
    assert report.query.rows.tolist() == list(range(NUM_QUERIES))
    assert len(report.database) == 1
    np.testing.assert_array_equal(report.database[0].rows, order)
    assert report.dim == DIM and report.method == "netvlad"


def test_valid_shards(tmp_path, split):
    query = _write(tmp_path / "q.h5", split, database=None)
    shard_a = _write(tmp_path / "db-0.h5", split, query=False, database=slice(0, 25))
    shard_b = _write(
        tmp_path / "db-1.h5", split, query=False, database=slice(25, None), dtype=np.float16
    )
    report = check_features([query, shard_a, shard_b], split)
    assert [p.rows.tolist() for p in report.database] == [list(range(25)), list(range(25, 40))]
    assert [p.dtype for p in report.database] == ["float32", "float16"]


def test_block_scan_finds_value_in_late_block(tmp_path, split):
    desc = _unit(NUM_DATABASE, 2)
    desc[37, 3] = np.nan
    path = _write(tmp_path / "f.h5", split, database_desc=desc)
    problem = _only_problem(
        [path], split, "1 /database rows hold NaN or Inf", block_bytes=DIM * 4 * 5
    )
    assert "'db/037.jpg'" in problem


def test_inspect_block():
    block = _unit(5, 0)
    block[1] = 0
    block[2, 0] = np.inf
    block[3] *= 2
    block[4, 0] = 1e30  # finite but its float32 square overflows: not a NaN/Inf row
    result = inspect_block(block)
    assert result.nonfinite_rows.tolist() == [2]
    assert result.zero_rows.tolist() == [1]
    assert result.unnormalised_rows == 1
    assert result.norm_max == pytest.approx(2.0, rel=1e-5)


# ----------------------------------------------------------------------------- problems


def test_missing_file(tmp_path, split):
    assert _only_problem([tmp_path / "nope.h5"], split, "feature file not found").startswith(
        str(tmp_path)
    )


def test_not_hdf5(tmp_path, split):
    path = tmp_path / "f.h5"
    path.write_bytes(b"\x80\x04pickle-ish bytes, never unpickled")
    _only_problem([path], split, "not a readable HDF5 file")


def test_missing_names_dataset(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    with h5py.File(path, "r+") as handle:
        del handle["query/names"]
    _only_problem([path], split, "/query/names is missing")


def test_wrong_format_version(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = 7
    _only_problem([path], split, "format_version 7 is not supported")


def test_other_split(tmp_path, split):
    path = _write(tmp_path / "f.h5", split, split_name="pitts30k-test")
    _only_problem([path], split, "was written for split 'pitts30k-test', not 'tiny'")


def test_shared_database_of_another_split_is_accepted_silently(tmp_path, split, caplog):
    # Indoor-Ams 1 and 2 search the Outdoor-Ams database: one database file serves all three.
    query = _write(tmp_path / "q.h5", split, database=None)
    shard = _write(tmp_path / "db.h5", split, query=False, split_name="outdoor-ams")
    with caplog.at_level("INFO", logger="harness.validate"):
        report = validate_features([query, shard], split)
    assert report.ok and report.warnings == ()
    assert "written for split 'outdoor-ams'; used for 'tiny'" in caplog.text


def test_shared_database_must_hold_this_splits_names(tmp_path, split):
    query = _write(tmp_path / "q.h5", split, database=None)
    names = list(split.database_names[:-1]) + ["db/elsewhere.jpg"]
    shard = _write(tmp_path / "db.h5", split, query=False, split_name="outdoor-ams",
                   database_names=names)
    report = validate_features([query, shard], split)
    assert not report.ok and any("db/elsewhere.jpg" in p for p in report.problems)


def test_empty_split_attribute_is_a_warning(tmp_path, split):
    path = _write(tmp_path / "f.h5", split, split_name="")
    report = validate_features([path], split)
    assert report.ok and report.warnings == (
        f"{path}: has no split attribute; checked against 'tiny'",
    )


def test_no_query_part(tmp_path, split):
    path = _write(tmp_path / "db.h5", split, query=False)
    _only_problem([path], split, "no file holds /query")


def test_two_query_parts(tmp_path, split):
    first = _write(tmp_path / "a.h5", split, database=slice(0, 20))
    second = _write(tmp_path / "b.h5", split, database=slice(20, None))
    problem = _only_problem([first, second], split, "exactly one file may hold the queries")
    assert problem.startswith(str(second))


def test_no_database_part(tmp_path, split):
    path = _write(tmp_path / "q.h5", split, database=None)
    _only_problem([path], split, "no file holds /database")


def test_missing_database_names(tmp_path, split):
    path = _write(tmp_path / "f.h5", split, database=slice(0, 35))
    problem = _only_problem([path], split, "5 of 40 split database images have no descriptor")
    assert "'db/035.jpg', 'db/036.jpg', 'db/037.jpg', ..." in problem


def test_unknown_database_names(tmp_path, split):
    names = list(split.database_names) + ["db/extra.jpg", "other.png"]
    path = _write(tmp_path / "f.h5", split, database_names=names)
    _only_problem(
        [path], split, "2 database names are not in the split (first: 'db/extra.jpg', 'other.png')"
    )


def test_duplicate_names_within_file(tmp_path, split):
    names = list(split.database_names) + ["db/007.jpg"]
    path = _write(tmp_path / "f.h5", split, database_names=names)
    _only_problem([path], split, "1 database names occur more than once (first: 'db/007.jpg')")


def test_duplicate_query_names(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    with h5py.File(path, "r+") as handle:
        names = handle["query/names"]
        names[1] = names[0]
    problems = _problems([path], split)
    assert any("1 query names occur more than once (first: 'q/00.jpg')" in p for p in problems)
    assert any(
        "1 of 6 split query images have no descriptor (first: 'q/01.jpg')" in p for p in problems
    )


def test_overlapping_shards(tmp_path, split):
    query = _write(tmp_path / "q.h5", split, database=None)
    shard_a = _write(tmp_path / "db-0.h5", split, query=False, database=slice(0, 25))
    shard_b = _write(tmp_path / "db-1.h5", split, query=False, database=slice(20, None))
    problem = _only_problem([query, shard_a, shard_b], split, "5 database rows are also in")
    assert problem.startswith(f"{shard_b}: ") and str(shard_a) in problem


def test_same_file_twice(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    _only_problem([path, path], split, "given more than once")


def test_dimension_mismatch_between_parts(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    _replace_descriptors(path, "query", _unit(NUM_QUERIES, 1, dim=DIM + 1))
    _only_problem(
        [path],
        split,
        f"/database/descriptors has dimension {DIM}, but /query/descriptors in f.h5 has {DIM + 1}",
    )


def test_dimension_mismatch_between_shards(tmp_path, split):
    query = _write(tmp_path / "q.h5", split, database=None)
    shard_a = _write(tmp_path / "db-0.h5", split, query=False, database=slice(0, 25))
    shard_b = _write(
        tmp_path / "db-1.h5",
        split,
        query=False,
        database=slice(25, None),
        database_desc=_unit(15, 2, dim=16),
    )
    problem = _only_problem(
        [query, shard_a, shard_b], split, "has dimension 16, but /query/descriptors in q.h5"
    )
    assert problem.startswith(str(shard_b))


@pytest.mark.parametrize(
    "data, fragment",
    [
        pytest.param(np.ones((NUM_QUERIES, DIM), np.int32), "dtype int32", id="integer"),
        pytest.param(np.ones((NUM_QUERIES, DIM), np.float64), "dtype float64", id="float64"),
        pytest.param(
            np.zeros((NUM_QUERIES, DIM), dtype=[("a", "<f4"), ("b", "<i4")]), "dtype", id="compound"
        ),
    ],
)
def test_descriptor_dtype(tmp_path, split, data, fragment):
    path = _write(tmp_path / "f.h5", split)
    _replace_descriptors(path, "query", data)
    problem = _only_problem([path], split, fragment)
    assert "must be one of float32, float16" in problem


def test_object_descriptors(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    data = np.array([[b"x"] * DIM] * NUM_QUERIES, dtype=object)
    with h5py.File(path, "r+") as handle:
        del handle["query/descriptors"]
        handle["query"].create_dataset("descriptors", data=data, dtype=h5py.string_dtype("ascii"))
    _only_problem([path], split, "must be one of float32, float16")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values(tmp_path, split, bad):
    desc = _unit(NUM_QUERIES, 1)
    desc[4, 2] = bad
    path = _write(tmp_path / "f.h5", split, query_desc=desc)
    _only_problem([path], split, "1 /query rows hold NaN or Inf (first: 'q/04.jpg')")


def test_zero_rows(tmp_path, split):
    desc = _unit(NUM_DATABASE, 2)
    desc[[3, 9]] = 0
    path = _write(tmp_path / "f.h5", split, database_desc=desc)
    _only_problem(
        [path], split, "2 /database rows are all zero (first: 'db/003.jpg', 'db/009.jpg')"
    )


def test_unnormalised_is_a_warning(tmp_path, split):
    desc = _unit(NUM_DATABASE, 2) * 3
    path = _write(tmp_path / "f.h5", split, database_desc=desc)
    report = validate_features([path], split)
    assert report.ok
    assert report.warnings == (
        f"{path}: 40 of 40 /database rows are not L2-normalised (norms 3 to 3)",
    )


def test_float16_normalised_rows_pass(tmp_path, split):
    path = _write(tmp_path / "f.h5", split, dtype=np.float16)
    report = validate_features([path], split)
    assert report.ok and report.warnings == ()


def test_value_scan_can_be_skipped(tmp_path, split):
    desc = _unit(NUM_QUERIES, 1)
    desc[0] = np.nan
    path = _write(tmp_path / "f.h5", split, query_desc=desc)
    assert validate_features([path], split, check_values=False).ok


def test_names_not_strings(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    with h5py.File(path, "r+") as handle:
        del handle["database/names"]
        handle["database"].create_dataset("names", data=np.arange(NUM_DATABASE))
    _only_problem([path], split, "/database/names must be a 1-D string dataset")


def test_names_not_utf8(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    with h5py.File(path, "r+") as handle:
        del handle["query/names"]
        raw = np.array([b"\xff\xfe" + n.encode() for n in split.query_names], dtype=object)
        handle["query"].create_dataset("names", data=raw, dtype=h5py.string_dtype("utf-8"))
    _only_problem([path], split, "/query/names are not UTF-8 strings")


def test_names_count_differs_from_rows(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    with h5py.File(path, "r+") as handle:
        del handle["query/names"]
        handle["query"].create_dataset(
            "names", data=list(split.query_names[:-1]), dtype=h5py.string_dtype()
        )
    _only_problem([path], split, "/query/names has 5 entries but /query/descriptors has 6 rows")


def test_methods_disagree(tmp_path, split):
    query = _write(tmp_path / "q.h5", split, database=None, method="netvlad")
    shard = _write(tmp_path / "db.h5", split, query=False, method="sfrs")
    _only_problem(
        [query, shard], split, "files disagree on the method (q.h5: netvlad, db.h5: sfrs)"
    )


def test_check_features_raises_with_every_problem(tmp_path, split):
    desc = _unit(NUM_QUERIES, 1)
    desc[0] = np.nan
    path = _write(tmp_path / "f.h5", split, query_desc=desc, database=slice(0, 30))
    with pytest.raises(ValidationError) as info:
        check_features([path], split)
    assert info.value.path == str(path)
    assert len(info.value.problems) == 1  # values are not scanned once names are wrong
    assert "10 of 40 split database images have no descriptor" in info.value.problems[0]


# ----------------------------------------------------------------------------- CLI


def test_cli_valid_with_warning(tmp_path, split):
    register_split(split, tmp_path / "store")
    folder = tmp_path / "features"
    folder.mkdir()
    _write(folder / "q.h5", split, database=None)
    _write(
        folder / "db-0.h5",
        split,
        query=False,
        database=slice(0, 20),
        database_desc=_unit(20, 5) * 2,
    )
    _write(folder / "db-1.h5", split, query=False, database=slice(20, None))
    result = CliRunner().invoke(
        cli, ["validate", str(folder), "--split", "tiny", "--data-root", str(tmp_path / "store")]
    )
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "not L2-normalised" in result.output
    assert (
        f"ok: 3 file(s) valid for split tiny: {NUM_QUERIES} queries, {NUM_DATABASE} database rows"
        in result.output
    )


def test_cli_invalid_prints_one_line_per_problem(tmp_path, split):
    register_split(split, tmp_path / "store")
    path = _write(tmp_path / "f.h5", split, database=slice(0, 30), split_name="other")
    _replace_descriptors(path, "query", _unit(NUM_QUERIES, 1, dim=DIM + 2))
    result = CliRunner().invoke(
        cli, ["validate", str(path), "--split", "tiny", "--data-root", str(tmp_path / "store")]
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.output
    assert all(line.startswith(f"error: {path}: ") for line in errors)


def test_cli_unknown_split(tmp_path, split):
    path = _write(tmp_path / "f.h5", split)
    result = CliRunner().invoke(
        cli, ["validate", str(path), "--split", "tiny", "--data-root", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown split 'tiny'" in result.output


def test_partial_database_is_accepted_only_when_asked(tmp_path, split):
    query = _write(tmp_path / "q.h5", split, database=None)
    shard = _write(tmp_path / "db.h5", split, query=False, database=slice(10, 25))
    _only_problem([query, shard], split, "25 of 40 split database images have no descriptor")
    report = validate_features([query, shard], split, require_complete_database=False)
    assert report.ok, report.problems
    np.testing.assert_array_equal(report.database[0].rows, np.arange(10, 25))
    # Everything else is still checked: a name the split does not know, rows in two shards.
    other = _write(tmp_path / "other.h5", split, query=False, database=slice(20, 30))
    _only_problem([query, shard, other], split, "5 database rows are also in",
                  require_complete_database=False)
    stray = _write(tmp_path / "stray.h5", split, query=False,
                   database_names=["db/unknown.jpg"], database_desc=_unit(1, 3))
    _only_problem([query, stray], split, "1 database names are not in the split",
                  require_complete_database=False)
