"""Extraction precision as a user choice (fp32 / bf16 / fp16), recorded, never reused silently."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from harness.cli import cli  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.features import read_descriptors, read_info  # noqa: E402
from methods.checkpoints import save_checkpoint  # noqa: E402
from methods.extract import ExtractOptions, extract, resolve_device  # noqa: E402
from methods.netvlad import ModelConfig, build_model  # noqa: E402
from methods.precision import recorded_precision  # noqa: E402
from methods.provider import provide_features  # noqa: E402
from methods.registry import get_method  # noqa: E402

torch.set_num_threads(1)
CONFIG = ModelConfig(backbone="small", num_clusters=8, image_height=48, image_width=64)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = build_model(CONFIG, seed=0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    return save_checkpoint(path, state_dict=model.state_dict(), model_config=CONFIG.to_dict())


def _options(precision="fp32", **kwargs):
    return ExtractOptions(device="cpu", batch_size=16, workers=0, progress=False,
                          precision=precision, **kwargs)


def _extract_cli(tiny_city, weights, out, *extra):
    return CliRunner().invoke(cli, [
        "extract", "-m", "netvlad", "-w", str(weights), "-s", "synth-indoor-ams-1",
        "--data-root", str(tiny_city.data_root), "--part", "query", "-o", str(out),
        "--device", "cpu", "--workers", "0", "--no-progress", *extra,
    ])


def test_precisions_run_and_are_recorded(tiny_city, weights, tmp_path):
    split = tiny_city.split("indoor-ams-1")
    method = get_method("netvlad", {}, weights=weights)
    files = {
        precision: extract(method, split=split, out=tmp_path / f"{precision}.h5",
                           parts=("query",), options=_options(precision))
        for precision in ("fp32", "bf16", "fp16")
    }
    reference = read_descriptors(files["fp32"], "query")
    for precision, path in files.items():
        attrs = read_info(path).attrs
        assert attrs["extraction_precision"] == precision
        assert "extraction_amp" not in attrs
        if precision == "fp32":
            continue
        reduced = read_descriptors(path, "query")
        # Reduced precision really ran (the descriptors moved) and stayed close.
        assert np.abs(reduced - reference).max() > 1e-6
        assert np.min(np.sum(reduced * reference, axis=1)) > 0.98


def test_cli_default_is_fp32_and_another_precision_is_refused(tiny_city, weights, tmp_path):
    out = tmp_path / "q.h5"
    first = _extract_cli(tiny_city, weights, out)
    assert first.exit_code == 0, first.output
    assert read_info(out).attrs["extraction_precision"] == "fp32"
    before = read_descriptors(out, "query")

    again = _extract_cli(tiny_city, weights, out, "--precision", "bf16")
    assert again.exit_code == 2
    assert "precision fp32 (this run: bf16)" in again.output and "--overwrite" in again.output
    np.testing.assert_array_equal(read_descriptors(out, "query"), before)  # untouched

    same = _extract_cli(tiny_city, weights, out, "--precision", "fp32")
    assert same.exit_code == 0, same.output
    replaced = _extract_cli(tiny_city, weights, out, "--precision", "bf16", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert read_info(out).attrs["extraction_precision"] == "bf16"


def _downgrade_to_amp_attrs(path, device):
    """Rewrite ``path``'s attributes as files written before ``extraction_precision`` existed."""
    with h5py.File(path, "r+") as handle:
        del handle.attrs["extraction_precision"]
        handle.attrs["extraction_amp"] = True
        handle.attrs["extraction_device"] = device


def test_provider_keeps_precisions_apart_and_recomputes_old_amp_files(tiny_city, weights,
                                                                      tmp_path):
    split = tiny_city.split("indoor-ams-1")
    kwargs = dict(method="netvlad", split=split, out_dir=tmp_path / "cache", weights=str(weights),
                  options={}, device="cpu", batch_size=16)
    fp32 = provide_features(**kwargs)
    bf16 = provide_features(**kwargs, precision="bf16")
    assert fp32[0].parent != bf16[0].parent and bf16[0].parent.parent.name.endswith("-bf16")
    assert [read_info(p).attrs["extraction_precision"] for p in fp32 + bf16] == \
        ["fp32", "fp32", "bf16", "bf16"]
    stamps = [p.stat().st_mtime_ns for p in fp32]
    assert provide_features(**kwargs) == fp32
    assert [p.stat().st_mtime_ns for p in fp32] == stamps  # reused

    # A cache file from before the attribute existed, extracted under CUDA's bf16 autocast, is
    # not taken for fp32 features: it is extracted again.
    _downgrade_to_amp_attrs(fp32[0], "cuda:0")
    assert recorded_precision(read_info(fp32[0]).attrs) == "bf16"
    provide_features(**kwargs)
    assert read_info(fp32[0]).attrs["extraction_precision"] == "fp32"
    assert fp32[1].stat().st_mtime_ns == stamps[1]  # the matching database file was kept


def test_recorded_precision_of_old_files():
    assert recorded_precision({"extraction_amp": True, "extraction_device": "cuda:1"}) == "bf16"
    assert recorded_precision({"extraction_amp": True, "extraction_device": "cpu"}) == "fp32"
    assert recorded_precision({"extraction_amp": False, "extraction_device": "cuda"}) == "fp32"
    assert recorded_precision({}) is None
    assert recorded_precision({"extraction_precision": "fp16", "extraction_amp": True}) == "fp16"


def test_eval_record_states_the_precision(tiny_city, weights, tmp_path):
    record = tmp_path / "r.json"
    result = CliRunner().invoke(cli, [
        "eval", "--method", "netvlad", "--weights", str(weights), "--split", "synth-indoor-ams-2",
        "--data-root", str(tiny_city.data_root), "--features-dir", str(tmp_path / "feats"),
        "--device", "cpu", "--precision", "bf16", "--json", str(record), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    attrs = json.loads(record.read_text())["method_attrs"]
    assert attrs["extraction_precision"] == "bf16"
    assert not list((tmp_path / "feats").glob("netvlad-????????????"))  # no fp32 folder
    result = CliRunner().invoke(cli, [
        "eval", "--features", str(tmp_path / "x.h5"), "--split", "synth-indoor-ams-2",
        "--data-root", str(tiny_city.data_root), "--precision", "bf16",
    ])
    assert result.exit_code == 2 and "need --method" in result.output


def test_mixed_precisions_are_stated_in_the_record(tiny_city, weights, tmp_path):
    split = tiny_city.split("indoor-ams-2")
    method = get_method("netvlad", {}, weights=weights)
    query = extract(method, split=split, out=tmp_path / "q.h5", parts=("query",),
                    options=_options("bf16"))
    database = extract(method, split=split, out=tmp_path / "db.h5", parts=("database",),
                       options=_options("fp32"))
    record = tmp_path / "r.json"
    result = CliRunner().invoke(cli, [
        "eval", "--features", str(query), "--features", str(database), "--split",
        "synth-indoor-ams-2", "--data-root", str(tiny_city.data_root), "--json", str(record),
        "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    attrs = json.loads(record.read_text())["method_attrs"]
    assert attrs["extraction_precision"] == "mixed: fp32: db.h5, bf16: q.h5"


def test_explicit_cuda_without_cuda_is_an_error(tiny_city, weights, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HarnessError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device(None).type == "cpu"  # the default still falls back
    out = tmp_path / "q.h5"
    result = _extract_cli(tiny_city, weights, out, "--device", "cuda")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: --device cuda: CUDA is not available")
    assert not out.exists()
    result = CliRunner().invoke(cli, [
        "eval", "--method", "netvlad", "--weights", str(weights), "--split", "synth-indoor-ams-2",
        "--data-root", str(tiny_city.data_root), "--features-dir", str(tmp_path / "feats"),
        "--device", "cuda:0",
    ])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert not (tmp_path / "feats").exists()


def test_unknown_precision_is_rejected():
    with pytest.raises(HarnessError, match="precision must be one of fp32, bf16, fp16"):
        ExtractOptions(precision="fp8")
