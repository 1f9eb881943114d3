"""NetVLAD dbStruct .mat files: round trips (v5, v7.3, timestamp variant), foreign files, errors."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import scipy.io

from harness.errors import HarnessError
from harness.matfile import read_dbstruct, write_dbstruct

DB_NAMES = ["003/b_ü.jpg", "001/a.jpg", "002/c d.jpg", "010/日本😀.png", "004/e.jpg"]
Q_NAMES = ["q/2.jpg", "q/1.jpg", "q/3-äö.jpg"]


def _positions(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1000, size=(count, 2)) + [583000.0, 5800000.0]


@pytest.mark.parametrize("version", ["v5", "v7.3"])
@pytest.mark.parametrize("timestamps", [False, True], ids=["standard", "timestamp"])
def test_round_trip(tmp_path, version, timestamps):
    utm_db, utm_q = _positions(len(DB_NAMES), 0), _positions(len(Q_NAMES), 1)
    extra = {}
    if timestamps:
        extra = dict(
            db_timestamps=np.arange(len(DB_NAMES)) + 0.5, q_timestamps=np.arange(len(Q_NAMES)) * 2.0
        )
    path = write_dbstruct(
        tmp_path / "x.mat",
        which_set="test",
        db_images=DB_NAMES,
        utm_db=utm_db,
        q_images=Q_NAMES,
        utm_q=utm_q,
        pos_dist_thr=25.0,
        version=version,
        **extra,
    )
    struct = read_dbstruct(path)
    assert struct.mat_version == version
    assert struct.variant == ("timestamp" if timestamps else "standard")
    assert struct.which_set == "test"
    assert struct.db_images == tuple(DB_NAMES)  # file order kept; sorting is the split's job
    assert struct.q_images == tuple(Q_NAMES)
    np.testing.assert_array_equal(struct.utm_db, utm_db)
    np.testing.assert_array_equal(struct.utm_q, utm_q)
    assert struct.pos_dist_thr == 25.0 and struct.pos_dist_sq_thr == 625.0
    if timestamps:
        np.testing.assert_array_equal(struct.db_timestamps, extra["db_timestamps"])
        np.testing.assert_array_equal(struct.q_timestamps, extra["q_timestamps"])
    else:
        assert struct.db_timestamps is None and struct.q_timestamps is None


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_round_trip_without_queries(tmp_path, version):
    path = write_dbstruct(
        tmp_path / "x.mat",
        which_set="train",
        db_images=["a.jpg"],
        utm_db=[[1.0, 2.0]],
        q_images=[],
        utm_q=np.zeros((0, 2)),
        version=version,
    )
    struct = read_dbstruct(path)
    assert struct.q_images == () and struct.utm_q.shape == (0, 2)
    assert struct.db_images == ("a.jpg",)


def test_v73_file_is_laid_out_like_matlab(tmp_path):
    path = write_dbstruct(
        tmp_path / "x.mat",
        which_set="test",
        db_images=DB_NAMES,
        utm_db=_positions(5, 0),
        q_images=Q_NAMES,
        utm_q=_positions(3, 1),
        version="v7.3",
    )
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as handle:
        group = handle["dbStruct"]
        assert group.attrs["MATLAB_class"] == b"struct"
        fields = [b"".join(f).decode() for f in group.attrs["MATLAB_fields"]]
        assert fields[:5] == ["whichSet", "dbImageFns", "utmDb", "qImageFns", "utmQ"]
        cell = group["dbImageFns"]
        assert cell.attrs["MATLAB_class"] == b"cell" and cell.shape == (1, 5)
        element = handle[cell[0, 0]]
        assert element.name.startswith("/#refs#/") and element.dtype == np.uint16
        assert element[()].reshape(-1).tobytes().decode("utf-16-le") == DB_NAMES[0]
        assert group["utmDb"].shape == (5, 2)  # MATLAB 2 x N, column-major


def _netvlad_record(fields: dict) -> np.ndarray:
    record = np.zeros((1, 1), dtype=[(name, object) for name in fields])
    for name, value in fields.items():
        record[0, 0][name] = value
    return record


def _cell(names):
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = [np.array([n]) for n in names]
    return cell


def _netvlad_fields(db_names=DB_NAMES, q_names=Q_NAMES, **overrides) -> dict:
    fields = {
        "whichSet": "val",
        "dbImageFns": _cell(db_names),
        "utmDb": _positions(len(db_names), 0).T,
        "qImageFns": _cell(q_names),
        "utmQ": _positions(len(q_names), 1).T,
        "numImages": np.array([[len(db_names)]], dtype=np.float64),
        "numQueries": np.array([[len(q_names)]], dtype=np.float64),
        "posDistThr": np.array([[25.0]]),
        "posDistSqThr": np.array([[625.0]]),
        "nonTrivPosDistSqThr": np.array([[100.0]]),
    }
    fields.update(overrides)
    return fields


def test_reads_file_written_directly_with_scipy(tmp_path):
    """A file laid out by hand the way NetVLAD's MATLAB code saves it (not by our writer)."""
    path = tmp_path / "pitts30k_val.mat"
    scipy.io.savemat(path, {"dbStruct": _netvlad_record(_netvlad_fields())})
    struct = read_dbstruct(path)
    assert struct.variant == "standard" and struct.which_set == "val"
    assert struct.db_images == tuple(DB_NAMES) and struct.q_images == tuple(Q_NAMES)
    np.testing.assert_array_equal(struct.utm_db, _positions(5, 0))
    assert struct.non_triv_pos_dist_sq_thr == 100.0


def test_reads_uint8_counts_and_other_variable_name(tmp_path):
    fields = _netvlad_fields(numImages=np.array([[5]], dtype=np.uint8))
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"anotherName": _netvlad_record(fields), "note": "hello"})
    assert read_dbstruct(path).num_db == 5


def _handmade_v73(path, names, *, libver, compact_index=None, chunked_index=None):
    """A MATLAB-like v7.3 file written with plain h5py, not our writer."""
    with h5py.File(path, "w", libver=libver, userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        group = handle.create_group("dbStruct")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        order = ["whichSet", "dbImage", "utmDb", "qImage", "utmQ", "numDb", "numQ", "posDistThr"]
        vlen = np.empty(len(order), dtype=h5py.vlen_dtype(np.dtype("S1")))
        for i, name in enumerate(order):
            vlen[i] = np.array(list(name), dtype="S1")
        group.attrs["MATLAB_fields"] = vlen

        def char(parent, key, text, layout=None):
            codes = np.frombuffer(text.encode("utf-16-le"), "<u2").reshape(-1, 1)
            if layout is None:
                dataset = parent.create_dataset(key, data=codes)
            elif layout == "chunked":
                dataset = parent.create_dataset(key, data=codes, chunks=(1, 1))
            else:  # compact: the data sit inside the object header
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_layout(h5py.h5d.COMPACT)
                space = h5py.h5s.create_simple(codes.shape)
                dsid = h5py.h5d.create(
                    parent.id, key.encode(), h5py.h5t.STD_U16LE, space, dcpl=dcpl
                )
                dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(codes))
                dataset = parent[key]
            dataset.attrs["MATLAB_class"] = np.bytes_("char")
            return dataset

        def cell(key, texts):
            references = np.empty((1, len(texts)), dtype=h5py.ref_dtype)
            for i, text in enumerate(texts):
                layout = (
                    "compact" if i == compact_index else "chunked" if i == chunked_index else None
                )
                references[0, i] = char(refs, f"{key}{i}", text, layout).ref
            group.create_dataset(key, data=references).attrs["MATLAB_class"] = np.bytes_("cell")

        def double(key, value):
            group.create_dataset(key, data=np.atleast_2d(value).T).attrs["MATLAB_class"] = (
                np.bytes_("double")
            )

        char(group, "whichSet", "test")
        cell("dbImage", names)
        double("utmDb", _positions(len(names), 0).T)
        cell("qImage", ["q.jpg"])
        double("utmQ", _positions(1, 1).T)
        double("numDb", float(len(names)))
        double("numQ", 1.0)
        double("posDistThr", 25.0)


@pytest.mark.parametrize("libver", ["earliest", "latest"], ids=["header-v1", "header-v2"])
@pytest.mark.parametrize("special, through_h5py", [(None, 0), ("compact", 0), ("chunked", 1)])
def test_reads_handmade_v73(tmp_path, caplog, libver, special, through_h5py):
    names = [f"img_{i:03d}_ß.jpg" for i in range(40)]
    path = tmp_path / "hand.mat"
    _handmade_v73(
        path,
        names,
        libver=libver,
        compact_index=7 if special == "compact" else None,
        chunked_index=7 if special == "chunked" else None,
    )
    with caplog.at_level(logging.DEBUG, logger="harness.matfile"):
        struct = read_dbstruct(path)
    # The bulk header parser reads every plain element; only the chunked one needs h5py.
    fallback_logs = [
        r.getMessage() for r in caplog.records if "read through h5py" in r.getMessage()
    ]
    assert fallback_logs == ([f"{path}: 1 of 40 names read through h5py"] if through_h5py else [])
    assert struct.mat_version == "v7.3" and struct.variant == "standard"
    assert struct.db_images == tuple(names) and struct.q_images == ("q.jpg",)
    assert struct.pos_dist_sq_thr is None
    np.testing.assert_array_equal(struct.utm_db, _positions(40, 0))


# ----------------------------------------------------------------------------- errors


def _expect_error(path, fragment: str):
    with pytest.raises(HarnessError) as info:
        read_dbstruct(path)
    assert info.value.path == str(path)
    assert fragment in info.value.message, info.value.message


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.mat", "not found")


def test_not_a_mat_file(tmp_path):
    path = tmp_path / "x.mat"
    path.write_text("just text, not MATLAB\n" * 20)
    _expect_error(path, "not a MATLAB")


def test_no_struct_variable(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"a": np.ones(3), "b": np.zeros(2)})
    _expect_error(path, "no dbStruct struct")


def test_too_few_fields(tmp_path):
    fields = dict(list(_netvlad_fields().items())[:5])
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"dbStruct": _netvlad_record(fields)})
    _expect_error(path, "has 5 fields")


def test_count_mismatch(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(
        path, {"dbStruct": _netvlad_record(_netvlad_fields(numImages=np.array([[7.0]])))}
    )
    _expect_error(path, "numDb is 7 but dbImage holds 5 names")


def test_position_shape_mismatch(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"dbStruct": _netvlad_record(_netvlad_fields(utmDb=np.zeros((2, 4))))})
    _expect_error(path, "should be 2 x 5")


def test_field_of_wrong_type(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"dbStruct": _netvlad_record(_netvlad_fields(qImageFns="not a cell"))})
    _expect_error(path, "field 3")


def test_non_finite_positions(tmp_path):
    utm = _positions(5, 0).T.copy()
    utm[0, 2] = np.nan
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"dbStruct": _netvlad_record(_netvlad_fields(utmDb=utm))})
    _expect_error(path, "non-finite")


def test_v73_struct_without_field_order(tmp_path):
    path = write_dbstruct(
        tmp_path / "x.mat",
        which_set="test",
        db_images=DB_NAMES,
        utm_db=_positions(5, 0),
        q_images=Q_NAMES,
        utm_q=_positions(3, 1),
        version="v7.3",
    )
    with h5py.File(path, "r+") as handle:
        del handle["dbStruct"].attrs["MATLAB_fields"]
    _expect_error(path, "MATLAB_fields")


def test_v73_cell_element_not_char(tmp_path):
    path = write_dbstruct(
        tmp_path / "x.mat",
        which_set="test",
        db_images=DB_NAMES,
        utm_db=_positions(5, 0),
        q_images=Q_NAMES,
        utm_q=_positions(3, 1),
        version="v7.3",
    )
    with h5py.File(path, "r+") as handle:
        target = handle[handle["dbStruct/dbImageFns"][0, 2]]
        target.attrs["MATLAB_class"] = np.bytes_("double")
        target.attrs["MATLAB_empty"] = np.uint8(1)  # forces the h5py path for this element
    _expect_error(path, "not a string")


def test_writer_rejects_mismatched_positions(tmp_path):
    with pytest.raises(ValueError, match="utm_db must have shape"):
        write_dbstruct(
            tmp_path / "x.mat",
            which_set="test",
            db_images=["a"],
            utm_db=np.zeros((2, 2)),
            q_images=[],
            utm_q=np.zeros((0, 2)),
        )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_empty_and_nul_names_survive(tmp_path, version):
    # v7.3: an empty string (MATLAB_empty) and a NUL (our bulk separator) go element-wise.
    # (scipy turns NUL into a space in v5 files; irrelevant for real image names.)
    names = ["a.jpg", "", "b\0c.jpg" if version == "v7.3" else "bc.jpg", "d.jpg"]
    path = write_dbstruct(
        tmp_path / "x.mat",
        which_set="test",
        db_images=names,
        utm_db=np.zeros((4, 2)),
        q_images=["q.jpg"],
        utm_q=np.zeros((1, 2)),
        version=version,
    )
    assert read_dbstruct(path).db_images == tuple(names)


def test_bulk_reader_blocks_and_fallback_positions(tmp_path, monkeypatch):
    from harness.matfile.v73 import CharCellReader

    monkeypatch.setattr(CharCellReader, "BLOCK", 8)  # 40 names: 5 blocks
    names = [f"name-{i:02d}-ø.jpg" for i in range(40)]
    _handmade_v73(tmp_path / "h.mat", names, libver="earliest", chunked_index=13, compact_index=30)
    assert read_dbstruct(tmp_path / "h.mat").db_images == tuple(names)


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_writer_is_deterministic(tmp_path, version):
    def write(name):
        return write_dbstruct(
            tmp_path / name,
            which_set="test",
            db_images=DB_NAMES,
            utm_db=_positions(5, 0),
            q_images=Q_NAMES,
            utm_q=_positions(3, 1),
            version=version,
        ).read_bytes()

    first = write("a.mat")
    assert first.startswith(b"MATLAB ")
    assert b"Created on" not in first[:116]
    assert write("b.mat") == first
