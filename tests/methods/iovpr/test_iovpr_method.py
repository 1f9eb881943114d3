"""IOVPR methods end to end: ``iovpr-gray`` (segment -> gray layout -> descriptor) and
``iovpr-real``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from harness.errors import HarnessError  # noqa: E402
from harness.features import read_descriptors, read_names  # noqa: E402
from harness.splits import Split  # noqa: E402
from methods.checkpoints import save_checkpoint  # noqa: E402
from methods.extract import ExtractOptions, extract  # noqa: E402
from methods.iovpr import segmentation as seg  # noqa: E402
from methods.iovpr.layouts import GRAY_RGB, composite_gray, parse_gray, read_mask  # noqa: E402
from methods.iovpr.segment import MaskCache, cache_key, predict_masks  # noqa: E402
from methods.netvlad import ModelConfig, build_model  # noqa: E402
from methods.registry import get_method, list_methods  # noqa: E402
from methods.transforms import ResizeUint8, normalize_batch  # noqa: E402

torch.set_num_threads(1)
MODEL_CONFIG = ModelConfig(backbone="small", num_clusters=4, image_height=32, image_width=48)


def _room(rng, height, width):
    """A noisy beige wall with one bright bluish window; returns (image, window mask)."""
    image = np.clip(rng.normal((190, 170, 140), 12, (height, width, 3)), 0, 255)
    mask = np.zeros((height, width), bool)
    y0, x0 = rng.integers(2, height // 2), rng.integers(2, width // 2)
    y1, x1 = y0 + rng.integers(8, height // 2), x0 + rng.integers(10, width // 2)
    image[y0:y1, x0:x1] = np.clip(rng.normal((90, 150, 235), 20, (y1 - y0, x1 - x0, 3)), 0, 255)
    mask[y0:y1, x0:x1] = True
    return image.astype(np.uint8), mask


def _write_ade(root, rng, count=(10, 3), size=(48, 64)):
    release = root / "ADEChallengeData2016"
    lines = []
    for subset, n, prefix in (
        ("training", count[0], "ADE_train_"),
        ("validation", count[1], "ADE_val_"),
    ):
        for index in range(1, n + 1):
            image, mask = _room(rng, *size)
            stem = f"{prefix}{index:08d}"
            for folder, array in (("images", image), ("annotations", mask.astype(np.uint8) * 9)):
                path = (
                    release / folder / subset / f"{stem}.{'jpg' if folder == 'images' else 'png'}"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path, format="PNG")  # lossless, whatever the suffix
            lines.append(f"{stem} living_room\n")
    (release / "sceneCategories.txt").write_text("".join(lines))
    return release


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny split (3 indoor queries, 4 database images), a VPR checkpoint, a trained segmenter."""
    from methods.iovpr.segtrain import make_config, train_window_segmenter

    root = tmp_path_factory.mktemp("iovpr")
    rng = np.random.default_rng(0)
    queries, database = root / "queries", root / "images"
    query_names = ["q/000.png", "q/001.png", "q/002.png"]
    database_names = [f"db/{i:03d}.jpg" for i in range(4)]
    for name in query_names:
        (queries / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_room(rng, 36, 52)[0]).save(queries / name)
    for name in database_names:
        (database / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
            database / name, quality=95
        )
    split = Split(
        name="tiny-indoor", query_names=tuple(query_names), database_names=tuple(database_names),
        query_utm=np.zeros((3, 2)), database_utm=np.zeros((4, 2)),
        query_root=str(queries), database_root=str(database),
    )
    model = build_model(MODEL_CONFIG, seed=0)
    weights = save_checkpoint(root / "iovpr.pth", state_dict=model.state_dict(),
                              model_config=MODEL_CONFIG.to_dict(),
                              train_config={"layouts": "gray", "gray": "128"})
    config = make_config(
        arch="lraspp-mobilenet-v3",
        epochs=3,
        batch_size=4,
        crop_size=48,
        scale_min=48,
        scale_max=56,
        optimizer="adamw",
        lr=3e-3,
        eval_short_side=40,
        workers=0,
    )
    trained = train_window_segmenter(
        _write_ade(root / "ade", rng), root / "seg", config, device="cpu"
    )
    return {"root": root, "split": split, "weights": weights, "segmenter": trained.best_path}


def _descriptors(model, images):
    transform = ResizeUint8(MODEL_CONFIG.image_height, MODEL_CONFIG.image_width)
    batch = torch.stack([transform(Image.fromarray(image)) for image in images])
    with torch.no_grad():
        return model(normalize_batch(batch)).numpy()


def test_methods_are_registered():
    assert {"iovpr-real", "iovpr-gray"} <= set(list_methods())


def test_iovpr_gray_end_to_end(files, tmp_path):
    split, cache_dir = files["split"], tmp_path / "masks"
    method = get_method(
        "iovpr-gray", {"segmenter": str(files["segmenter"])}, weights=files["weights"]
    )
    out = extract(method, split=split, out=tmp_path / "gray.h5",
                  options=ExtractOptions(device="cpu", batch_size=2, workers=0, progress=False),
                  cache_dir=cache_dir)
    assert read_names(out, "query") == list(split.query_names)

    model = build_model(MODEL_CONFIG, seed=0).eval()
    segmenter = seg.load_segmenter(files["segmenter"])
    raw_queries = [
        np.asarray(Image.open(split.query_root + "/" + n).convert("RGB")) for n in split.query_names
    ]
    masks = predict_masks(segmenter, raw_queries)
    cache = MaskCache(cache_dir, cache_key(segmenter))
    fractions = []
    for name, mask in zip(split.query_names, masks):
        assert np.array_equal(read_mask(cache.path(name)), mask)
        fractions.append(mask.mean())
    assert all(0.05 < f < 0.95 for f in fractions), fractions  # the layouts really are partial
    gray_queries = [
        composite_gray(image, mask, GRAY_RGB) for image, mask in zip(raw_queries, masks)
    ]
    np.testing.assert_allclose(
        read_descriptors(out, "query"), _descriptors(model, gray_queries), atol=1e-5
    )
    raw_database = [
        np.asarray(Image.open(split.database_root + "/" + n).convert("RGB"))
        for n in split.database_names
    ]
    np.testing.assert_allclose(
        read_descriptors(out, "database"), _descriptors(model, raw_database), atol=1e-5
    )
    assert not np.allclose(
        read_descriptors(out, "query"), _descriptors(model, raw_queries), atol=1e-3
    )


def test_iovpr_gray_uses_the_gray_option(files, tmp_path):
    split = files["split"]
    options = {"segmenter": str(files["segmenter"]), "gray": "mean"}
    method = get_method("iovpr-gray", options, weights=files["weights"])
    out = extract(method, split=split, out=tmp_path / "mean.h5", parts=("query",),
                  options=ExtractOptions(device="cpu", batch_size=3, workers=0, progress=False),
                  cache_dir=tmp_path / "masks")
    segmenter = seg.load_segmenter(files["segmenter"])
    raw = [
        np.asarray(Image.open(split.query_root + "/" + n).convert("RGB")) for n in split.query_names
    ]
    layouts = [
        composite_gray(i, m, parse_gray("mean")) for i, m in zip(raw, predict_masks(segmenter, raw))
    ]
    expected = _descriptors(build_model(MODEL_CONFIG, seed=0).eval(), layouts)
    np.testing.assert_allclose(read_descriptors(out, "query"), expected, atol=1e-5)


def test_iovpr_real_is_the_raw_pipeline(files, tmp_path):
    split = files["split"]
    real = extract(
        get_method("iovpr-real", {}, weights=files["weights"]),
        split=split,
        out=tmp_path / "real.h5",
        options=ExtractOptions(device="cpu", workers=0, progress=False),
    )
    model = build_model(MODEL_CONFIG, seed=0).eval()
    raw = [
        np.asarray(Image.open(split.query_root + "/" + n).convert("RGB")) for n in split.query_names
    ]
    np.testing.assert_allclose(read_descriptors(real, "query"), _descriptors(model, raw), atol=1e-5)


def test_iovpr_gray_fingerprint_includes_the_segmenter(files, tmp_path):
    first = get_method(
        "iovpr-gray", {"segmenter": str(files["segmenter"])}, weights=files["weights"]
    )
    copy = tmp_path / "segmenter-copy.pth"
    payload = torch.load(files["segmenter"], weights_only=True)
    payload["epoch"] = 1
    torch.save(payload, copy)
    second = get_method("iovpr-gray", {"segmenter": str(copy)}, weights=files["weights"])
    assert "segmenter" in first.fingerprint()["files"]
    assert first.fingerprint()["files"]["segmenter"] != second.fingerprint()["files"]["segmenter"]
    assert first.fingerprint_sha256() != second.fingerprint_sha256()


@pytest.mark.parametrize("options, message", [
    ({}, "needs --option segmenter=PATH"),
    ({"segmenter": "/nonexistent/seg.pth"}, "segmenter checkpoint .* not found"),
    ({"segmenter": "x", "gray": "300"}, "invalid gray"),
    ({"segmenter": "x", "grey": "1"}, "unknown option.*grey.*valid options are"),
])
def test_iovpr_gray_option_errors(files, options, message):
    with pytest.raises(HarnessError, match=message):
        get_method("iovpr-gray", options, weights=files["weights"])


def test_iovpr_gray_rejects_a_cached_mask_of_the_wrong_size(files, tmp_path):
    from methods.iovpr.layouts import write_mask

    split, cache_dir = files["split"], tmp_path / "masks"
    segmenter = seg.load_segmenter(files["segmenter"])
    cache = MaskCache(cache_dir, cache_key(segmenter))
    for name in split.query_names:
        write_mask(cache.path(name), np.zeros((5, 5), bool))
    method = get_method(
        "iovpr-gray", {"segmenter": str(files["segmenter"])}, weights=files["weights"]
    )
    with pytest.raises(HarnessError, match="cached mask is 5x5 but the image is 52x36"):
        extract(
            method,
            split=split,
            out=tmp_path / "f.h5",
            parts=("query",),
            options=ExtractOptions(device="cpu", workers=0, progress=False),
            cache_dir=cache_dir,
        )
