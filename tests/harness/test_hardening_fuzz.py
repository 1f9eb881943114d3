"""Bounded-time fuzzing of every reader of submitted (untrusted) files, with hypothesis.

Valid files are made once (a feature file in several layouts, NetVLAD ``.mat`` files in v5
and v7.3, a leaderboard record, an evaluation record, a top-k sidecar, a split file); each
example mutates one (flipped, overwritten, zeroed, inserted or removed bytes, truncation;
for JSON also structural edits with the content checksum recomputed, so the deep validation
runs) and hands it to the reader. A reader must return or raise :class:`HarnessError`:
any other exception is a crash (and a hang is caught by the test's timeout). Every crash
found became a regression test in ``test_hardening_inputs.py`` (and a fix).

The default run is a few hundred examples per reader (seconds); ``-m slow`` runs the long
variant. ``benchmarks/fuzz.py`` runs any of them for a given wall-clock time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from badinputs import ReaderProcess
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from harness.errors import HarnessError

FAST_EXAMPLES = int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "100"))
SLOW_EXAMPLES = 4000
_SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the default run is the same every time (CI); `-m slow` explores more
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    database=None,
    # Shrinking a 15 KB file takes minutes; the failing example is reported as found.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)


# --------------------------------------------------------------------------------------------
# Mutations


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """``data`` with 1-6 random edits; positions favour the first 4 KiB (HDF5/zip/MAT headers)."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buffer:
            break
        size = len(buffer)
        head = min(size, 4096)
        position = draw(st.one_of(st.integers(0, head - 1), st.integers(0, size - 1)))
        kind = draw(st.sampled_from(
            ["flip", "set", "zero", "ones", "insert", "delete", "truncate"]))
        if kind == "flip":
            buffer[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buffer[position] = draw(st.integers(0, 255))
        elif kind in ("zero", "ones"):
            length = draw(st.integers(1, 64))
            buffer[position:position + length] = (b"\0" if kind == "zero" else b"\xff") * len(
                buffer[position:position + length])
        elif kind == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buffer[position:position + draw(st.integers(1, 64))]
        else:
            del buffer[position:]
    return bytes(buffer)


_JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
_JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children,
                                                                        max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


@st.composite
def json_mutations(draw, document):
    """A deep copy of ``document`` with 1-3 edits: a value replaced, a key removed or added."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        kind = draw(st.sampled_from(["replace", "remove", "add"]))
        if kind == "replace":
            parent[path[-1]] = draw(_JSON_VALUES)
        elif kind == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(_JSON_VALUES)
        else:
            parent.append(draw(_JSON_VALUES))
    return document


# --------------------------------------------------------------------------------------------
# Valid seed files


def _small_split(name="fuzz"):
    from harness.splits import Split

    rng = np.random.default_rng(0)
    return Split(
        name=name,
        query_names=tuple(f"q/{i:02d}.jpg" for i in range(5)),
        database_names=tuple(f"db/{i:02d}.jpg" for i in range(12)),
        query_utm=rng.uniform(0, 60, (5, 2)),
        database_utm=rng.uniform(0, 60, (12, 2)),
        radius_m=20.0,
        recall_ns=(1, 5),
    )


def _rows(count, dim, seed, dtype=np.float32):
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(dtype)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def make_seeds(folder: Path) -> dict:
    """``{"bytes": name -> bytes of a valid file, "split": the split they are for}``."""
    import h5py

    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.features import write_features
    from harness.matfile import write_dbstruct
    from harness.splits import save_split
    from leaderboard.submit import submit

    split = _small_split()
    found: dict[str, bytes] = {}
    both = write_features(
        folder / "both.h5", split=split.name, method="fuzz",
        query=(list(split.query_names), _rows(5, 4, 0)),
        database=(list(split.database_names), _rows(12, 4, 1)), attrs={"note": "x", "n": 3})
    found["features"] = both.read_bytes()
    half = write_features(
        folder / "half.h5", split=split.name, method="fuzz",
        database=(list(split.database_names), _rows(12, 4, 1, np.float16)))
    found["features-fp16-database"] = half.read_bytes()
    chunked = folder / "chunked.h5"
    with h5py.File(chunked, "w") as handle:  # another layout: chunked, compressed, old format
        handle.attrs.update(format_version=1, split=split.name, method="fuzz")
        for part, names, rows in (("query", split.query_names, _rows(5, 4, 0)),
                                  ("database", split.database_names, _rows(12, 4, 1))):
            group = handle.create_group(part)
            group.create_dataset("descriptors", data=rows, chunks=(4, 4), compression="gzip")
            group.create_dataset("names", data=np.array(names, dtype=object),
                                 dtype=h5py.string_dtype())
    found["features-chunked"] = chunked.read_bytes()

    names_db = [f"db/{i:02d}.jpg" for i in range(6)]
    names_q = ["q/a.jpg", "q/b.jpg"]
    for version in ("v5", "v7.3"):
        for variant, extra in (("standard", {}),
                               ("timestamp", dict(db_timestamps=np.arange(6.0),
                                                  q_timestamps=np.arange(2.0)))):
            path = write_dbstruct(folder / f"{version}-{variant}.mat", which_set="test",
                                  db_images=names_db, utm_db=np.arange(12.0).reshape(6, 2),
                                  q_images=names_q, utm_q=np.ones((2, 2)), version=version,
                                  **extra)
            found[f"mat-{version}-{variant}"] = path.read_bytes()

    config = EvalConfig(progress=False)
    result = evaluate([both], split, config)
    result_path = result.write(folder / "result.json")
    found["result"] = result_path.read_bytes()
    outcome = submit([both], split=split, method_name="fuzz", results_dir=folder / "results",
                     config=config)
    found["record"] = outcome.path.read_bytes()
    sidecar = next(outcome.path.parent.glob("*.topk.npz"))
    found["topk"] = sidecar.read_bytes()
    found["split"] = save_split(split, folder / "fuzz.split.npz").read_bytes()
    return {"bytes": found, "split": split}


# --------------------------------------------------------------------------------------------
# Targets: each reads ``path`` and may only succeed or raise HarnessError


def read_feature_file(path: Path, split) -> None:
    from harness.features import iter_descriptor_blocks, read_descriptors, read_info, read_names
    from harness.validate import validate_features

    try:
        info = read_info(path)
    except HarnessError:
        pass
    else:
        for part in info.parts:
            for call in (lambda: read_names(path, part),
                         lambda: read_descriptors(path, part, 0, 3),
                         lambda: sum(1 for _ in iter_descriptor_blocks(path, part, 5))):
                try:
                    call()
                except HarnessError:
                    pass
    try:
        report = validate_features([path], split)
    except HarnessError:
        return  # clean for the CLI; the API promises a report (test_validate_reports_...)
    assert report.ok or report.problems


def read_mat(path: Path, split) -> None:
    from harness.matfile import read_dbstruct

    try:
        struct = read_dbstruct(path)
    except HarnessError:
        return
    assert struct.utm_db.shape == (struct.num_db, 2) and struct.utm_q.shape == (struct.num_q, 2)


def read_leaderboard_record(path: Path, split) -> None:
    from leaderboard.records import read_record

    try:
        read_record(path)
    except HarnessError:
        pass


def read_eval_result(path: Path, split) -> None:
    from harness.results import read_result

    try:
        read_result(path)
    except HarnessError:
        pass


def read_topk_sidecar(path: Path, split) -> None:
    from leaderboard.records import read_topk

    try:
        read_topk(path)
    except HarnessError:
        pass


def read_split_file(path: Path, split) -> None:
    from harness.splits import load_split

    try:
        load_split(path)
    except HarnessError:
        pass


BYTE_TARGETS = {
    "features": read_feature_file,
    "features-fp16-database": read_feature_file,
    "features-chunked": read_feature_file,
    "mat-v5-standard": read_mat,
    "mat-v5-timestamp": read_mat,
    "mat-v7.3-standard": read_mat,
    "mat-v7.3-timestamp": read_mat,
    "record": read_leaderboard_record,
    "result": read_eval_result,
    "topk": read_topk_sidecar,
    "split": read_split_file,
}
SUFFIX = {"record": ".json", "result": ".json", "topk": ".topk.npz", "split": ".split.npz"}


def fuzzed_path(folder: Path, seed_name: str) -> Path:
    return folder / f"fuzzed{SUFFIX.get(seed_name, '.h5' if 'features' in seed_name else '.mat')}"


def fuzz_bytes(seed_name: str, seeds, folder: Path, reader: ReaderProcess, examples: int,
               random_seed: int | None = None, **overrides) -> int:
    """Run ``examples`` mutations of one seed file through its reader (in ``reader``)."""
    path = fuzzed_path(folder, seed_name)
    count = 0

    @settings(max_examples=examples, **dict(_SETTINGS, **overrides))
    @given(data=byte_mutations(seeds["bytes"][seed_name]))
    def run(data):
        nonlocal count
        count += 1
        path.write_bytes(data)
        reader.call(seed_name, path)

    if random_seed is not None:
        run = seed(random_seed)(run)
    run()
    return count


def _fuzz_json(seed_name: str, seeds, folder: Path, reader: ReaderProcess, examples: int,
               recompute_checksum: bool) -> int:
    from leaderboard.records import content_checksum

    document = json.loads(seeds["bytes"][seed_name])
    path = folder / "fuzzed.json"
    count = 0

    @settings(max_examples=examples, **_SETTINGS)
    @given(mutated=json_mutations(document))
    def run(mutated):
        nonlocal count
        count += 1
        if recompute_checksum and isinstance(mutated, dict):
            mutated["content_sha256"] = content_checksum(mutated)
        path.write_text(json.dumps(mutated), encoding="utf-8")
        reader.call(seed_name, path)

    run()
    return count


@pytest.fixture(scope="module")
def reader():
    """The readers, in a child process that a hang or a crash cannot take the tests down with."""
    process = ReaderProcess(__name__, "BYTE_TARGETS", "_small_split", timeout_s=30)
    process.start()
    yield process
    process.stop()


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("seed_name", sorted(BYTE_TARGETS))
def test_mutated_files_raise_only_harness_errors(seeds, reader, tmp_path, seed_name):
    binary = "features" in seed_name or "mat" in seed_name
    examples = FAST_EXAMPLES if binary else FAST_EXAMPLES // 2
    assert fuzz_bytes(seed_name, seeds, tmp_path, reader, examples) == examples


@pytest.mark.parametrize("seed_name,recompute", [("record", True), ("record", False),
                                                 ("result", False)])
def test_structurally_edited_records_raise_only_harness_errors(seeds, reader, tmp_path,
                                                               seed_name, recompute):
    assert _fuzz_json(seed_name, seeds, tmp_path, reader, FAST_EXAMPLES // 2, recompute) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", sorted(BYTE_TARGETS))
def test_mutated_files_long_run(seeds, reader, tmp_path, seed_name):
    fuzz_bytes(seed_name, seeds, tmp_path, reader, SLOW_EXAMPLES, derandomize=False)


def test_the_reader_process_reports_hangs_and_crashes(tmp_path):
    """The harness of this fuzzing can fail: a hang, a crash and a stray exception are caught."""
    process = ReaderProcess(__name__, "_BROKEN_TARGETS", "_small_split", timeout_s=3)
    try:
        process.call("fine", tmp_path)
        for name, expected in (("raises", "raised something else"), ("hangs", "hung"),
                               ("crashes", "crashed the process")):
            with pytest.raises(AssertionError, match=expected):
                process.call(name, tmp_path)
        process.call("fine", tmp_path)  # restarted after the hang and the crash
    finally:
        process.stop()


def _hang(path, split):
    import time

    time.sleep(60)


def _crash(path, split):
    os._exit(3)


def _raise(path, split):
    raise KeyError("not a HarnessError")


_BROKEN_TARGETS = {"fine": lambda path, split: None, "raises": _raise, "hangs": _hang,
                   "crashes": _crash}


def test_seed_files_are_valid(seeds, tmp_path):
    """The fuzz starts from files every reader accepts (else it would test nothing deep)."""
    from harness.features import read_info
    from harness.matfile import read_dbstruct
    from harness.results import read_result
    from harness.splits import load_split
    from harness.validate import validate_features
    from leaderboard.records import read_record, read_topk

    files = {}
    for name, data in seeds["bytes"].items():
        files[name] = tmp_path / f"{name}-{fuzzed_path(tmp_path, name).name}"
        files[name].write_bytes(data)
    assert validate_features([files["features"]], seeds["split"]).ok
    assert validate_features([files["features-chunked"]], seeds["split"]).ok
    assert read_info(files["features-fp16-database"]).parts["database"].dtype == "float16"
    for name in ("mat-v5-standard", "mat-v5-timestamp", "mat-v7.3-standard", "mat-v7.3-timestamp"):
        assert read_dbstruct(files[name]).num_db == 6
    assert read_record(files["record"]).method == "fuzz"
    assert read_result(files["result"]).split == "fuzz"
    assert read_topk(files["topk"]).indices.shape[0] == 5
    assert load_split(files["split"]).num_database == 12


def test_validate_reports_an_unreadable_compressed_block(seeds, tmp_path):
    import h5py

    from harness.validate import validate_features

    path = tmp_path / "chunked.h5"
    path.write_bytes(seeds["bytes"]["features-chunked"])
    with h5py.File(path, "r") as handle:
        chunk = handle["query/descriptors"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + 2: chunk.byte_offset + chunk.size] = bytes(chunk.size - 2)
    path.write_bytes(bytes(data))
    report = validate_features([path], seeds["split"])
    assert not report.ok and "corrupt HDF5 file" in report.problems[0]
