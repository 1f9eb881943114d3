"""The bad-input corpus: every kind of broken input a user can hand the ``harness`` CLI.

Each case builds its input in ``tmp_path`` (real HDF5 files, ``.mat`` files, checkpoints,
images, records), runs the real command in-process (``click``'s ``CliRunner``) and checks:

* exit code 2 and no traceback (a ``HarnessError``, not a crash);
* exactly one ``error:`` line on stderr, naming the file and the problem: either the exact
  line, or (``exact=False``) a stable, specific part of it (``<path>: <problem>``) where the
  rest comes from h5py/torch/PIL and may change between their versions;
* nothing written: every file under ``tmp_path`` is as it was before (same set of files,
  sizes and modification times, no directory added), and no temporary file is left.

Crashes found by the fuzzer (``test_hardening_fuzz.py``) are regression cases here too; the
ones that crashed the whole process (scipy's v5 reader) run in a subprocess so that a
regression fails one test instead of killing the session.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from badinputs import (
    DIM,
    directories,
    run_cli,
    snapshot,
    subprocess_env,
    temp_files,
    unit_rows,
    write_valid_features,
)

from harness.features import write_features

SPLIT = "synth-outdoor-ams"  # 12 queries, 96 database images
OTHER_SPLIT = "synth-ams30k-test"
SMALL_SPLIT = "synth-ams30k-test"  # 6 queries, 24 database images (extraction cases)


class PickleBomb:
    """Unpickling this creates ``marker``: proof that nothing was unpickled if it is absent."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@dataclass
class Ctx:
    """What a case builds from: the tiny city and a fresh folder."""

    city: object
    root: Path

    @property
    def data_root(self) -> Path:
        return self.city.data_root

    @property
    def marker(self) -> Path:
        return self.root / "UNPICKLED"

    def split(self, name=SPLIT):
        from harness.splits import get_split

        return get_split(name, self.data_root)

    def features(self, shards=1, **kwargs) -> list[Path]:
        return write_valid_features(self.split(), self.root / "features", shards=shards, **kwargs)

    def eval(self, *paths) -> list[str]:
        argv = ["eval"]
        for path in paths:
            argv += ["--features", str(path)]
        return argv + ["--split", SPLIT, "--data-root", str(self.data_root),
                       "--json", str(self.root / "out" / "result.json"), "--no-progress"]

    def submit(self, *paths, method="m1", extra=()) -> list[str]:
        return ["submit", *map(str, paths), "--split", SPLIT, "--data-root", str(self.data_root),
                "--method-name", method, "--results", str(self.root / "results"), *extra]


@dataclass
class Expect:
    argv: list
    message: str  # after "error: " (or "Error: " for click usage errors)
    exact: bool = True
    usage: bool = False  # a click usage error ("Error: ...")
    after: Callable[[], None] | None = None  # extra checks
    several: bool = False  # commands that list every problem (validate, leaderboard check)


@dataclass
class Case:
    group: str
    name: str
    build: Callable[[Ctx], Expect]
    marks: tuple = field(default=())


CASES: list[Case] = []


def case(group: str, name: str, *marks):
    def register(build):
        CASES.append(Case(group, name, build, marks))
        return build

    return register


def replace_dataset(path: Path, name: str, data=None, **kwargs) -> None:
    with h5py.File(path, "r+") as handle:
        del handle[name]
        handle.create_dataset(name, data=data, **kwargs)


# ============================================================================ feature files


@case("features", "truncated database shard")
def _(ctx):
    query, database = ctx.features()
    data = database.read_bytes()
    database.write_bytes(data[: len(data) // 2])
    return Expect(ctx.eval(query, database),
                  f"{database}: not a readable HDF5 file (Unable to synchronously open file "
                  f"(truncated file: eof = {len(data) // 2},", exact=False)


@case("features", "zero-byte feature file")
def _(ctx):
    query, database = ctx.features()
    database.write_bytes(b"")
    return Expect(ctx.eval(query, database),
                  f"{database}: not a readable HDF5 file (Unable to synchronously open file "
                  "(file signature not found))", exact=False)


@case("features", "a JPEG renamed .h5")
def _(ctx):
    query, database = ctx.features()
    image = next((ctx.city.root / "raw/Amsterdam/queries").rglob("*.jpg"))
    database.write_bytes(image.read_bytes())
    return Expect(ctx.eval(query, database),
                  f"{database}: not a readable HDF5 file (Unable to synchronously open file "
                  "(file signature not found))", exact=False)


@case("features", "wrong dataset name (/database/features)")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        handle.move("database/descriptors", "database/features")
    return Expect(ctx.eval(query, database), f"{database}: /database/descriptors is missing",
                  exact=False)


@case("features", "wrong group name (/db)")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        handle.move("database", "db")
    return Expect(ctx.eval(query, database), f"{database}: holds neither /query nor /database",
                  exact=False)


@case("features", "query and database dimensions differ")
def _(ctx):
    query, database = ctx.features()
    split = ctx.split()
    write_features(database, split=SPLIT, method="hardening",
                   database=(list(split.database_names), unit_rows(split.num_database, 16)))
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors has dimension 16, but /query/descriptors "
                  "in query.h5 has 8")


@case("features", "1-D descriptors")
def _(ctx):
    query, database = ctx.features()
    replace_dataset(database, "database/descriptors", np.ones(96, np.float32))
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors must be 2-D, has shape (96,)", exact=False)


@case("features", "descriptors stored as a group (validate)")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        del handle["database/descriptors"]
        handle.create_group("database/descriptors")
    return Expect(["validate", str(query), str(database), "--split", SPLIT,
                   "--data-root", str(ctx.data_root)],
                  f"{database}: /database/descriptors must be a dataset, is a Group", exact=False,
                  several=True)  # validate prints one line per problem


@case("features", "descriptors stored as a group (eval)")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        del handle["database/descriptors"]
        handle.create_group("database/descriptors")
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors must be a dataset, is a Group", exact=False)


@case("features", "NaN in a database row")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        handle["database/descriptors"][3, 2] = np.nan
    return Expect(ctx.eval(query, database),
                  f"{database}: 1 /database rows hold NaN or Inf (first at stored row 3)")


@case("features", "Inf in a float16 query row")
def _(ctx):
    query, database = ctx.features(dtype="float16")
    with h5py.File(query, "r+") as handle:
        handle["query/descriptors"][4, 0] = np.inf
    return Expect(ctx.eval(query, database),
                  f"{query}: 1 /query rows hold NaN or Inf (first at stored row 4)")


@case("features", "NaN in a chunked, compressed dataset")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r") as handle:
        data = handle["database/descriptors"][()]
    data[9, 1] = np.nan
    replace_dataset(database, "database/descriptors", data, chunks=(8, DIM), compression="gzip")
    return Expect(ctx.eval(query, database),
                  f"{database}: 1 /database rows hold NaN or Inf (first at stored row 9)")


@case("features", "an all-zero row")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        handle["database/descriptors"][5] = 0
    return Expect(ctx.eval(query, database),
                  f"{database}: 1 /database rows are all zero (first at stored row 5)")


@case("features", "a name given twice")
def _(ctx):
    query, database = ctx.features()
    names = list(ctx.split().database_names)
    names[1] = names[0]
    write_features(database, split=SPLIT, method="hardening", database=(names, unit_rows(96)))
    return Expect(ctx.eval(query, database),
                  f"{database}: 1 database names occur more than once (first: {names[0]!r})",
                  exact=False)


@case("features", "query file of another split")
def _(ctx):
    query, database = ctx.features()
    other = ctx.split(OTHER_SPLIT)
    write_features(query, split=OTHER_SPLIT, method="hardening",
                   query=(list(other.query_names), unit_rows(other.num_queries)))
    return Expect(ctx.eval(query, database),
                  f"{query}: was written for split {OTHER_SPLIT!r}, not {SPLIT!r}", exact=False)


@case("features", "a name the split does not have")
def _(ctx):
    query, database = ctx.features()
    names = list(ctx.split().database_names)
    names[4] = "elsewhere/x.jpg"
    write_features(database, split=SPLIT, method="hardening", database=(names, unit_rows(96)))
    return Expect(ctx.eval(query, database),
                  f"{database}: 1 database names are not in the split (first: 'elsewhere/x.jpg')",
                  exact=False)


def _pickled_rows(ctx, count):
    blob = pickle.dumps(PickleBomb(ctx.marker))
    return np.array([[np.void(blob)] * DIM] * count)


@case("features", "descriptors as opaque pickled bytes")
def _(ctx):
    query, database = ctx.features()
    rows = _pickled_rows(ctx, 96)
    replace_dataset(database, "database/descriptors", rows)
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors has dtype {rows.dtype}; must be one of "
                  "float32, float16", after=lambda: not_unpickled(ctx))


@case("features", "names as opaque pickled bytes")
def _(ctx):
    query, database = ctx.features()
    blob = pickle.dumps(PickleBomb(ctx.marker))
    names = np.array([np.void(blob)] * 96)
    replace_dataset(database, "database/names", names)
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/names must be a 1-D string dataset, has dtype "
                  f"{names.dtype} and shape (96,)", after=lambda: not_unpickled(ctx))


@case("features", "descriptors as an object (string) array")
def _(ctx):
    query, database = ctx.features()
    replace_dataset(database, "database/descriptors", np.array([["0.5"] * DIM] * 96, dtype=object),
                    dtype=h5py.string_dtype())
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors has dtype object; must be one of "
                  "float32, float16")


@case("features", "integer descriptors")
def _(ctx):
    query, database = ctx.features()
    replace_dataset(database, "database/descriptors", np.ones((96, DIM), np.int32))
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors has dtype int32; must be one of "
                  "float32, float16")


@case("features", "float64 descriptors")
def _(ctx):
    query, database = ctx.features()
    replace_dataset(database, "database/descriptors", unit_rows(96).astype(np.float64))
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors has dtype float64; must be one of "
                  "float32, float16")


@case("features", "an empty database part (0 rows)")
def _(ctx):
    query, database = ctx.features()
    write_features(database, split=SPLIT, method="hardening",
                   database=([], np.zeros((0, DIM), np.float32)))
    return Expect(ctx.eval(query, database),
                  f"{database}: 96 of 96 split database images have no descriptor (first: ",
                  exact=False)


@case("features", "rows declared but never stored")
def _(ctx):
    query, database = ctx.features()
    replace_dataset(database, "database/descriptors", shape=(96, DIM), dtype=np.float32)
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/descriptors holds 96 x 8 values but only 0 of their "
                  "3072 bytes are stored (truncated, or rows never written)", exact=False)


@case("features", "a database shard missing")
def _(ctx):
    query, *shards = ctx.features(shards=3)
    return Expect(ctx.eval(query, shards[0], shards[2]),
                  f"{shards[0]} (+1 more files): 32 of 96 split database images have no "
                  "descriptor (first: ", exact=False)


@case("features", "two database shards overlap")
def _(ctx):
    query, *shards = ctx.features(shards=3)
    names = list(ctx.split().database_names)[:40]
    write_features(shards[1], split=SPLIT, method="hardening", database=(names, unit_rows(40)))
    return Expect(ctx.eval(query, *shards),
                  f"{shards[1]}: 32 database rows are also in {shards[0]} (first: ", exact=False)


@case("features", "a huge string attribute")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(query, "r+") as handle:
        handle.attrs["notes"] = "x" * 200_000
    return Expect(ctx.eval(query, database),
                  f"{query}: attribute 'notes' is larger than 65536 characters", exact=False)


@case("features", "a huge array attribute")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(query, "r+", libver="latest") as handle:
        handle.attrs["blob"] = np.zeros(2_000_000)
    return Expect(ctx.eval(query, database),
                  f"{query}: attribute 'blob' is larger than 65536 bytes", exact=False)


@case("features", "fewer names than rows")
def _(ctx):
    query, database = ctx.features()
    names = np.array(list(ctx.split().database_names)[:-1], dtype=object)
    replace_dataset(database, "database/names", names, dtype=h5py.string_dtype())
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/names has 95 entries but /database/descriptors has "
                  "96 rows")


@case("features", "names that are not UTF-8")
def _(ctx):
    query, database = ctx.features()
    names = np.array([b"\xff\xfe" + n.encode() for n in ctx.split().database_names], dtype="S")
    replace_dataset(database, "database/names", names)
    return Expect(ctx.eval(query, database),
                  f"{database}: /database/names are not UTF-8 strings (", exact=False)


@case("features", "format_version missing")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(query, "r+") as handle:
        del handle.attrs["format_version"]
    return Expect(ctx.eval(query, database),
                  f"{query}: root attribute format_version is missing or invalid (None)",
                  exact=False)


@case("features", "format_version from the future")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(query, "r+") as handle:
        handle.attrs["format_version"] = 2
    return Expect(ctx.eval(query, database),
                  f"{query}: format_version 2 is not supported (this harness reads 1)",
                  exact=False)


@case("features", "files of two methods")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        handle.attrs["method"] = "other"
    return Expect(ctx.eval(query, database),
                  f"{query} (+1 more files): files disagree on the method (query.h5: hardening, "
                  "database-0.h5: other)")


@case("features", "the same file given twice")
def _(ctx):
    query, database = ctx.features()
    return Expect(ctx.eval(query, database, database), f"{database}: given more than once")


@case("features", "a feature file that does not exist")
def _(ctx):
    query, _ = ctx.features()
    missing = ctx.root / "features" / "absent.h5"
    return Expect(ctx.eval(query, missing), f"{missing}: feature file not found", exact=False)


@case("features", "a folder without .h5 files")
def _(ctx):
    query, _ = ctx.features()
    empty = ctx.root / "empty-folder"
    empty.mkdir()
    return Expect(ctx.eval(query, empty), f"{empty}: directory holds no .h5 feature files")


@case("features", "no query part")
def _(ctx):
    _, database = ctx.features()
    return Expect(ctx.eval(database), f"{database}: no file holds /query (the split's queries)")


@case("features", "two files hold the queries")
def _(ctx):
    query, database = ctx.features()
    second = ctx.root / "features" / "query-again.h5"
    shutil.copy(query, second)
    return Expect(ctx.eval(query, second, database),
                  f"{second}: /query is also in {query}; exactly one file may hold the queries",
                  exact=False)


@case("features", "an attribute holding pickled bytes")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(query, "r+") as handle:
        handle.attrs["payload"] = np.void(pickle.dumps(PickleBomb(ctx.marker)))
    return Expect(ctx.eval(query, database), f"{query}: attribute 'payload' has an unsupported "
                  "HDF5 type (opaque); only numbers and strings are read", exact=False,
                  after=lambda: not_unpickled(ctx))


# ---------------------------------------------------------------------------- submissions


@case("submit", "a truncated feature file")
def _(ctx):
    query, database = ctx.features()
    database.write_bytes(database.read_bytes()[:3000])
    return Expect(ctx.submit(query, database),
                  f"{database}: not a readable HDF5 file (Unable to synchronously open file "
                  "(truncated file: eof = 3000,", exact=False)


@case("submit", "NaN in a submitted file")
def _(ctx):
    query, database = ctx.features()
    with h5py.File(database, "r+") as handle:
        handle["database/descriptors"][2, 2] = np.nan
    return Expect(ctx.submit(query, database),
                  f"{database}: 1 /database rows hold NaN or Inf (first at stored row 2)")


@case("submit", "metadata with an unknown key")
def _(ctx):
    query, database = ctx.features()
    meta = ctx.root / "meta.json"
    meta.write_text(json.dumps({"paper": "https://example.org", "stars": 5}))
    return Expect(ctx.submit(query, database, extra=["--meta-file", str(meta)]),
                  f"{meta}: unknown metadata keys ['stars']; valid keys are ", exact=False)


@case("submit", "metadata contradicting the files")
def _(ctx):
    query, database = ctx.features()
    meta = ctx.root / "meta.json"
    meta.write_text(json.dumps({"descriptor_dim": 4096}))
    return Expect(ctx.submit(query, database, extra=["--meta-file", str(meta)]),
                  "metadata says descriptor_dim 4096, the feature files have 8")


@case("submit", "the same files under a second method name")
def _(ctx):
    query, database = ctx.features()
    first = run_cli(ctx.submit(query, database, method="first"))
    assert first.exit_code == 0, first.stderr
    record = next((ctx.root / "results").rglob("*.json"))
    return Expect(ctx.submit(query, database, method="second"),
                  f"{record}: these feature files were already submitted as method 'first'; "
                  "a method is renamed by the maintainers, not by resubmitting")


# ============================================================================== .mat files


def _mat(path: Path, version="v5", **changes) -> Path:
    from harness.matfile import write_dbstruct

    args = dict(which_set="test", db_images=[f"db/{i}.jpg" for i in range(5)],
                utm_db=np.arange(10.0).reshape(5, 2), q_images=["q/0.jpg", "q/1.jpg"],
                utm_q=np.ones((2, 2)), version=version)
    args.update(changes)
    return write_dbstruct(path, **args)


def _edit_v5(path: Path, field_name: str, value) -> Path:
    import scipy.io

    record = scipy.io.loadmat(path)["dbStruct"]
    record[0, 0][field_name] = value
    scipy.io.savemat(path, {"dbStruct": record})
    return path


def _import(ctx, path: Path) -> list[str]:
    return ["splits", "import", "--name", "imported", "--mat", str(path),
            "--data-root", str(ctx.root / "data")]


@case("mat", "dbStruct is a matrix, not a struct")
def _(ctx):
    import scipy.io

    path = ctx.root / "a.mat"
    scipy.io.savemat(path, {"dbStruct": np.zeros((3, 3))})
    return Expect(_import(ctx, path),
                  f"{path}: variable 'dbStruct' is not a 1x1 struct (shape (3, 3))")


@case("mat", "no struct variable")
def _(ctx):
    import scipy.io

    path = ctx.root / "a.mat"
    scipy.io.savemat(path, {"foo": np.zeros(3), "bar": np.ones(2)})
    return Expect(_import(ctx, path),
                  f"{path}: no dbStruct struct variable (variables: foo (double), bar (double))")


@case("mat", "a struct with two fields")
def _(ctx):
    import scipy.io

    path = ctx.root / "a.mat"
    scipy.io.savemat(path, {"dbStruct": {"whichSet": "test",
                                         "dbImage": np.array(["a"], dtype=object)}})
    return Expect(_import(ctx, path),
                  f"{path}: dbStruct has 2 fields; a NetVLAD dbStruct has at least 8 (whichSet, "
                  "dbImage, utmDb, qImage, utmQ, numDb, numQ, posDistThr)")


@case("mat", "numDb disagrees with the image list")
def _(ctx):
    path = _edit_v5(_mat(ctx.root / "a.mat"), "numImages", np.array([[7.0]]))
    return Expect(_import(ctx, path), f"{path}: numDb is 7 but dbImage holds 5 names")


@case("mat", "positions of the wrong shape")
def _(ctx):
    path = _edit_v5(_mat(ctx.root / "a.mat"), "utmDb", np.zeros((2, 4)))
    return Expect(_import(ctx, path),
                  f"{path}: utmDb should be 2 x 5 (easting; northing per database image), has "
                  "shape 2 x 4")


@case("mat", "NaN positions")
def _(ctx):
    utm_q = np.ones((2, 2))
    utm_q[0, 0] = np.nan
    path = _mat(ctx.root / "a.mat", utm_q=utm_q)
    return Expect(_import(ctx, path), f"{path}: utmQ holds non-finite positions")


@case("mat", "truncated v5 file")
def _(ctx):
    path = _mat(ctx.root / "a.mat")
    path.write_bytes(path.read_bytes()[:800])
    return Expect(_import(ctx, path), f"{path}: corrupt MATLAB v5 file: ", exact=False)


@case("mat", "truncated v7.3 file")
def _(ctx):
    path = _mat(ctx.root / "a.mat", "v7.3")
    path.write_bytes(path.read_bytes()[:5000])
    return Expect(_import(ctx, path), f"{path}: unreadable MATLAB v7.3 (HDF5) file (Unable to "
                  "synchronously open file (truncated file: eof = ", exact=False)


@case("mat", "v7.3 struct without field order")
def _(ctx):
    path = _mat(ctx.root / "a.mat", "v7.3")
    with h5py.File(path, "r+") as handle:
        del handle["dbStruct"].attrs["MATLAB_fields"]
    return Expect(_import(ctx, path),
                  f"{path}: struct 'dbStruct' has no MATLAB_fields attribute (field order unknown)")


@case("mat", "v7.3 field listed but absent")
def _(ctx):
    path = _mat(ctx.root / "a.mat", "v7.3")
    with h5py.File(path, "r+") as handle:
        del handle["dbStruct/utmQ"]
    return Expect(_import(ctx, path),
                  f"{path}: struct 'dbStruct' lists field 'utmQ' but does not hold it")


@case("mat", "v7.3 image name that is a number")
def _(ctx):
    path = _mat(ctx.root / "a.mat", "v7.3")
    with h5py.File(path, "r+") as handle:
        handle[handle["dbStruct/qImageFns"][0, 0]].attrs["MATLAB_class"] = np.bytes_("double")
    return Expect(_import(ctx, path), f"{path}: cell element /#refs#/f is a MATLAB double value, "
                  "not a string")


@case("mat", "v7.3 reference past the end of the file")
def _(ctx):
    path = _mat(ctx.root / "a.mat", "v7.3")
    with h5py.File(path, "r+") as handle:
        dataset = handle["dbStruct/qImageFns"]
        raw = np.empty(dataset.shape, np.uint64)
        dataset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=h5py.h5t.STD_REF_OBJ)
        raw[0, 0] = 12_345_678
        dataset.id.write(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=h5py.h5t.STD_REF_OBJ)
    return Expect(_import(ctx, path), f"{path}: corrupt MATLAB v7.3 (HDF5) file ('Unable to open "
                  "object by token (address of object past end of allocation)')")


@case("mat", "v7.3 dbStruct that is a matrix")
def _(ctx):
    path = ctx.root / "a.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        dataset = handle.create_dataset("dbStruct", data=np.zeros(3))
        dataset.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as raw:
        raw.write(b"MATLAB 7.3 MAT-file".ljust(116) + b" " * 8 + b"\x00\x02IM")
    return Expect(_import(ctx, path), f"{path}: variable 'dbStruct' is not a struct")


@case("mat", "v7.3 numQ disagrees with the query list")
def _(ctx):
    path = _mat(ctx.root / "a.mat", "v7.3")
    with h5py.File(path, "r+") as handle:
        handle["dbStruct/numQueries"][...] = 9
    return Expect(_import(ctx, path), f"{path}: numQ is 9 but qImage holds 2 names")


@case("mat", "an empty .mat file")
def _(ctx):
    path = ctx.root / "a.mat"
    path.write_bytes(b"")
    return Expect(_import(ctx, path),
                  f"{path}: not a MATLAB v5 or v7.3 .mat file (unrecognised header)")


@case("mat", "an image listed twice")
def _(ctx):
    path = _mat(ctx.root / "a.mat", db_images=["a.jpg"] * 5)
    return Expect(_import(ctx, path), f"{path}: database image 'a.jpg' is listed more than once")


@case("mat", "timestamps that do not match the images")
def _(ctx):
    path = _mat(ctx.root / "a.mat", db_timestamps=np.arange(5.0), q_timestamps=np.arange(2.0))
    _edit_v5(path, "qTimeStamp", np.zeros((1, 3)))
    return Expect(_import(ctx, path), f"{path}: dbStruct field 6 holds 3 timestamps for 2 images")


# ============================================================================== checkpoints

CHECKPOINT_CONFIG = dict(backbone="small", num_clusters=4, image_height=32, image_width=32)


def _model_state():
    pytest.importorskip("torch")
    from methods.netvlad import ModelConfig, build_model

    return build_model(ModelConfig(**CHECKPOINT_CONFIG), seed=0).state_dict()


def _save(path: Path, state, config=None) -> Path:
    from methods.checkpoints import save_checkpoint

    return save_checkpoint(path, state_dict=state, model_config=config or CHECKPOINT_CONFIG)


def _extract(ctx, weights: Path) -> list[str]:
    return ["extract", "--method", "netvlad", "--weights", str(weights), "--split", SMALL_SPLIT,
            "--data-root", str(ctx.data_root), "--out", str(ctx.root / "out" / "features.h5"),
            "--device", "cpu", "--workers", "0", "--no-progress"]


@case("checkpoint", "missing and unexpected keys")
def _(ctx):
    import torch

    state = _model_state()
    state["extra.weight"] = torch.zeros(2)
    del state["net_vlad.centroids"]
    path = _save(ctx.root / "w.pt", state)
    return Expect(_extract(ctx, path), f"{path}: checkpoint does not fit the model: missing keys: "
                  "net_vlad.centroids; unexpected keys: extra.weight")


@case("checkpoint", "a tensor of the wrong shape")
def _(ctx):
    import torch

    state = _model_state()
    state["net_vlad.conv.weight"] = torch.zeros(4, 64, 1, 1)
    path = _save(ctx.root / "w.pt", state)
    return Expect(_extract(ctx, path), f"{path}: checkpoint does not fit the model: shape "
                  "mismatches: net_vlad.conv.weight (4, 64, 1, 1) != (4, 128, 1, 1)")


def not_unpickled(ctx):
    assert not ctx.marker.exists(), "the file was unpickled: its code ran"


@case("checkpoint", "a torch.save pickle carrying code")
def _(ctx):
    import torch

    path = ctx.root / "w.pt"
    torch.save({"state_dict": _model_state(), "hook": PickleBomb(ctx.marker)}, path)
    return Expect(_extract(ctx, path), f"{path}: ", exact=False,
                  after=lambda: not_unpickled(ctx))


@case("checkpoint", "a plain pickle carrying code",
      pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"))
def _(ctx):
    path = ctx.root / "w.pt"
    path.write_bytes(pickle.dumps({"state_dict": PickleBomb(ctx.marker)}))
    return Expect(_extract(ctx, path), f"{path}: not a loadable PyTorch checkpoint: corrupt, "
                  "truncated, or holding more than tensors and plain containers", exact=False,
                  after=lambda: not_unpickled(ctx))


@case("checkpoint", "a truncated checkpoint")
def _(ctx):
    path = _save(ctx.root / "w.pt", _model_state())
    path.write_bytes(path.read_bytes()[:2000])
    return Expect(_extract(ctx, path), f"{path}: not a readable PyTorch checkpoint, corrupt or "
                  "truncated (", exact=False)


@case("checkpoint", "an empty checkpoint")
def _(ctx):
    path = ctx.root / "w.pt"
    path.write_bytes(b"")
    return Expect(_extract(ctx, path), f"{path}: checkpoint file is empty")


@case("checkpoint", "a bare tensor")
def _(ctx):
    import torch

    path = ctx.root / "w.pt"
    torch.save(torch.zeros(3), path)
    return Expect(_extract(ctx, path), f"{path}: checkpoint holds a Tensor, expected a dict")


@case("checkpoint", "an unsupported format_version")
def _(ctx):
    import torch

    path = ctx.root / "w.pt"
    torch.save({"format": "iovpr-harness-checkpoint", "format_version": 9,
                "state_dict": _model_state()}, path)
    return Expect(_extract(ctx, path),
                  f"{path}: checkpoint format_version 9 is not supported (this code reads 1)")


@case("checkpoint", "model_config with an unknown key")
def _(ctx):
    path = _save(ctx.root / "w.pt", _model_state(), {**CHECKPOINT_CONFIG, "bogus": 1})
    return Expect(_extract(ctx, path), f"{path}: model_config: unknown option(s) bogus",
                  exact=False)


@case("checkpoint", "a weights file that does not exist")
def _(ctx):
    pytest.importorskip("torch")
    path = ctx.root / "absent.pt"
    return Expect(_extract(ctx, path), f"{path}: weights file not found")


# ================================================================================== images


def _image_split(ctx, breakage: Callable[[Path], None]) -> tuple[list[str], Path]:
    """A registered 4-image split whose third image ``breakage`` spoils."""
    from PIL import Image

    from harness.splits import Split, register_split

    folder = ctx.root / "images"
    folder.mkdir()
    names = [f"img{i}.jpg" for i in range(4)]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name)
    breakage(folder / names[2])
    utm = np.column_stack([np.arange(4) * 5.0, np.zeros(4)])
    register_split(Split(name="images", query_names=tuple(names[:1]),
                         database_names=tuple(names), query_utm=utm[:1], database_utm=utm,
                         query_root=str(folder), database_root=str(folder)),
                   ctx.root / "data")
    argv = ["extract", "--method", "probe", "--split", "images", "--data-root",
            str(ctx.root / "data"), "--out", str(ctx.root / "out" / "features.h5"),
            "--device", "cpu", "--workers", "0", "--no-progress"]
    return argv, folder / names[2]


@case("images", "a missing image")
def _(ctx):
    pytest.importorskip("torch")
    argv, image = _image_split(ctx, lambda p: p.unlink())
    return Expect(argv, f"{image}: image file not found")


@case("images", "a zero-size image")
def _(ctx):
    pytest.importorskip("torch")
    argv, image = _image_split(ctx, lambda p: p.write_bytes(b""))
    return Expect(argv, f"{image}: unreadable image (", exact=False)


@case("images", "an image of garbage bytes")
def _(ctx):
    pytest.importorskip("torch")
    argv, image = _image_split(ctx, lambda p: p.write_bytes(b"GIF89a" + bytes(range(256))))
    return Expect(argv, f"{image}: unreadable image (UnidentifiedImageError: cannot identify "
                  f"image file '{image}')")


@case("images", "a truncated JPEG")
def _(ctx):
    pytest.importorskip("torch")
    argv, image = _image_split(ctx, lambda p: p.write_bytes(p.read_bytes()[:200]))
    return Expect(argv, f"{image}: unreadable image (", exact=False)


@case("images", "an image path that is a folder")
def _(ctx):
    pytest.importorskip("torch")
    argv, image = _image_split(ctx, lambda p: (p.unlink(), p.mkdir()))
    return Expect(argv, f"{image}: image path is a directory")


# ================================================================================= records


@pytest.fixture(scope="module")
def submitted_results(tiny_city, tmp_path_factory):
    """A results folder holding one real submission (copied by each record case)."""
    folder = tmp_path_factory.mktemp("submitted")
    from harness.splits import get_split

    paths = write_valid_features(get_split(SPLIT, tiny_city.data_root), folder / "features")
    outcome = run_cli(["submit", *map(str, paths), "--split", SPLIT, "--data-root",
                       str(tiny_city.data_root), "--method-name", "m1", "--results",
                       str(folder / "results")])
    assert outcome.exit_code == 0, outcome.stderr
    return folder / "results"


_RESULTS: dict = {}


def _record(ctx) -> Path:
    shutil.copytree(_RESULTS["template"], ctx.root / "results")
    return next((ctx.root / "results").rglob("*.json"))


def _resign(record: Path, data: dict) -> None:
    from leaderboard.records import content_checksum

    data["content_sha256"] = content_checksum(data)
    record.write_text(json.dumps(data, indent=2))


def _build(ctx) -> list[str]:
    return ["leaderboard", "build", "--results", str(ctx.root / "results"), "--out",
            str(ctx.root / "site"), "--data-root", str(ctx.data_root), "--no-grids"]


def _check(ctx) -> list[str]:
    return ["leaderboard", "check", "--results", str(ctx.root / "results"), "--data-root",
            str(ctx.data_root), "--no-git"]


_EDITED = ("content checksum mismatch: the record was edited by hand or is corrupt (records "
           "are immutable; submit again instead)")


@case("records", "a hand-edited score (build)")
def _(ctx):
    record = _record(ctx)
    data = json.loads(record.read_text())
    data["result"]["scores"]["recall@1"] = 0.99
    record.write_text(json.dumps(data, indent=2))
    return Expect(_build(ctx), f"{record}: {_EDITED}")


@case("records", "a hand-edited score (check)")
def _(ctx):
    record = _record(ctx)
    data = json.loads(record.read_text())
    data["result"]["scores"]["recall@1"] = 0.99
    record.write_text(json.dumps(data, indent=2))
    # check lists every problem, then fails with its summary: the first error line is the record.
    return Expect(_check(ctx), f"{record}: {_EDITED}", several=True)


@case("records", "an unknown schema version")
def _(ctx):
    record = _record(ctx)
    data = json.loads(record.read_text())
    data["record_schema_version"] = 7
    record.write_text(json.dumps(data))
    return Expect(_build(ctx), f"{record}: record_schema_version 7 is not one this harness reads "
                  "([1]); a newer harness may read it")


@case("records", "a truncated record")
def _(ctx):
    record = _record(ctx)
    record.write_text(record.read_text()[:100])
    return Expect(_build(ctx), f"{record}: not valid JSON (", exact=False)


@case("records", "NaN in a record")
def _(ctx):
    record = _record(ctx)
    data = json.loads(record.read_text())
    data["result"]["scores"]["recall@1"] = float("nan")
    record.write_text(json.dumps(data))
    return Expect(_build(ctx), f"{record}: record holds a non-finite number (Out of range float "
                  "values are not JSON compliant)")


@case("records", "an unknown key, checksum recomputed")
def _(ctx):
    record = _record(ctx)
    data = json.loads(record.read_text())
    data["extra"] = 1
    _resign(record, data)
    return Expect(_build(ctx), f"{record}: unknown record keys ['extra']")


@case("records", "a JSON array instead of an object")
def _(ctx):
    record = _record(ctx)
    record.write_text("[1, 2, 3]")
    return Expect(_build(ctx), f"{record}: a record must be a JSON object")


@case("records", "JSON nested 100000 deep")
def _(ctx):
    record = _record(ctx)
    record.write_text("[" * 100_000 + "]" * 100_000)
    return Expect(_build(ctx), f"{record}: not a record: JSON nested too deeply")


@case("records", "a forged score outside [0, 1] with a valid checksum")
def _(ctx):
    record = _record(ctx)
    data = json.loads(record.read_text())
    data["result"]["scores"]["recall@1"] = 1.5
    _resign(record, data)
    return Expect(_build(ctx), f"{record}: result: score recall@1 = 1.5 is outside [0, 1]")


@case("records", "a tampered top-k sidecar (check)")
def _(ctx):
    record = _record(ctx)
    sidecar = next(record.parent.glob("*.topk.npz"))
    sidecar.write_bytes(b"PK\x03\x04" + bytes(100))
    return Expect(_check(ctx), f"{sidecar}: predictions file does not match the sha256 in its "
                  "record", several=True)


@case("records", "a re-signed top-k sidecar whose member is not an array (check)")
def _(ctx):
    import hashlib
    import zipfile

    record = _record(ctx)
    sidecar = next(record.parent.glob("*.topk.npz"))
    with zipfile.ZipFile(sidecar) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["meta.npy"] = b"not an array"  # np.load hands such a member back as bytes
    with zipfile.ZipFile(sidecar, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = json.loads(record.read_text())
    data["predictions"].update(sha256=hashlib.sha256(sidecar.read_bytes()).hexdigest(),
                               bytes=sidecar.stat().st_size)
    _resign(record, data)
    return Expect(_check(ctx), f"{sidecar}: not a readable top-k predictions file (ValueError: "
                  "member 'meta' is not a .npy array)", several=True)


# ============================================================================== CLI misuse


@case("cli", "eval without --features or --method")
def _(ctx):
    return Expect(["eval", "--split", SPLIT, "--data-root", str(ctx.data_root)],
                  "give one of --features, --method or --ranking", usage=True)


@case("cli", "a misspelt split")
def _(ctx):
    return Expect(["eval", "--features", str(ctx.root), "--split", "synth-outdor-ams",
                   "--data-root", str(ctx.data_root)],
                  f"unknown split 'synth-outdor-ams' under {ctx.data_root / 'splits'} (did you "
                  "mean synth-outdoor-ams, synth-indoor-ams-2, synth-indoor-ams-1?); import it "
                  "with `harness splits prepare` or `harness splits import`")


@case("cli", "--recall-ns 0")
def _(ctx):
    query, database = ctx.features()
    return Expect(ctx.eval(query, database) + ["--recall-ns", "0,5"],
                  "Invalid value for --recall-ns: must be positive integers", usage=True)


@case("cli", "--shard 3/2")
def _(ctx):
    pytest.importorskip("torch")
    return Expect(["extract", "--method", "probe", "--split", SPLIT, "--data-root",
                   str(ctx.data_root), "--out", str(ctx.root / "out"), "--shard", "3/2"],
                  "--shard '3/2': need 0 <= i < n")


@case("cli", "a method name with a space")
def _(ctx):
    query, database = ctx.features()
    return Expect(ctx.submit(query, database, method="bad name"),
                  "invalid method name 'bad name': 1-64 characters, letters, digits and . _ + -, "
                  "starting with a letter or digit")


@case("cli", "a misspelt command")
def _(ctx):
    return Expect(["evall"], "No such command 'evall'. Did you mean 'eval'?", usage=True)


@case("cli", "more eval tasks than the database's search blocks")
def _(ctx):
    # beyond the number of files, tasks take row ranges cut at the search's blocks (8-D
    # float32 rows: 128 MiB / 32 B = 4194304 rows a block), and the tiny database is one block
    query, database = ctx.features()
    return Expect(["slurm", "eval", "--features", str(query), "--features", str(database),
                   "--split", SPLIT, "--data-root", str(ctx.data_root), "--shards", "5",
                   "--cluster", "local", "--log-dir", str(ctx.root / "logs")],
                  f"{database}: 5 shards asked for, but cut at blocks of 4194304 rows the "
                  "database gives at most 1; ask for fewer shards or give a smaller --block-rows")


@case("cli", "a misspelt method option")
def _(ctx):
    pytest.importorskip("torch")
    return Expect(["extract", "--method", "probe", "--split", SPLIT, "--data-root",
                   str(ctx.data_root), "--out", str(ctx.root / "out.h5"), "--option", "kindd=hist"],
                  "method probe: unknown option(s) kindd (did you mean kind?); valid options are "
                  "kind")


# ================================================================================== the test


def _error_lines(stderr: str, usage: bool) -> list[str]:
    prefix = "Error: " if usage else "error: "
    # tqdm redraws with carriage returns: a line may hold a cleared bar before the error.
    return [part.strip() for line in stderr.splitlines() for part in line.split("\r")
            if part.strip().startswith(prefix)]


@pytest.mark.parametrize(
    "bad", [pytest.param(c, id=f"{c.group}: {c.name}", marks=c.marks) for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(bad, tiny_city, submitted_results,
                                                        tmp_path):
    _RESULTS["template"] = submitted_results
    ctx = Ctx(tiny_city, tmp_path)
    expect = bad.build(ctx)
    files_before, folders_before = snapshot(tmp_path), directories(tmp_path)
    city_before = snapshot(tiny_city.data_root)

    outcome = run_cli(expect.argv)

    assert outcome.exit_code == 2, (outcome.exit_code, outcome.exception, outcome.stderr)
    assert isinstance(outcome.exception, SystemExit), outcome.exception
    assert "Traceback" not in outcome.stderr
    lines = _error_lines(outcome.stderr, expect.usage)
    assert len(lines) >= 1, outcome.stderr
    line = lines[0]
    prefix = "Error: " if expect.usage else "error: "
    if expect.exact:
        assert line == prefix + expect.message
    else:
        assert line.startswith(prefix) and expect.message in line, line
    if not expect.several:
        assert len(lines) == 1, lines
    assert snapshot(tmp_path) == files_before, "files were written, changed or removed"
    assert directories(tmp_path) == folders_before, "folders were created or removed"
    assert temp_files(tmp_path) == []
    assert snapshot(tiny_city.data_root) == city_before
    if expect.after is not None:
        expect.after()


def test_corpus_size():
    """At least 30 kinds of bad input, in every group the issue names."""
    groups = {c.group for c in CASES}
    assert {"features", "submit", "mat", "checkpoint", "images", "records", "cli"} <= groups
    assert len(CASES) >= 30
    assert len({(c.group, c.name) for c in CASES}) == len(CASES)


def test_checkpoint_pickle_message_names_the_global(tmp_path):
    """The refusal names the Python object the file would call, and gives no unsafe advice."""
    torch = pytest.importorskip("torch")
    from harness.errors import HarnessError
    from methods.checkpoints import torch_load

    class ShellBomb:  # unpickling it would run a shell command creating the marker
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'UNPICKLED'}",))

    path = tmp_path / "w.pt"
    torch.save({"hook": ShellBomb()}, path)
    with pytest.raises(HarnessError) as info:
        torch_load(path)
    assert not (tmp_path / "UNPICKLED").exists()
    assert ("refusing to load: the checkpoint references Python object "
            f"{os.system.__module__}.system") in info.value.message
    assert "weights_only" not in info.value.message.split("(only tensors")[0]


# ---------------------------------------------------------------- crashes of the whole process

_SEGFAULT_SCRIPT = r"""
import json, sys
from harness.errors import HarnessError
from harness.matfile import read_dbstruct
out = {}
for path in sys.argv[1:]:
    try:
        read_dbstruct(path)
        out[path] = "read"
    except HarnessError as exc:
        out[path] = exc.one_line()
print(json.dumps(out))
"""


def test_v5_files_that_crashed_scipy_are_refused(tmp_path):
    """Single flipped bytes that made scipy's compiled v5 reader segfault (found by fuzzing):
    an unknown type code in a small element, in a full tag, dimensions of 9 bytes, and the
    complex flag without an imaginary part. Run in a child process: a regression crashes the
    child, not the test session."""
    base = _mat(tmp_path / "base.mat")
    data = base.read_bytes()

    def flipped(name, offset, value, expected_old):
        assert data[offset] == expected_old, (name, offset, data[offset])
        changed = bytearray(data)
        changed[offset] = value
        path = tmp_path / f"{name}.mat"
        path.write_bytes(bytes(changed))
        return path

    # Offsets in the file `_mat` writes (fixed bytes: the writer is deterministic).
    which_set_tag = data.index(b"test") - 4  # small element tag of whichSet's characters
    cases = {
        flipped("small-element-type", which_set_tag, 235, 16):
            "invalid small element (type 235, 4 bytes)",
        flipped("dims-size", _first_dims_size(data), 9, 8): "dimensions of 9 bytes",
        flipped("complex-flag", _first_double_flags(data) + 1, 0x08, 0):
            "a matrix ends before all its elements",
    }
    result = subprocess.run([sys.executable, "-c", _SEGFAULT_SCRIPT, *map(str, cases)],
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    for path, fragment in cases.items():
        assert messages[str(path)].startswith(f"{path}: corrupt MATLAB v5 file: "), messages
        assert fragment in messages[str(path)], messages[str(path)]


def _first_dims_size(data: bytes) -> int:
    """Offset of the byte count of the first matrix's dimensions element (miINT32, 8 bytes)."""
    offset = data.index(b"\x05\x00\x00\x00\x08\x00\x00\x00", 128)
    return offset + 4


def _first_double_flags(data: bytes) -> int:
    """Offset of the array flags of the first double matrix (class 6)."""
    offset = data.index(b"\x06\x00\x00\x00\x08\x00\x00\x00\x06\x00\x00\x00", 128)
    return offset + 8


def test_atomic_writes_respect_the_umask(tmp_path):
    """Files written through atomic_path get the umask's mode, not mkstemp's 0600 (records,
    splits and features are shared on clusters)."""
    from harness.io import write_json_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    path = write_json_atomic(tmp_path / "record.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_atomic_write_leaves_no_folder_behind(tmp_path):
    from harness.io import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new" / "deeper" / "file.json") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


_READ_INFO_SCRIPT = r"""
import sys
from harness.errors import HarnessError
from harness.features import read_info, read_names
for path in sys.argv[1:]:
    try:
        read_info(path)
        read_names(path, "database")
        print(path, "read")
    except HarnessError as exc:
        print(exc.one_line())
"""


def test_hdf5_files_that_hung_or_crashed_the_process_are_refused(tmp_path):
    """Found by fuzzing (benchmarks/fuzz.py): a global heap whose free-space object is 0 bytes
    long makes HDF5 loop forever reading any string; a string attribute whose datatype says
    "sequence" segfaults h5py's conversion. Both are refused from the raw bytes first. Run
    in a child process with a timeout: a regression fails this test, not the session."""
    valid = tmp_path / "valid.h5"
    with h5py.File(valid, "w") as handle:  # HDF5's default (oldest) format: no checksums
        handle.attrs.update(format_version=1, split="small", method="m")
        group = handle.create_group("database")
        group.create_dataset("descriptors", data=unit_rows(6))
        group.create_dataset("names", data=np.array([f"db/{i}.jpg" for i in range(6)],
                                                    dtype=object), dtype=h5py.string_dtype())
    data = valid.read_bytes()

    heap = data.index(b"GCOL\x01")
    size = int.from_bytes(data[heap + 8:heap + 16], "little")
    cursor = heap + 16
    while True:  # walk to the collection's free-space object (index 0)
        index = int.from_bytes(data[cursor:cursor + 2], "little")
        length = int.from_bytes(data[cursor + 8:cursor + 16], "little")
        if index == 0:
            break
        cursor += 16 + (length + 7) // 8 * 8
        assert cursor < heap + size
    looping = bytearray(data)
    looping[cursor + 8:cursor + 16] = bytes(8)
    (tmp_path / "heap.h5").write_bytes(bytes(looping))

    attribute = data.index(b"split\x00")
    # The attribute's datatype follows its name (padded to 8 bytes in old-format messages):
    # class 9 (variable-length), type 1 (string).
    string_type = next(attribute + gap for gap in (6, 8)
                       if data[attribute + gap] & 0x0F == 9 and data[attribute + gap + 1] == 1)
    crashing = bytearray(data)
    crashing[string_type + 1] = 0xEF
    (tmp_path / "type.h5").write_bytes(bytes(crashing))

    result = subprocess.run([sys.executable, "-c", _READ_INFO_SCRIPT, str(tmp_path / "heap.h5"),
                             str(tmp_path / "type.h5")], capture_output=True, text=True,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    heap_line, type_line = result.stdout.strip().splitlines()[-2:]
    assert heap_line.startswith(f"{tmp_path / 'heap.h5'}: corrupt HDF5 file: the global heap at "
                                f"byte {heap} holds an empty free-space object at byte {cursor}")
    assert type_line == (f"{tmp_path / 'type.h5'}: attribute 'split' has an unsupported HDF5 "
                         "type (variable-length sequence); only numbers and strings are read")




def test_heap_scan_clamps_extents_from_corrupt_metadata(tmp_path):
    """Found by fuzzing: a damaged chunk index gave descriptor extents past 2**63, and the
    heap scan passed them to mmap.find (OverflowError). Extents are clamped to the file."""
    from harness.features import read_info
    from harness.hdf5 import check_global_heaps

    path = write_valid_features(_tiny_split(), tmp_path, shards=1)[1]
    check_global_heaps(path, 0, skip=[(2**70, 2**71), (-5, 3)])
    assert read_info(path).parts["database"].count == 6


def _tiny_split():
    from harness.splits import Split

    return Split(name="tiny", query_names=("q/0.jpg",), database_names=tuple(
        f"db/{i}.jpg" for i in range(6)), query_utm=np.zeros((1, 2)),
        database_utm=np.arange(12.0).reshape(6, 2))
