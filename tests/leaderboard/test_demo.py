"""`harness demo` (what `make demo` runs) on the tiny preset: city, probe, study, leaderboard."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

# The study's settings shrunk so that every stage runs in seconds on the tiny city.
TINY_STUDY = ["seg_epochs=1", "seg_crop_size=64", "seg_scale_min=64", "seg_scale_max=80",
              "seg_short_side=96", "generations=1", "epochs=1",
              "image_height=64", "image_width=96", "num_clusters=4", "workers=0",
              "extra_train_options=neg_pool=8,neg_num=2,pos_num=2,pos_pool=2"]


def _demo(tmp_path, *args):
    from harness.cli import cli

    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--preset", "tiny",
                                      *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _records(tmp_path) -> dict[tuple[str, str], dict]:
    records = {}
    for path in sorted((tmp_path / "demo" / "results").rglob("*.json")):
        record = json.loads(path.read_text())
        records[record["method"], record["split"]] = record
    return records


def test_demo_without_training_prints_the_probe_leaderboard(tmp_path):
    result = _demo(tmp_path, "--no-train")
    records = _records(tmp_path)
    assert set(records) == {("probe-hist", f"synth-{name}") for name in
                            ("indoor-ams-1", "indoor-ams-2", "outdoor-ams", "ams30k-test")}
    assert "probe-hist" in result.output and "4 results" in result.output
    readme = (tmp_path / "demo" / "leaderboard" / "README.md").read_text()
    assert "Synthetic city: Indoor-Ams" in readme and "| probe-hist" in readme

    # A rerun finds everything cached and submits nothing new.
    again = _demo(tmp_path, "--no-train")
    assert _records(tmp_path).keys() == records.keys()
    assert "4 results" in again.output


def test_demo_rejects_an_unknown_study_option(tmp_path):
    from harness.cli import cli

    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--preset", "tiny",
                                      "--study-option", "seg_epoch=3"])
    assert result.exit_code == 2
    assert "seg_epoch" in result.output and "seg_epochs" in result.output  # the close match


def test_demo_with_training_submits_every_study_method(tmp_path):
    pytest.importorskip("torch")
    from leaderboard.demo import EVAL_SPLITS, STUDY_METHODS

    args = []
    for option in TINY_STUDY:
        args += ["--study-option", option]
    result = _demo(tmp_path, *args)
    records = _records(tmp_path)
    methods = {method for method, _ in records}
    assert methods == {"probe-hist", *STUDY_METHODS.values()}
    for method in STUDY_METHODS.values():
        assert {split for m, split in records if m == method} == {
            f"synth-{name}" for name in EVAL_SPLITS}
    assert "| iovpr-gray, true masks |" in result.output  # the study table is printed

    # One database extraction per (method, weights, database): the three splits on the
    # Outdoor-Ams database share one file, Ams30k-test has its own. Six (method, weights)
    # pairs; the untrained model's gray-query row runs on the indoor sets only.
    databases = sorted((tmp_path / "demo" / "study" / "features" / "database").rglob("*.h5"))
    assert len(databases) == 6 + 5, databases
    assert len({p.parent for p in databases}) == 6
    record = records["iovpr-gray-small", "synth-indoor-ams-1"]
    assert len(record["result"]["features"]) == 2
