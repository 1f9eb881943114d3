"""`harness eval` end to end, and `harness.evaluate` against a brute-force reference."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import cli, main
from harness.config import EvalConfig
from harness.errors import HarnessError
from harness.evaluate import evaluate, search_features
from harness.features import write_features
from harness.ground_truth import positives_within_radius
from harness.io import sha256_file
from harness.record import build_record
from harness.results import read_predictions, read_result
from harness.search import merge_topk
from harness.splits import Split, register_split

NUM_QUERIES, NUM_DATABASE, DIM = 12, 90, 16


def make_split(name="tiny-eval", spatial_nms=False, no_positive="miss") -> Split:
    rng = np.random.default_rng(0)
    database_utm = np.stack([np.arange(NUM_DATABASE) * 10.0, np.zeros(NUM_DATABASE)], axis=1)
    if spatial_nms:  # two views per place
        database_utm[1::2] = database_utm[0::2]
    query_utm = np.stack(
        [rng.uniform(0, NUM_DATABASE * 10, NUM_QUERIES), rng.uniform(-5, 5, NUM_QUERIES)], 1
    )
    query_utm[-1] = [-500.0, 0.0]  # far from everything: no positive
    return Split(
        name=name,
        query_names=tuple(f"q/{i:03d}.jpg" for i in range(NUM_QUERIES)),
        database_names=tuple(f"db/{i:04d}.jpg" for i in range(NUM_DATABASE)),
        query_utm=query_utm,
        database_utm=database_utm,
        radius_m=12.0,
        recall_ns=(1, 5, 10),
        spatial_nms=spatial_nms,
        no_positive=no_positive,
    )


def make_descriptors(split: Split, seed=1):
    """Queries look like a nearby database image plus noise (so recall is neither 0 nor 1)."""
    rng = np.random.default_rng(seed)
    database = rng.standard_normal((split.num_database, DIM)).astype(np.float32)
    nearest = np.abs(split.query_utm[:, :1] - split.database_utm[:, 0][None]).argmin(1)
    queries = database[nearest] + 1.2 * rng.standard_normal((split.num_queries, DIM)).astype(
        np.float32
    )
    for array in (database, queries):
        array /= np.linalg.norm(array, axis=1, keepdims=True)
    return queries, database


def write_sharded(tmp_path, split, queries, database, dtype="float32", shards=3, shuffle=True):
    """A query file plus database shards, rows shuffled (names map them back)."""
    rng = np.random.default_rng(2)
    order_q = rng.permutation(split.num_queries) if shuffle else np.arange(split.num_queries)
    folder = tmp_path / "features"
    write_features(folder / "query.h5", split=split.name, method="toy",
                   query=([split.query_names[i] for i in order_q], queries[order_q].astype(dtype)),
                   attrs={"weights": "toy.pth"})
    order = rng.permutation(split.num_database) if shuffle else np.arange(split.num_database)
    for number, rows in enumerate(np.array_split(order, shards)):
        write_features(
            folder / f"db-{number}.h5",
            split=split.name,
            method="toy",
            database=([split.database_names[i] for i in rows], database[rows].astype(dtype)),
        )
    return folder


def reference_recalls(split, queries, database, ns, policy="miss"):
    """Full score matrix + the lineage's per-query loop (fine for 12 queries)."""
    scores = queries @ database.T
    ranking = np.stack([np.lexsort((np.arange(len(row)), -row)) for row in scores])
    positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
    correct = np.zeros(len(ns))
    counted = 0
    for q in range(split.num_queries):
        if policy == "exclude" and len(positives[q]) == 0:
            continue
        counted += 1
        for i, n in enumerate(ns):
            if np.isin(ranking[q, :n], positives[q]).any():
                correct[i:] += 1
                break
    return {f"recall@{n}": c / counted for n, c in zip(ns, correct)}


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    register_split(make_split(), root)
    return root


def test_eval_cli_end_to_end(tmp_path, data_root):
    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database)
    out = tmp_path / "results" / "toy.json"
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--features", str(folder), "--split", split.name,
                                 "--data-root", str(data_root), "--json", str(out), "--no-progress",
                                 "--block-rows", "7"])
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.output and "1 queries have no positive" in result.output
    record = read_result(out)
    expected = reference_recalls(split, queries, database, (1, 5, 10))
    for name, value in expected.items():
        assert record.scores[name] == pytest.approx(value, abs=1e-6)
    assert 0 < record.scores["recall@1"] < 1 and "map@10" in record.scores
    assert (
        record.counts.queries_without_positive == 1
        and record.counts.evaluated_queries == NUM_QUERIES
    )
    assert record.method == "toy" and record.method_attrs == {"weights": "toy.pth"}
    assert len(record.features) == 4 and record.split_sha256 == split.sha256
    assert {f.path: f.sha256 for f in record.features} == {
        str(p): sha256_file(p) for p in sorted(folder.glob("*.h5"))}
    assert record.protocol.k == 10 and record.descriptor_dim == DIM
    predictions = read_predictions(out)
    assert predictions.indices.shape == (NUM_QUERIES, 10)
    raw = json.loads(out.read_text())
    assert raw["schema_version"] == 3 and raw["main_score"] == "recall@1"


def test_the_cli_logs_while_it_runs_and_leaves_no_handler_behind(tmp_path, data_root, capsys):
    # Only the CLI configures logging, and only for the command's duration: a handler left on
    # the root logger would write to this test's stderr after pytest has closed it.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    split = make_split()
    folder = write_sharded(tmp_path, split, *make_descriptors(split))
    assert main(["eval", "--features", str(folder), "--split", split.name, "--data-root",
                 str(data_root), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "WARNING harness.record: 1 of" in err and "queries have no positive within" in err
    assert root.handlers == handlers and root.level == level


def test_eval_cli_recall_ns_and_predictions_path(tmp_path, data_root):
    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database, dtype="float16", shards=1)
    out, sidecar = tmp_path / "r.json", tmp_path / "elsewhere" / "p.npz"
    result = CliRunner().invoke(cli, [
        "eval", "--features", str(folder / "query.h5"), "--features", str(folder / "db-0.h5"),
        "--split", split.name, "--data-root", str(data_root), "--recall-ns", "2,3",
        "--json", str(out), "--predictions", str(sidecar), "--ngpu", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    record = read_result(out)
    assert list(record.scores) == ["recall@2", "recall@3", "map@3"]
    assert record.descriptor_dtype == "float16" and sidecar.is_file()
    assert read_predictions(out).indices.shape == (NUM_QUERIES, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "tiny-evl"], "did you mean tiny-eval"),
        (["--recall-ns", "0,5"], "positive integers"),
    ],
)
def test_eval_cli_bad_input_exit_2(tmp_path, data_root, args, message):
    split = make_split()
    folder = write_sharded(tmp_path, split, *make_descriptors(split))
    argv = ["eval", "--features", str(folder), "--data-root", str(data_root), "--no-progress"]
    if "--split" not in args:
        argv += ["--split", split.name]
    result = CliRunner().invoke(cli, argv + args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_eval_cli_invalid_features_write_nothing(tmp_path, data_root):
    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database)
    (folder / "db-2.h5").unlink()  # a third of the database is missing
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["eval", "--features", str(folder), "--split", split.name,
                                      "--data-root", str(data_root), "--json", str(out)])
    assert result.exit_code == 2
    assert "error:" in result.output and "have no descriptor" in result.output
    assert not out.exists() and not list(tmp_path.glob("r*"))


def test_eval_cli_nan_descriptors_are_rejected(tmp_path, data_root):
    split = make_split()
    queries, database = make_descriptors(split)
    database[5, 3] = np.nan
    folder = write_sharded(tmp_path, split, queries, database, shuffle=False, shards=1)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["eval", "--features", str(folder), "--split", split.name,
                                      "--data-root", str(data_root), "--json", str(out)])
    assert result.exit_code == 2 and "NaN" in result.output and not out.exists()


def test_eval_cli_usage_errors(data_root):
    runner = CliRunner()
    neither = runner.invoke(cli, ["eval", "--split", "tiny-eval", "--data-root", str(data_root)])
    assert neither.exit_code == 2 and "one of --features, --method or --ranking" in neither.output
    stray = runner.invoke(
        cli, ["eval", "--features", "x.h5", "--weights", "w.pth", "--split", "tiny-eval"]
    )
    assert stray.exit_code == 2 and "need --method" in stray.output


@pytest.mark.parametrize("policy", ["miss", "exclude"])
def test_evaluate_policies_against_reference(tmp_path, policy):
    split = make_split(no_positive=policy)
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database)
    result = evaluate([folder], split, EvalConfig(block_rows=16, ngpu=0))
    expected = reference_recalls(split, queries, database, (1, 5, 10), policy)
    assert {k: v for k, v in result.scores.items() if k.startswith("recall")} == pytest.approx(
        expected
    )
    assert result.counts.evaluated_queries == NUM_QUERIES - (policy == "exclude")


def test_sharded_evaluation_gives_the_identical_record(tmp_path):
    split = make_split(spatial_nms=True)
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database, shards=3)
    config = EvalConfig(ngpu=0, block_rows=8)
    single = evaluate([folder], split, config)
    parts = [search_features([folder / "query.h5", folder / f"db-{i}.h5"], split, config,
                             partial_database=True) for i in range(3)]
    merged = merge_topk([p.topk for p in parts])
    output = dataclasses.replace(parts[0], topk=merged, digests=single.features)
    sharded = build_record(split, output, config, method="toy")
    assert sharded.scores == single.scores and sharded.counts == single.counts
    assert sharded.protocol == single.protocol and single.protocol.nms_pool == 120
    np.testing.assert_array_equal(sharded.prediction_data.indices, single.prediction_data.indices)


def test_sharded_search_of_a_query_file_that_holds_a_database_shard(tmp_path):
    """A SLURM task searches only its own database files: here the query file also holds the
    first database shard, which one task searches and the other must leave alone."""
    from harness.evaluate import search_and_hash

    split = make_split()
    queries, database = make_descriptors(split)
    half = NUM_DATABASE // 2
    both = write_features(tmp_path / "both.h5", split=split.name, method="toy",
                          query=(list(split.query_names), queries),
                          database=(list(split.database_names[:half]), database[:half]))
    rest = write_features(tmp_path / "rest.h5", split=split.name, method="toy",
                          database=(list(split.database_names[half:]), database[half:]))
    config = EvalConfig(ngpu=0, block_rows=8)
    single = evaluate([both, rest], split, config)
    first = search_and_hash([both], split, config, partial_database=True,
                            database_ranges={both: None})
    second = search_and_hash([both, rest], split, config, partial_database=True,
                             database_ranges={rest: None})
    assert (first.database_rows, second.database_rows) == (half, NUM_DATABASE - half)
    assert np.isin(
        second.topk.indices[second.topk.indices >= 0], np.arange(half, NUM_DATABASE)
    ).all()
    merged = merge_topk([first.topk, second.topk])
    np.testing.assert_array_equal(merged.indices, single.prediction_data.indices[:, :merged.k])
    by_path = {d.path: d.sha256 for d in (*first.digests, *second.digests)}
    assert by_path == {str(both): sha256_file(both), str(rest): sha256_file(rest)}


def test_row_ranges_of_one_file_merge_into_the_single_search(tmp_path):
    """Tasks searching row ranges of one file (a SLURM eval with more tasks than files): the
    merged top-K is the single search's; the task holding row 0 hashes the whole file, the
    others hash nothing; a range outside the file is an error."""
    from harness.evaluate import search_and_hash

    split = make_split()
    queries, database = make_descriptors(split)
    one = write_features(tmp_path / "one.h5", split=split.name, method="toy",
                         query=(list(split.query_names), queries),
                         database=(list(split.database_names), database))
    config = EvalConfig(ngpu=0, block_rows=7)
    single = evaluate([one], split, config)
    cuts = [0, 9, 31, NUM_DATABASE]
    parts, digests = [], []
    for index, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        output = search_and_hash([one], split, config, partial_database=True,
                                 database_ranges={one: (start, stop)},
                                 hashed=[one] if start == 0 else [])
        found = output.digests
        assert output.database_rows == stop - start
        assert np.isin(output.topk.indices[output.topk.indices >= 0],
                       np.arange(start, stop)).all()  # names map stored rows 1:1 here
        parts.append(output.topk)
        digests.append(found)
    merged = merge_topk(parts)
    np.testing.assert_array_equal(merged.indices, single.prediction_data.indices[:, :merged.k])
    # tiny blocks (a 9-row range) need not give the GEMM's bits of larger ones
    np.testing.assert_allclose(merged.scores, single.prediction_data.scores[:, :merged.k],
                               rtol=1e-6)
    assert [[d.sha256 for d in found] for found in digests] == [[sha256_file(one)], [], []]
    with pytest.raises(HarnessError, match="not within the file's"):
        search_and_hash([one], split, config, partial_database=True,
                        database_ranges={one: (5, NUM_DATABASE + 1)})


def test_partial_database_rejects_overlapping_shards(tmp_path):
    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database, shards=2, shuffle=False)
    overlap = write_features(tmp_path / "overlap.h5", split=split.name, method="toy",
                             database=(list(split.database_names[:5]), database[:5]))
    with pytest.raises(HarnessError, match="also in"):
        search_features([folder / "query.h5", folder / "db-0.h5", overlap], split,
                        EvalConfig(ngpu=0), partial_database=True)
    with pytest.raises(HarnessError, match="given more than once"):
        search_features([folder / "query.h5", folder / "db-0.h5", folder / "db-0.h5"], split,
                        EvalConfig(ngpu=0), partial_database=True)


def test_partial_database_still_needs_every_query_and_known_names(tmp_path):
    split = make_split()
    queries, database = make_descriptors(split)
    folder = tmp_path / "f"
    write_features(folder / "query.h5", split=split.name, method="toy",
                   query=(list(split.query_names[:-1]), queries[:-1]))
    write_features(folder / "db.h5", split=split.name, method="toy",
                   database=(list(split.database_names[:10]) + ["db/unknown.jpg"], database[:11]))
    with pytest.raises(HarnessError) as caught:
        search_features([folder / "query.h5", folder / "db.h5"], split, EvalConfig(ngpu=0),
                        partial_database=True)
    message = str(caught.value)
    assert "1 of 12 split query images have no descriptor" in message
    assert "1 database names are not in the split" in message
    assert "database images have no descriptor" not in message  # partial: that is expected


def _streamed_digests(paths, split, config, monkeypatch):
    """Run evaluate() and keep the digest helper it used (to see where the bytes came from)."""
    import harness.digests as digests_module
    import harness.evaluate as evaluate_module

    made = []

    class Spy(digests_module.StreamedDigests):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(evaluate_module, "StreamedDigests", Spy)
    return evaluate(paths, split, config), made[0]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_checksums_are_hashed_from_the_streamed_blocks(tmp_path, monkeypatch, dtype):
    split = make_split()
    queries, database = make_descriptors(split)
    # One file holding both parts: its /query bytes are a gap the hasher reads from disk.
    both = write_features(tmp_path / "both.h5", split=split.name, method="toy",
                          query=(list(split.query_names), queries.astype(dtype)),
                          database=(list(split.database_names[:40]), database[:40].astype(dtype)))
    rest = write_features(tmp_path / "rest.h5", split=split.name, method="toy",
                          database=(list(split.database_names[40:]), database[40:].astype(dtype)))
    paths = [both, rest]
    result, digests = _streamed_digests(paths, split, EvalConfig(ngpu=0, block_rows=8), monkeypatch)
    assert {f.path: f.sha256 for f in result.features} == {str(p): sha256_file(p) for p in paths}
    stored = split.num_database * DIM * np.dtype(dtype).itemsize
    assert digests.streamed_bytes == stored  # every descriptor byte hashed from the search's reads
    assert digests.read_bytes == sum(p.stat().st_size for p in paths) - stored
    assert result.timings.checksum_s > 0


def test_checksums_of_files_read_through_hdf5_are_read_from_disk(tmp_path, monkeypatch):
    import h5py

    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database, shards=1, shuffle=False)
    chunked = tmp_path / "chunked.h5"  # same content, HDF5-chunked: read through h5py, not mapped
    with h5py.File(folder / "db-0.h5", "r") as source, h5py.File(chunked, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        target.create_dataset("database/names", data=source["database/names"][()])
        target.create_dataset("database/descriptors", data=source["database/descriptors"][()],
                              chunks=(8, DIM))
    paths = [folder / "query.h5", chunked]
    result, digests = _streamed_digests(paths, split, EvalConfig(ngpu=0, block_rows=8), monkeypatch)
    assert {f.path: f.sha256 for f in result.features} == {str(p): sha256_file(p) for p in paths}
    assert digests.streamed_bytes == 0 and digests.read_bytes == sum(
        p.stat().st_size for p in paths
    )


def test_streamed_digest_falls_back_when_blocks_come_out_of_order(tmp_path):
    from harness.digests import StreamedDigests
    from harness.search import BlockSource

    path = tmp_path / "blob.bin"
    payload = np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8)
    path.write_bytes(b"head" + payload.tobytes() + b"tail")
    source = BlockSource(path, np.arange(1))
    digests = StreamedDigests([path], [path])
    digests.on_stored_block(source, 4 + 2048, payload[2048:])  # second half first: out of order
    digests.on_stored_block(source, 4, payload[:2048])
    (digest,), _ = digests.result()
    assert digest.sha256 == sha256_file(path) and digest.bytes == path.stat().st_size
    in_order = StreamedDigests([path], [path])
    in_order.on_stored_block(source, 4, payload[:1000])
    in_order.on_stored_block(source, 1004, payload[1000:])
    (digest,), _ = in_order.result()
    assert digest.sha256 == sha256_file(path) and in_order.streamed_bytes == 4096
    assert in_order.read_bytes == 8  # "head" and "tail"


def test_bf16_shortlist_backend_gives_the_same_record(tmp_path):
    pytest.importorskip("torch")
    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path, split, queries, database, dtype="float16")
    exact = evaluate([folder], split, EvalConfig(ngpu=0, block_rows=16))
    shortlisted = evaluate([folder], split, EvalConfig(ngpu=0, block_rows=16, cpu_backend="bf16"))
    assert shortlisted.search_backend.startswith("bf16") and shortlisted.scores == exact.scores
    np.testing.assert_array_equal(
        shortlisted.prediction_data.indices, exact.prediction_data.indices
    )
