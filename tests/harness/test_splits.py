"""Splits: built-in definitions, building from .mat files, prepare/import/list/show, checksums."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.errors import HarnessError
from harness.matfile import write_dbstruct
from harness.splits import (
    Split,
    builtin_definitions,
    get_split,
    import_split,
    list_splits,
    load_split,
    parse_split_definitions,
    prepare_builtin_splits,
    read_split_metadata,
    register_split,
    save_split,
    split_path,
)

BUILTINS = {
    "ams30k-train",
    "ams30k-val",
    "ams30k-test",
    "outdoor-ams",
    "indoor-ams-1",
    "indoor-ams-2",
    "pitts30k-test",
    "pitts250k-test",
    "tokyo247",
    "tokyo247-nonms",
}


def test_builtin_definitions():
    definitions = builtin_definitions()
    assert set(definitions) == BUILTINS
    assert definitions["tokyo247"].spatial_nms is True
    assert definitions["tokyo247-nonms"].mat_files == definitions["tokyo247"].mat_files
    assert not any(d.spatial_nms for n, d in definitions.items() if n != "tokyo247")
    for name in (
        "ams30k-train",
        "ams30k-val",
        "ams30k-test",
        "pitts30k-test",
        "pitts250k-test",
        "tokyo247",
    ):
        assert definitions[name].radius_m == 25.0
    for name in ("outdoor-ams", "indoor-ams-1", "indoor-ams-2"):
        assert definitions[name].radius_m == 50.0
        assert definitions[name].database_file == "raw/amsoutdoor_test.mat"
    assert definitions["indoor-ams-2"].queries_file == "raw/amsindoor2_test.mat"
    assert definitions["ams30k-val"].mat_files == ("raw/ams30k_val.mat",)
    assert all(d.description and d.query_root and d.database_root for d in definitions.values())


HEAD = 'format_version = 1\n[splits.a]\ndescription = "x"\n'


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            HEAD + 'mat = "a.mat"\nradius_m = 25.0\nradius = 3\n',
            "unknown keys ['radius']",
        ),
        ("format_version = 1\nextra = 2\n", "unknown top-level keys ['extra']"),
        ("format_version = 2\n", "format_version must be 1"),
        (
            HEAD + 'mat = "a.mat"\n',
            "radius_m is required",
        ),
        (HEAD + "radius_m = 25.0\n", "needs mat"),
        (
            HEAD + 'radius_m = 25.0\nmat = "a"\nqueries_mat = "b"\n',
            "either mat or",
        ),
        (
            HEAD + 'radius_m = 25.0\nmat = "a"\nno_positive = "skip"\n',
            "no_positive",
        ),
        ("format_version = [", "invalid TOML"),
        (
            HEAD + 'radius_m = 25.0\nmat = "a"\nspatial_nms = "yes"\n',
            "spatial_nms has the wrong type (str: 'yes')",
        ),
        (
            HEAD + 'radius_m = true\nmat = "a"\n',
            "radius_m has the wrong type",
        ),
        (
            HEAD + 'radius_m = 5\nmat = "a"\nrecall_ns = [1, 2.5]\n',
            "recall_ns has the wrong type",
        ),
    ],
)
def test_definition_errors(text, fragment):
    with pytest.raises(HarnessError) as info:
        parse_split_definitions(text, "defs.toml")
    assert fragment in info.value.message
    assert info.value.path == "defs.toml"


# ----------------------------------------------------------------------------- dataset fixture


def _grid(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 400, size=(count, 2)).astype(float) + [583000.0, 5800000.0]


def make_amsterdam_root(root, version="v5"):
    """A tiny dataset root in the Amsterdam-XXXL raw layout; names deliberately unsorted."""
    raw = root / "raw"
    db_names = [f"pano_{i:03d}.jpg" for i in range(60)][::-1]
    utm_db = _grid(60, 0)
    write_dbstruct(
        raw / "amsoutdoor_test.mat",
        which_set="test",
        db_images=db_names,
        utm_db=utm_db,
        q_images=["out_b.jpg", "out_a.jpg"],
        utm_q=utm_db[:2] + 3.0,
        version=version,
    )
    for number in (1, 2):
        utm_q = _grid(4, number)
        utm_q[0] = [0.0, 0.0]  # far from every database image: no positive
        write_dbstruct(
            raw / f"amsindoor{number}_test.mat",
            which_set="test",
            db_images=[],
            utm_db=np.zeros((0, 2)),
            q_images=[f"in{number}_{i}.jpg" for i in (3, 1, 2, 0)],
            utm_q=utm_q,
            version=version,
        )
    write_dbstruct(
        raw / "ams30k_val.mat",
        which_set="val",
        db_images=db_names[:20],
        utm_db=utm_db[:20],
        q_images=["v1.jpg"],
        utm_q=utm_db[:1],
        version=version,
    )
    (raw / "Amsterdam" / "images").mkdir(parents=True)
    (raw / "Amsterdam" / "queries").mkdir(parents=True)
    return {"db_names": db_names, "utm_db": utm_db}


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_prepare_with_prefix(tmp_path, version):
    made = make_amsterdam_root(tmp_path / "data", version)
    outcomes = prepare_builtin_splits(
        tmp_path / "data", prefix="synth-", data_root=tmp_path / "store"
    )
    registered = {o.name for o in outcomes if o.registered}
    assert registered == {
        "synth-outdoor-ams",
        "synth-indoor-ams-1",
        "synth-indoor-ams-2",
        "synth-ams30k-val",
    }
    skipped = {o.name: o.reason for o in outcomes if not o.registered}
    assert "ams30k_train.mat" in skipped["synth-ams30k-train"]
    assert list_splits(tmp_path / "store") == sorted(registered)

    indoor = get_split("synth-indoor-ams-1", tmp_path / "store")
    assert indoor.query_names == ("in1_0.jpg", "in1_1.jpg", "in1_2.jpg", "in1_3.jpg")  # sorted
    assert indoor.database_names == tuple(sorted(made["db_names"]))  # the Outdoor-Ams database
    assert indoor.radius_m == 50.0 and indoor.spatial_nms is False
    # positions follow their names through the sort
    order = np.argsort(made["db_names"])
    np.testing.assert_array_equal(indoor.database_utm, made["utm_db"][order])
    assert indoor.query_root == str((tmp_path / "data" / "raw" / "Amsterdam" / "queries").resolve())
    outdoor = get_split("synth-outdoor-ams", tmp_path / "store")
    assert outdoor.database_names == indoor.database_names
    assert outdoor.query_names == ("out_a.jpg", "out_b.jpg")


def test_prepare_without_prefix_and_env_data_root(tmp_path, monkeypatch):
    make_amsterdam_root(tmp_path / "data")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "env-store"))
    outcomes = prepare_builtin_splits(tmp_path / "data", names=["indoor-ams-2"])
    assert [(o.name, o.registered) for o in outcomes] == [("indoor-ams-2", True)]
    assert outcomes[0].path == tmp_path / "env-store" / "splits" / "indoor-ams-2.split.npz"
    assert get_split("indoor-ams-2").num_queries == 4


def test_prepare_rejects_missing_root_and_unknown_builtin(tmp_path):
    with pytest.raises(HarnessError, match="not a directory"):
        prepare_builtin_splits(tmp_path / "absent")
    with pytest.raises(HarnessError, match="did you mean tokyo247"):
        prepare_builtin_splits(tmp_path, names=["tokio247"])


def test_import_single_and_separate_mats(tmp_path):
    make_amsterdam_root(tmp_path / "data")
    raw = tmp_path / "data" / "raw"
    store = tmp_path / "store"
    path = import_split("val-copy", mat=raw / "ams30k_val.mat", data_root=store)
    split = load_split(path)
    assert split.radius_m == 25.0  # the file's posDistThr
    assert split.num_queries == 1 and split.num_database == 20
    import_split(
        "mixed",
        queries_mat=raw / "amsindoor1_test.mat",
        database_mat=raw / "amsoutdoor_test.mat",
        radius_m=10.0,
        no_positive="exclude",
        spatial_nms=True,
        data_root=store,
    )
    mixed = get_split("mixed", store)
    assert (mixed.num_queries, mixed.num_database, mixed.radius_m) == (4, 60, 10.0)
    assert mixed.no_positive == "exclude" and mixed.spatial_nms
    with pytest.raises(HarnessError, match="not both"):
        import_split(
            "bad", mat=raw / "ams30k_val.mat", queries_mat=raw / "ams30k_val.mat", data_root=store
        )


def test_import_rejects_duplicate_names(tmp_path):
    write_dbstruct(
        tmp_path / "dup.mat",
        which_set="test",
        db_images=["a.jpg", "b.jpg", "a.jpg"],
        utm_db=np.zeros((3, 2)),
        q_images=["q.jpg"],
        utm_q=np.zeros((1, 2)),
    )
    with pytest.raises(HarnessError) as info:
        import_split("dup", mat=tmp_path / "dup.mat", data_root=tmp_path / "store")
    assert "'a.jpg' is listed more than once" in info.value.message
    assert info.value.path == str(tmp_path / "dup.mat")
    assert list_splits(tmp_path / "store") == []


def _tiny_split(**changes) -> Split:
    fields = dict(
        name="tiny",
        query_names=("q0.jpg", "q1.jpg"),
        database_names=("d0.jpg", "d1.jpg", "d2.jpg"),
        query_utm=np.array([[0.0, 0.0], [1000.0, 0.0]]),
        database_utm=np.array([[25.0, 0.0], [0.0, 30.0], [3.0, 4.0]]),
        radius_m=25.0,
    )
    fields.update(changes)
    return Split(**fields)


def test_checksum_is_stable():
    # Golden value: changing the canonical content or its hashing breaks every stored result.
    assert (
        _tiny_split().sha256 == "d47b6a24d531aa53a1239a9bb6d1bd7ac97ba6c9d2fee5e9309f17391deb76a5"
    )


def test_checksum_covers_content_not_paths(tmp_path):
    base = _tiny_split()
    assert _tiny_split(query_root="/elsewhere", description="other").sha256 == base.sha256
    assert _tiny_split(radius_m=50.0).sha256 != base.sha256
    moved = base.database_utm.copy()
    moved[0, 0] += 0.01
    assert _tiny_split(database_utm=moved).sha256 != base.sha256
    assert load_split(save_split(base, tmp_path / "t.split.npz")).sha256 == base.sha256


def test_saved_metadata_counts_queries_without_positive(tmp_path):
    path = save_split(_tiny_split(), tmp_path / "t.split.npz")
    meta = read_split_metadata(path)
    assert meta["num_queries_without_positive"] == 1
    assert (meta["num_queries"], meta["num_database"]) == (2, 3)
    assert _tiny_split().positives[0].tolist() == [0, 2]  # 25 m exactly is a positive


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "white space", "x.split.npz"])
def test_invalid_split_names(name):
    with pytest.raises(HarnessError, match="invalid split name"):
        _tiny_split(name=name)


def test_corrupt_split_file(tmp_path):
    path = tmp_path / "bad.split.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(HarnessError, match="not a readable split file"):
        load_split(path)


# ----------------------------------------------------------------------------- CLI


def _invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_cli_prepare_list_show(tmp_path):
    make_amsterdam_root(tmp_path / "data")
    store = tmp_path / "store"
    result = _invoke(
        "splits", "prepare", "--root", tmp_path / "data", "--prefix", "synth-", "--data-root", store
    )
    assert result.exit_code == 0, result.output
    assert "registered synth-indoor-ams-1" in result.output
    assert "skipped    synth-tokyo247: missing" in result.output

    result = _invoke("splits", "list", "--data-root", store)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(rows) == {
        "synth-outdoor-ams",
        "synth-indoor-ams-1",
        "synth-indoor-ams-2",
        "synth-ams30k-val",
    }
    name, queries, database, radius, no_positive, nms, checksum = rows["synth-indoor-ams-1"]
    split = get_split("synth-indoor-ams-1", store)
    assert (int(queries), int(database), radius) == (4, 60, "50m")
    assert int(no_positive) == split.positives.num_without_positive >= 1
    assert checksum == split.sha256[:12]

    result = _invoke("splits", "show", "synth-indoor-ams-1", "--data-root", store)
    assert result.exit_code == 0, result.output
    assert split.sha256 in result.output
    assert (
        f"no positive    {split.positives.num_without_positive} queries, policy: miss"
        in result.output
    )
    assert "raw/amsindoor1_test.mat:qImage; raw/amsoutdoor_test.mat:dbImage" in result.output


def test_cli_import_and_errors(tmp_path):
    make_amsterdam_root(tmp_path / "data")
    raw = tmp_path / "data" / "raw"
    store = tmp_path / "store"
    result = _invoke(
        "splits",
        "import",
        "--name",
        "custom",
        "--queries-mat",
        raw / "amsindoor2_test.mat",
        "--database-mat",
        raw / "amsoutdoor_test.mat",
        "--radius-m",
        "30",
        "--spatial-nms",
        "--no-positive",
        "exclude",
        "--recall-ns",
        "1,5",
        "--data-root",
        store,
    )
    assert result.exit_code == 0, result.output
    split = get_split("custom", store)
    assert (split.radius_m, split.spatial_nms, split.no_positive, split.recall_ns) == (
        30.0,
        True,
        "exclude",
        (1, 5),
    )

    result = _invoke(
        "splits",
        "import",
        "--name",
        "x",
        "--queries-mat",
        raw / "amsindoor2_test.mat",
        "--data-root",
        store,
    )
    assert result.exit_code == 2 and "give --mat, or both" in result.output

    result = _invoke("splits", "show", "custum", "--data-root", store)
    assert result.exit_code == 2
    assert "unknown split 'custum'" in result.output and "did you mean custom" in result.output

    (raw / "broken.mat").write_text("garbage" * 30)
    result = _invoke(
        "splits", "import", "--name", "y", "--mat", raw / "broken.mat", "--data-root", store
    )
    assert result.exit_code == 2
    # stderr also holds the command's log ("reading ..."); the error is its one last line
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.stderr.splitlines()[-1] == error
    assert error.startswith(f"error: {raw / 'broken.mat'}: ")
    assert "not a MATLAB v5 or v7.3 .mat file" in error


def test_cli_list_empty(tmp_path):
    result = _invoke("splits", "list", "--data-root", tmp_path)
    assert result.exit_code == 0 and "no splits registered" in result.output


def test_register_split_overwrites_atomically(tmp_path):
    register_split(_tiny_split(), tmp_path)
    register_split(_tiny_split(radius_m=40.0), tmp_path)
    assert get_split("tiny", tmp_path).radius_m == 40.0
    assert [p.name for p in split_path("tiny", tmp_path).parent.iterdir()] == ["tiny.split.npz"]
