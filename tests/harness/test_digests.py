"""Remembered sha256 digests: reused only while the file's identity holds, never when racy."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.config import EvalConfig
from harness.digests import (
    DIGEST_CACHE_ENV,
    RACY_SECONDS,
    FileIdentity,
    remember_digest,
    remembered_digest,
)
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.io import sha256_file
from harness.splits import register_split
from tests.harness.test_eval_cli import make_descriptors, make_split, write_sharded


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "digests"
    monkeypatch.setenv(DIGEST_CACHE_ENV, str(folder))
    return folder


def age(path, seconds=60.0):
    """Set the file's modification time ``seconds`` into the past (out of the racy window)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def spy_hashing(monkeypatch):
    import harness.digests as digests_module
    import harness.evaluate as evaluate_module

    made = []

    class Spy(digests_module.StreamedDigests):
        def __init__(self, paths, streamed):
            super().__init__(paths, streamed)
            made.append(list(paths))

    monkeypatch.setattr(evaluate_module, "StreamedDigests", Spy)
    return made  # one entry per evaluation that hashed anything


@pytest.fixture
def features(tmp_path):
    split = make_split()
    queries, database = make_descriptors(split)
    folder = write_sharded(tmp_path / "features", split, queries, database)
    paths = sorted(folder.glob("*.h5"))
    for path in paths:
        age(path)
    return split, paths


def test_a_second_evaluation_reuses_the_digests(cache, features, monkeypatch):
    split, paths = features
    hashed = spy_hashing(monkeypatch)
    first = evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    second = evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    assert hashed == [paths]  # nothing hashed the second time
    expected = {str(p): sha256_file(p) for p in paths}
    assert {f.path: f.sha256 for f in first.features} == expected
    assert {f.path: f.sha256 for f in second.features} == expected
    assert [f.bytes for f in second.features] == [p.stat().st_size for p in paths]
    assert second.timings.checksum_s == 0 and first.timings.checksum_s > 0
    assert len(list(cache.glob("*.json"))) == len(paths)
    again = evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8, reuse_digests=False))
    assert hashed == [paths, paths]  # --rehash
    assert {f.path: f.sha256 for f in again.features} == expected


def test_rewritten_files_are_hashed_again_even_with_the_old_mtime(cache, features, monkeypatch):
    split, paths = features
    evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    target = paths[-1]
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one byte of the file (past the descriptors: still a valid file)
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime restored, ctime is not
    assert FileIdentity.of(target).mtime_ns == stat.st_mtime_ns
    hashed = spy_hashing(monkeypatch)
    result = evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    assert hashed == [[target]]
    assert {f.path: f.sha256 for f in result.features}[str(target)] == sha256_file(target)


def test_recently_modified_files_are_not_remembered(cache, tmp_path):
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x" * 100)
    identity = FileIdentity.of(path)
    digest = sha256_file(path)
    assert not remember_digest(identity, digest, time.time_ns())  # modified just now: racy
    assert remembered_digest(path)[0] is None
    age(path, 10 * RACY_SECONDS)
    identity = FileIdentity.of(path)
    assert remember_digest(identity, digest, time.time_ns())
    assert remembered_digest(path) == (digest, identity)
    assert not remember_digest(identity, "not a digest", time.time_ns())


def test_forged_or_damaged_entries_are_ignored(cache, tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"y" * 10)
    age(path)
    identity = FileIdentity.of(path)
    assert remember_digest(identity, "a" * 64, time.time_ns())
    (entry,) = cache.glob("*.json")
    for forged in ({"identity": {**json.loads(entry.read_text())["identity"], "size": 11},
                    "sha256": "a" * 64},
                   {"identity": json.loads(entry.read_text())["identity"], "sha256": "../x"},
                   ["not", "a", "dict"]):
        entry.write_text(json.dumps(forged))
        assert remembered_digest(path) == (None, identity)
    entry.write_bytes(b"\xff" * 10_000)  # not text, and larger than any entry
    assert remembered_digest(path) == (None, identity)


def test_remembering_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(DIGEST_CACHE_ENV, "off")
    path = tmp_path / "file.bin"
    path.write_bytes(b"z")
    age(path)
    assert not remember_digest(FileIdentity.of(path), "b" * 64, time.time_ns())
    assert remembered_digest(path)[0] is None
    assert not list(tmp_path.rglob("*.json"))


def test_a_file_changed_during_the_evaluation_is_an_error(cache, features, monkeypatch):
    import harness.evaluate as evaluate_module

    split, paths = features
    evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))  # remembered
    original = evaluate_module.search_features

    def touching(*args, **kwargs):
        output = original(*args, **kwargs)
        os.utime(paths[1])  # the file changes while it is searched
        return output

    monkeypatch.setattr(evaluate_module, "search_features", touching)
    with pytest.raises(HarnessError, match="changed during the evaluation") as raised:
        evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    assert str(paths[1]) in raised.value.one_line()


def test_the_cli_rehashes_on_request(cache, features, tmp_path, monkeypatch):
    split, paths = features
    data_root = tmp_path / "data"
    register_split(split, data_root)
    arguments = ["eval", "--split", split.name, "--data-root", str(data_root), "--ngpu", "0",
                 "--no-progress", "--bootstrap-resamples", "0", "--json"]
    for path in paths:
        arguments[1:1] = ["--features", str(path)]
    hashed = spy_hashing(monkeypatch)
    runner = CliRunner()
    for run, extra in enumerate(([], [], ["--rehash"])):
        out = runner.invoke(cli, arguments + [str(tmp_path / f"r{run}.json")] + extra)
        assert out.exit_code == 0, out.output
    assert [sorted(h) for h in hashed] == [paths, paths]  # the first run and the --rehash run
    records = [json.loads((tmp_path / f"r{run}.json").read_text()) for run in range(3)]
    assert records[0]["features"] == records[1]["features"] == records[2]["features"]
    assert records[0]["scores"] == records[1]["scores"] == records[2]["scores"]


def test_kernel_rates_are_settled_before_the_evaluations_own_threads_start(features,
                                                                           monkeypatch):
    # Measured beside the evaluation's own threads, the rates and their ratio are skewed.
    import threading

    import harness.search.choice as choice
    from harness.gemm_rates import KernelRates

    monkeypatch.setenv("HARNESS_DIGEST_CACHE", "off")
    split, paths = features
    alive_at_calls = []

    def spy(*args, **kwargs):
        alive_at_calls.append(sorted(thread.name for thread in threading.enumerate()
                                     if thread.name.startswith("harness-")))
        return KernelRates(200.0, None, None, "test", "now")

    monkeypatch.setattr(choice, "kernel_rates", spy)
    # As if this tiny split were large enough for the shortlist (where auto needs the rates).
    monkeypatch.setattr(choice, "BF16_AUTO_MIN_ROWS", 1)
    monkeypatch.setattr(choice, "BF16_AUTO_MIN_QUERIES", 1)
    evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    assert alive_at_calls and alive_at_calls[0] == []  # the first call: none of ours yet
    alive_at_calls.clear()
    evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8, cpu_backend="numpy"))
    assert alive_at_calls == []  # a backend named: no rates needed
    monkeypatch.setattr(choice, "BF16_AUTO_MIN_ROWS", 1_000_000)
    evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    assert alive_at_calls == []  # a small search: auto never needs them
