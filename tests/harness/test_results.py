"""Result records: round trip, strict validation, schema versions, prediction sidecars."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from harness.config import EvalConfig
from harness.errors import HarnessError
from harness.results import (
    SCHEMA_VERSION,
    Counts,
    EvalResult,
    FileDigest,
    Hardware,
    Predictions,
    Protocol,
    Timings,
    iter_results,
    read_predictions,
    read_result,
)

SHA = "ab" * 32


def make_result(**changes) -> EvalResult:
    values = dict(
        split="synth-outdoor-ams",
        split_sha256=SHA,
        method="netvlad",
        scores={"recall@1": 0.5123456789, "recall@5": 0.75, "map@5": 0.4},
        protocol=Protocol(radius_m=25.0, recall_ns=(1, 5), map_k=5, k=5, spatial_nms=False,
                          nms_pool=0, no_positive="miss"),
        counts=Counts(queries=4, database=10, queries_without_positive=1, evaluated_queries=4),
        features=(FileDigest("features/q.h5", SHA, 1234),),
        descriptor_dim=8,
        descriptor_dtype="float16",
        search_backend="numpy",
        timings=Timings(load_s=0.1, checksum_s=0.01, search_s=0.2, metrics_s=0.3, total_s=0.61),
        peak_rss_bytes=123456,
        hardware=Hardware(cpu_model="cpu", cpu_cores=2, gpus=(), blas="openblas"),
        harness_version="0.1.0",
        git_commit=None,
        date="2026-01-01T00:00:00Z",
        method_attrs={"weights": "sfrs.pth"},
    )
    values.update(changes)
    return EvalResult(**values)


def test_round_trip_and_rounding():
    result = make_result()
    data = result.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["scores"]["recall@1"] == 0.512346  # 6 decimals on write
    assert data["main_score"] == "recall@1"
    again = EvalResult.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    assert again.main_score_value == pytest.approx(0.512346)
    assert again.protocol.recall_ns == (1, 5) and again.hardware.gpus == ()


def test_schema_2_records_read_as_the_current_schema_without_efficiency():
    data = make_result(efficiency={"descriptor_bytes": 16}).to_dict()
    assert data["efficiency"] == {"descriptor_bytes": 16}
    del data["efficiency"]
    data["schema_version"] = 2
    old = EvalResult.from_dict(json.loads(json.dumps(data)))
    assert old.schema_version == SCHEMA_VERSION and old.efficiency == {}
    assert old.to_dict()["scores"] == data["scores"]


def test_scores_are_ordered_recall_first():
    result = make_result(scores={"map@5": 0.1, "recall@5": 0.2, "recall@1": 0.1})
    assert list(result.scores) == ["recall@1", "recall@5", "map@5"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(extra=1), "unknown keys \\['extra'\\]"),
        (lambda d: d["protocol"].update(radius=25), "record.protocol: unknown keys \\['radius'\\]"),
        (lambda d: d.pop("method"), "missing keys \\['method'\\]"),
        (lambda d: d.update(schema_version=99), "unsupported schema_version 99"),
        (lambda d: d.update(schema_version=2), "unknown keys \\['efficiency'\\]"),
        (lambda d: d.pop("schema_version"), "unsupported schema_version None"),
        (lambda d: d["counts"].update(queries="4"), "record.counts.queries: expected an integer"),
        (lambda d: d["scores"].update({"recall@1": 1.5}), "outside \\[0, 1\\]"),
        (lambda d: d["scores"].update({"ndcg@3": 0.5}), "invalid score name"),
        (lambda d: d.update(main_score="recall@10"), "main_score 'recall@10' is not among"),
        (lambda d: d["features"][0].update(sha256="xyz"), "sha256 must be 64"),
    ],
)
def test_invalid_records_are_rejected(mutate, message):
    data = make_result().to_dict()
    mutate(data)
    with pytest.raises(HarnessError, match=message):
        EvalResult.from_dict(data)


def test_read_result_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    data = make_result().to_dict()
    data["surprise"] = True
    path.write_text(json.dumps(data))
    with pytest.raises(HarnessError) as info:
        read_result(path)
    assert str(path) in info.value.one_line() and "surprise" in info.value.one_line()
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(HarnessError, match="not a readable JSON record"):
        read_result(tmp_path / "broken.json")


def test_write_with_predictions_sidecar(tmp_path):
    predictions = Predictions(
        indices=np.arange(20).reshape(4, 5),
        scores=np.linspace(1, 0, 20, dtype=np.float32).reshape(4, 5),
        first_positive_rank=np.array([0, -1, 2, 4], np.int32),
        has_positive=np.array([True, False, True, True]),
    )
    result = make_result(prediction_data=predictions)
    path = result.write(tmp_path / "out" / "run.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json", "run.predictions.npz"]
    record = read_result(path)
    assert record.predictions.path == "run.predictions.npz"
    loaded = read_predictions(path)
    np.testing.assert_array_equal(loaded.indices, predictions.indices)
    np.testing.assert_array_equal(loaded.first_positive_rank, predictions.first_positive_rank)
    # A modified sidecar no longer matches its record.
    with open(path.parent / "run.predictions.npz", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(HarnessError, match="does not match the sha256"):
        read_predictions(path)


def test_write_is_deterministic_and_iter_results(tmp_path):
    result = make_result()
    first = result.write(tmp_path / "a" / "r.json").read_bytes()
    second = result.write(tmp_path / "b" / "r.json").read_bytes()
    assert first == second
    assert not list(tmp_path.rglob("*.tmp"))
    found = list(iter_results(tmp_path))
    assert [p.parent.name for p, _ in found] == ["a", "b"]
    assert found[0][1].to_dict() == result.to_dict()


def test_config_rejects_unknown_keys_and_resolves_protocol():
    with pytest.raises(HarnessError, match="unknown EvalConfig keys \\['recal_ns'\\].*valid keys"):
        EvalConfig.from_dict({"recal_ns": [1]})
    config = EvalConfig.from_dict({"recall_ns": [10, 1, 5]})
    assert config.recall_ns == (1, 5, 10)

    class FakeSplit:
        radius_m, recall_ns, spatial_nms, no_positive = 25.0, (1, 5, 10, 20), True, "exclude"

    protocol = config.protocol(FakeSplit())
    assert (protocol.k, protocol.nms_pool, protocol.map_k) == (120, 120, 10)
    assert protocol.no_positive == "exclude" and protocol.spatial_nms
    assert EvalConfig().protocol(FakeSplit()).k == 20 * 12
    assert dataclasses.replace(config, spatial_nms=False).protocol(FakeSplit()).k == 10
