"""Extraction into feature files, shards, --images, hloc export, the eval provider, PCA fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from harness.cli import cli  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.features import read_descriptors, read_info, read_names  # noqa: E402
from harness.splits import Split  # noqa: E402
from methods.checkpoints import save_checkpoint  # noqa: E402
from methods.extract import (  # noqa: E402
    ExtractOptions,
    export_hloc,
    extract,
    extract_images,
    shard_rows,  # noqa: E402
)
from methods.netvlad import ModelConfig, build_model  # noqa: E402
from methods.provider import provide_features  # noqa: E402
from methods.registry import get_method  # noqa: E402
from methods.transforms import ResizeUint8, normalize_batch  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower
CONFIG = ModelConfig(backbone="small", num_clusters=8, image_height=48, image_width=64)
OPTIONS = ExtractOptions(device="cpu", batch_size=16, workers=0, progress=False)


def _save_model(path, seed):
    model = build_model(CONFIG, seed=seed)
    return (
        save_checkpoint(path, state_dict=model.state_dict(), model_config=CONFIG.to_dict()),
        model,
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path, model = _save_model(tmp_path_factory.mktemp("weights") / "model.pt", seed=0)
    return path, model.eval()


def _direct(model, path):
    with Image.open(path) as image:
        tensor = ResizeUint8(CONFIG.image_height, CONFIG.image_width)(image.convert("RGB"))
    with torch.no_grad():
        return model(normalize_batch(tensor[None]))[0].numpy()


def _mini_split(tmp_path, count=4, missing=None, corrupt=None):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"img{i}.jpg" for i in range(count)]
    for name in names:
        if name == missing:
            continue
        if name == corrupt:
            (folder / name).write_bytes(b"not a jpeg")
            continue
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    utm = np.column_stack([np.arange(count) * 5.0, np.zeros(count)])
    return Split(
        name="mini",
        query_names=tuple(names[:1]),
        database_names=tuple(names),
        query_utm=utm[:1],
        database_utm=utm,
        query_root=str(folder),
        database_root=str(folder),
    )


# ---------------------------------------------------------------------------- extraction
def test_extract_writes_the_feature_layout(tiny_city, weights, tmp_path):
    path, model = weights
    split = tiny_city.split("outdoor-ams")
    method = get_method("netvlad", {}, weights=path)
    out = extract(method, split=split, out=tmp_path / "f.h5", options=OPTIONS)
    info = read_info(out)
    assert info.split == split.name and info.method == "netvlad"
    assert (
        info.parts["query"].count == split.num_queries
        and info.parts["database"].count == split.num_database
    )
    assert info.parts["database"].dim == 8 * 128
    assert info.attrs["method_fingerprint"] == method.fingerprint_sha256()
    assert info.attrs["split_sha256"] == split.sha256
    names = read_names(out, "database")
    assert names == list(split.database_names)
    descriptors = read_descriptors(out, "database")
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, rtol=1e-5)
    row = 17
    np.testing.assert_allclose(
        descriptors[row],
        _direct(model, f"{split.database_root}/{names[row]}"),
        rtol=1e-4,
        atol=1e-5,
    )


def test_extract_then_eval_cli(tiny_city, weights, tmp_path):
    path, _ = weights
    runner = CliRunner()
    out = tmp_path / "features.h5"
    result = runner.invoke(
        cli,
        [
            "extract",
            "--method",
            "netvlad",
            "--weights",
            str(path),
            "--split",
            "synth-outdoor-ams",
            "--data-root",
            str(tiny_city.data_root),
            "--out",
            str(out),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            "--dtype",
            "float16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_info(out).parts["query"].dtype == "float16"
    record = tmp_path / "result.json"
    result = runner.invoke(
        cli,
        [
            "eval",
            "--features",
            str(out),
            "--split",
            "synth-outdoor-ams",
            "--data-root",
            str(tiny_city.data_root),
            "--json",
            str(record),
        ],
    )
    assert result.exit_code == 0, result.output
    assert record.is_file() and "recall@1" in record.read_text()


def test_sharded_extraction_is_resumable(tiny_city, weights, tmp_path):
    path, _ = weights
    split = tiny_city.split("outdoor-ams")
    method = get_method("netvlad", {}, weights=path)
    folder = tmp_path / "shards"
    paths = [
        extract(method, split=split, out=folder, shard=(i, 3), options=OPTIONS) for i in range(3)
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        "database-00000-of-00003.h5",
        "database-00001-of-00003.h5",
        "database-00002-of-00003.h5",
        "query.h5",
    ]
    names = sum((read_names(p, "database") for p in paths), [])
    assert names == list(split.database_names)
    assert "database" not in read_info(folder / "query.h5").parts
    assert read_info(paths[1]).attrs["shard"] == "1/3"
    whole = extract(
        method, split=split, out=tmp_path / "whole.h5", parts=("database",), options=OPTIONS
    )
    stacked = np.concatenate([read_descriptors(p, "database") for p in paths])
    np.testing.assert_allclose(stacked, read_descriptors(whole, "database"), rtol=1e-5, atol=1e-6)
    # A finished shard is skipped; a missing one is written again.
    before = paths[1].stat().st_mtime_ns
    paths[2].unlink()
    for i in range(3):
        extract(method, split=split, out=folder, shard=(i, 3), options=OPTIONS)
    assert paths[1].stat().st_mtime_ns == before and paths[2].is_file()
    # The harness evaluates the folder as it is.
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--features",
            str(folder),
            "--split",
            "synth-outdoor-ams",
            "--data-root",
            str(tiny_city.data_root),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output


def test_shard_rows_cover_everything_once():
    for total in (0, 1, 7, 100):
        for count in (1, 3, 8):
            rows = [list(shard_rows(total, (i, count))) for i in range(count)]
            assert sum(rows, []) == list(range(total))


def test_existing_file_of_other_weights(tiny_city, weights, tmp_path):
    path, _ = weights
    other, _ = _save_model(tmp_path / "other.pt", seed=1)
    split = tiny_city.split("outdoor-ams")
    out = extract(
        get_method("netvlad", {}, weights=path),
        split=split,
        out=tmp_path / "f.h5",
        parts=("query",),
        options=OPTIONS,
    )
    with pytest.raises(HarnessError, match=r"exists with other features \(another method"):
        extract(
            get_method("netvlad", {}, weights=other),
            split=split,
            out=out,
            parts=("query",),
            options=OPTIONS,
        )
    overwrite = ExtractOptions(device="cpu", workers=0, progress=False, overwrite=True)
    extract(
        get_method("netvlad", {}, weights=other),
        split=split,
        out=out,
        parts=("query",),
        options=overwrite,
    )
    assert (
        read_info(out).attrs["method_fingerprint"]
        == get_method("netvlad", {}, weights=other).fingerprint_sha256()
    )


@pytest.mark.parametrize(
    "problem, message", [("missing", "image file not found"), ("corrupt", "unreadable image")]
)
def test_bad_image_is_an_error_naming_it(weights, tmp_path, problem, message):
    path, _ = weights
    split = _mini_split(
        tmp_path,
        missing="img2.jpg" if problem == "missing" else None,
        corrupt="img2.jpg" if problem == "corrupt" else None,
    )
    out = tmp_path / "f.h5"
    with pytest.raises(HarnessError, match=message) as info:
        extract(get_method("netvlad", {}, weights=path), split=split, out=out, options=OPTIONS)
    assert info.value.path.endswith("img2.jpg")
    assert not out.exists() and not list(tmp_path.glob(".f.h5*"))


def test_bad_image_cli_exit_code(weights, tmp_path):
    path, _ = weights
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("RGB", (30, 20)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 broken")
    result = CliRunner().invoke(
        cli,
        [
            "extract",
            "-m",
            "netvlad",
            "-w",
            str(path),
            "--images",
            str(folder),
            "--out",
            str(tmp_path / "x.h5"),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2
    assert (
        result.output.startswith(f"error: {folder / 'b.jpg'}: ")
        and "unreadable image" in result.output
    )


def test_images_mode_folder_and_list(weights, tmp_path):
    path, model = weights
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("b.jpg", "a.png", "sub/c.jpg"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / name)
    method = get_method("netvlad", {}, weights=path)
    out = extract_images(method, images=folder, out=tmp_path / "folder.h5", options=OPTIONS)
    assert read_names(out, "database") == ["a.png", "b.jpg", "sub/c.jpg"]
    assert read_info(out).split == "images:photos"
    listing = folder / "list.txt"
    listing.write_text(f"# two images\nsub/c.jpg\n\n{folder / 'a.png'}\n")
    listed = extract_images(
        method, images=listing, out=tmp_path / "list.h5", part="query", options=OPTIONS
    )
    assert read_names(listed, "query") == ["sub/c.jpg", "a.png"]
    np.testing.assert_allclose(
        read_descriptors(listed, "query")[1], _direct(model, folder / "a.png"), rtol=1e-4, atol=1e-5
    )


def test_hloc_export(weights, tmp_path):
    import h5py

    path, _ = weights
    split = _mini_split(tmp_path)
    features = extract(
        get_method("netvlad", {}, weights=path),
        split=split,
        out=tmp_path / "f.h5",
        parts=("database",),
        options=OPTIONS,
    )
    out = export_hloc([features], tmp_path / "global-feats.h5")
    descriptors = read_descriptors(features, "database")
    with h5py.File(out, "r") as handle:
        assert sorted(handle) == sorted(split.database_names)
        np.testing.assert_array_equal(handle["img3.jpg"]["global_descriptor"][()], descriptors[3])


def test_keep_aspect_queries_come_one_per_batch(weights, tmp_path):
    path, _ = weights
    folder = tmp_path / "tokyo"
    folder.mkdir()
    for i, size in enumerate([(64, 48), (48, 64), (80, 48)]):
        Image.new("RGB", size, (i * 40, 100, 200)).save(folder / f"q{i}.jpg")
    utm = np.zeros((3, 2))
    split = Split(
        name="mini-tokyo247",
        query_names=("q0.jpg", "q1.jpg", "q2.jpg"),
        database_names=("q0.jpg",),
        query_utm=utm,
        database_utm=utm[:1],
        query_root=str(folder),
        database_root=str(folder),
    )
    method = get_method("netvlad", {"short_side": "32"}, weights=path)
    out = extract(method, split=split, out=tmp_path / "t.h5", parts=("query",), options=OPTIONS)
    assert read_descriptors(out, "query").shape == (3, 8 * 128)


# ------------------------------------------------------------------------------ provider
def test_provider_extracts_once_and_reuses(tiny_city, weights, tmp_path):
    path, _ = weights
    split = tiny_city.split("indoor-ams-1")
    kwargs = dict(
        method="netvlad",
        split=split,
        out_dir=tmp_path / "cache",
        weights=str(path),
        options={},
        device="cpu",
        batch_size=16,
    )
    first = provide_features(**kwargs)
    assert [p.name for p in first] == ["query.h5", "database-00000-of-00001.h5"]
    stamps = [p.stat().st_mtime_ns for p in first]
    second = provide_features(**kwargs)
    assert second == first and [p.stat().st_mtime_ns for p in second] == stamps
    other, _ = _save_model(tmp_path / "other.pt", seed=2)
    third = provide_features(**{**kwargs, "weights": str(other)})
    assert third[0].parent != first[0].parent


def test_splits_sharing_a_database_extract_it_once(tiny_city, weights, tmp_path, caplog,
                                                  monkeypatch):
    """Indoor-Ams 1, Indoor-Ams 2 and Outdoor-Ams share one database: extracted once, then
    reused (same files, untouched); each split's queries are extracted; another precision or
    dtype key is another database."""
    import logging

    path, _ = weights
    kwargs = dict(method="netvlad", out_dir=tmp_path / "cache", weights=str(path), options={},
                  device="cpu", batch_size=16)
    splits = [tiny_city.split(name) for name in ("indoor-ams-1", "indoor-ams-2", "outdoor-ams")]
    assert len({s.database_names for s in splits}) == 1
    caplog.set_level(logging.INFO, logger="methods.extract")
    provided = [provide_features(split=split, **kwargs) for split in splits]
    extracted = [
        r.getMessage().split(":")[0] for r in caplog.records if "images in" in r.getMessage()
    ]
    databases = {tuple(p[1:]) for p in provided}
    assert len(databases) == 1
    assert sum("database-" in name for name in extracted) == 1
    assert sorted(name for name in extracted if name.endswith("query.h5")) == sorted(
        str(p[0]) for p in provided)
    # the shared database file is a valid database of every split (eval accepts it)
    import harness.digests as digests_module
    import harness.evaluate as evaluate_module
    from harness.config import EvalConfig
    from harness.evaluate import evaluate

    # ... and hashed once: its sha256 is remembered (the racy window shrunk to the test's pace)
    monkeypatch.setenv(digests_module.DIGEST_CACHE_ENV, str(tmp_path / "digests"))
    monkeypatch.setattr(digests_module, "RACY_SECONDS", 0.0)
    hashed = []

    class Spy(digests_module.StreamedDigests):
        def __init__(self, paths, streamed):
            super().__init__(paths, streamed)
            hashed.extend(paths)

    monkeypatch.setattr(evaluate_module, "StreamedDigests", Spy)
    config = EvalConfig(ngpu=0, progress=False)
    records = [evaluate(paths, split, config) for split, paths in zip(splits, provided)]
    for split, record in zip(splits, records):
        assert record.counts.database == split.num_database
    assert sorted(hashed) == sorted({p for paths in provided for p in paths})  # each file once
    assert len({r.features[1].sha256 for r in records}) == 1  # the same database digest
    stamps = [p.stat().st_mtime_ns for p in provided[0]]
    caplog.clear()
    again = provide_features(split=splits[1], **kwargs)
    assert again == provided[1] and [p.stat().st_mtime_ns for p in provided[0]] == stamps
    assert not [r for r in caplog.records if "images in" in r.getMessage()]
    bf16 = provide_features(split=splits[0], precision="bf16", **kwargs)
    assert bf16[1] != provided[0][1] and bf16[0] != provided[0][0]
    info = read_info(bf16[1])
    assert info.attrs["extraction_precision"] == "bf16"
    assert read_info(provided[0][1]).attrs["extraction_precision"] == "fp32"


def test_extraction_records_its_timing_device_and_precision(tiny_city, weights, tmp_path):
    path, _ = weights
    split = tiny_city.split("indoor-ams-1")
    method = get_method("netvlad", {}, weights=path)
    out = extract(method, split=split, out=tmp_path / "f.h5", options=OPTIONS)
    attrs = read_info(out).attrs
    images = split.num_queries + split.num_database
    assert int(attrs["extraction_images"]) == images
    seconds = float(attrs["extraction_seconds"])
    assert seconds > 0
    assert float(attrs["extraction_ms_per_image"]) == pytest.approx(1000 * seconds / images)
    assert attrs["extraction_device"] == "cpu" and attrs["extraction_precision"] == "fp32"
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.hardware import cpu_model

    assert cpu_model() in attrs["extraction_hardware"]
    record = evaluate([out], split, EvalConfig(ngpu=0, progress=False)).to_dict()
    measured = record["efficiency"]["extraction"]
    assert measured["images"] == images and measured["precision"] == "fp32"
    assert measured["ms_per_image"] == pytest.approx(1000 * seconds / images, rel=1e-5)
    assert record["efficiency"]["descriptor_bytes"] == 4 * method.descriptor_dim
    assert record["efficiency"]["search_cost"]["flop"] == (
        2 * split.num_queries * split.num_database * method.descriptor_dim)


def test_eval_with_method_cli(tiny_city, weights, tmp_path):
    path, _ = weights
    record = tmp_path / "r.json"
    args = [
        "eval",
        "--method",
        "netvlad",
        "--weights",
        str(path),
        "--split",
        "synth-indoor-ams-2",
        "--data-root",
        str(tiny_city.data_root),
        "--features-dir",
        str(tmp_path / "feats"),
        "--device",
        "cpu",
        "--json",
        str(record),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert record.is_file()
    result = CliRunner().invoke(cli, args[:-2] + ["--method-option", "bogus=1"])
    assert result.exit_code == 2 and "unknown option(s) bogus" in result.output


# ----------------------------------------------------------------------------------- PCA
def _pca_fit(tiny_city, weights_path, dim: int, out, *extra: str):
    """``harness pca fit`` of the netvlad method on the tiny city's training split."""
    return CliRunner().invoke(cli, [
        "pca", "fit", "-m", "netvlad", "-w", str(weights_path), "-s", "synth-ams30k-train",
        "--data-root", str(tiny_city.data_root), "--dim", str(dim), "--out", str(out),
        "--workers", "0", "--device", "cpu", "--no-progress", *extra])


def test_pca_fit_cli_then_extract(tiny_city, weights, tmp_path):
    path, _ = weights
    pca = tmp_path / "pca_params_model.h5"
    result = _pca_fit(tiny_city, path, 8, pca)
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(pca, "r") as handle:
        assert handle["U"].shape == (8 * 128, 8)
        assert handle.attrs["num_descriptors"] == 36  # 12 queries + 24 database images, all used
    out = extract(
        get_method("netvlad", {"pca": str(pca)}, weights=path),
        split=tiny_city.split("ams30k-val"),
        out=tmp_path / "pca.h5",
        options=OPTIONS,
    )
    descriptors = read_descriptors(out, "database")
    assert descriptors.shape[1] == 8
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, rtol=1e-5)


def test_pca_fit_needs_enough_descriptors(tiny_city, weights, tmp_path):
    path, _ = weights
    result = _pca_fit(tiny_city, path, 4096, tmp_path / "p.h5", "--max-images", "10")
    assert (
        result.exit_code == 2
        and "cannot keep 4096 PCA components from 10 descriptors" in result.output
    )
    assert not (tmp_path / "p.h5").exists()


def test_probe_method_needs_no_weights(tiny_city, tmp_path):
    from synth.probe import probe_descriptor

    split = tiny_city.split("indoor-ams-1")
    method = get_method("probe", {"kind": "hist"})
    out = extract(method, split=split, out=tmp_path / "probe.h5", parts=("query",), options=OPTIONS)
    with Image.open(f"{split.query_root}/{split.query_names[3]}") as image:
        expected = probe_descriptor(np.asarray(image.convert("RGB")), "hist")
    np.testing.assert_allclose(read_descriptors(out, "query")[3], expected, rtol=1e-6)


def test_plugin_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, methods.cli, methods; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_extract_needs_split_or_images(weights, tmp_path):
    path, _ = weights
    result = CliRunner().invoke(
        cli, ["extract", "-m", "netvlad", "-w", str(path), "--out", str(tmp_path / "x.h5")]
    )
    assert result.exit_code == 2 and "exactly one of --split or --images" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_extraction_matches_cpu(tiny_city, weights, tmp_path):
    path, _ = weights
    split = tiny_city.split("outdoor-ams")
    method = get_method("netvlad", {}, weights=path)
    cpu = extract(method, split=split, out=tmp_path / "cpu.h5", options=OPTIONS)
    gpu_options = ExtractOptions(device="cuda", batch_size=16, workers=2, progress=False)
    gpu = extract(method, split=split, out=tmp_path / "gpu.h5", options=gpu_options)
    assert read_info(gpu).attrs["extraction_precision"] == "fp32"
    bf16_options = ExtractOptions(
        device="cuda", batch_size=16, workers=2, progress=False, precision="bf16"
    )
    bf16 = extract(method, split=split, out=tmp_path / "bf16.h5", options=bf16_options)
    assert read_info(bf16).attrs["extraction_precision"] == "bf16"
    for part in ("query", "database"):
        a, b = read_descriptors(cpu, part), read_descriptors(gpu, part)
        # strict fp32 on the GPU (no TF32): only summation order differs from the CPU.
        np.testing.assert_allclose(b, a, atol=1e-5)
        # bf16 autocast in the backbone: descriptors agree closely.
        assert np.min(np.sum(a * read_descriptors(bf16, part), axis=1)) > 0.99
    assert os.environ.get("CUDA_VISIBLE_DEVICES", "0") != ""


def test_eval_with_method_over_several_splits_cli(tiny_city, weights, tmp_path):
    path, _ = weights
    base = ["eval", "--method", "netvlad", "--weights", str(path), "--data-root",
            str(tiny_city.data_root), "--features-dir", str(tmp_path / "feats"), "--device", "cpu",
            "--split", "synth-indoor-ams-1", "--split", "synth-indoor-ams-2", "--no-progress"]
    result = CliRunner().invoke(cli, base + ["--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "{split} placeholder" in result.output
    result = CliRunner().invoke(cli, base + ["--json", str(tmp_path / "{split}.json")])
    assert result.exit_code == 0, result.output
    for name in ("synth-indoor-ams-1", "synth-indoor-ams-2"):
        assert (tmp_path / f"{name}.json").is_file()
    folders = sorted(p.name for p in next((tmp_path / "feats").iterdir()).iterdir())
    assert [f for f in folders if f.startswith("database-")] == [folders[0]]
    assert {"synth-indoor-ams-1", "synth-indoor-ams-2"} <= set(folders)
