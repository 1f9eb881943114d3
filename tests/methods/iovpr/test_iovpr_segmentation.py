"""IOVPR window segmentation: IoU, weight files, training, cached inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from harness.errors import HarnessError  # noqa: E402
from methods.iovpr import segmentation as seg  # noqa: E402
from methods.iovpr.layouts import read_mask  # noqa: E402
from methods.iovpr.segment import MaskCache, cache_key, predict_masks, segment_images  # noqa: E402
from methods.iovpr.segtrain import (  # noqa: E402
    IoUCounter,
    make_config,
    train_window_segmenter,
    window_iou,
)

torch.set_num_threads(1)


def write_window_ade(root, n_train=8, n_val=3, size=(48, 64), seed=0):
    """Rooms (noisy beige walls) with one bright bluish window each, ADE layout."""
    rng = np.random.default_rng(seed)
    release = root / "ADEChallengeData2016"
    lines = []
    height, width = size
    for subset, count, prefix in (
        ("training", n_train, "ADE_train_"),
        ("validation", n_val, "ADE_val_"),
    ):
        for index in range(1, count + 1):
            stem = f"{prefix}{index:08d}"
            image = np.clip(rng.normal((190, 170, 140), 12, (height, width, 3)), 0, 255)
            labels = np.ones((height, width), np.uint8)
            y0, x0 = rng.integers(2, height // 2), rng.integers(2, width // 2)
            y1, x1 = y0 + rng.integers(8, height // 2), x0 + rng.integers(10, width // 2)
            image[y0:y1, x0:x1] = np.clip(
                rng.normal((90, 150, 235), 20, (y1 - y0, x1 - x0, 3)), 0, 255
            )
            labels[y0:y1, x0:x1] = 9
            for folder, array, ext in (("images", image.astype(np.uint8), "png"),
                                       ("annotations", labels, "png")):
                path = release / folder / subset / f"{stem}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            # ADE images are JPEG files; PNG content under the .jpg name keeps pixels exact.
            (release / "images" / subset / f"{stem}.png").rename(
                release / "images" / subset / f"{stem}.jpg")
            lines.append(f"{stem} bedroom\n")
    (release / "sceneCategories.txt").write_text("".join(lines))
    return release


# --------------------------------------------------------------------------- IoU


def _mask(rows):
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


@pytest.mark.parametrize("predicted, truth, expected", [
    (["##..", "...."], ["##..", "...."], 1.0),
    (["##..", "...."], ["..##", "...."], 0.0),
    (["##..", "...."], [".###", "...."], 1 / 4),
    (["####", "####"], ["#...", "...."], 1 / 8),
    (["....", "...."], ["....", "...."], math.nan),
])
def test_window_iou_hand_cases(predicted, truth, expected):
    value = window_iou(_mask(predicted), _mask(truth))
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


def test_iou_accumulates_over_images_not_mean_of_images():
    counter = IoUCounter()
    counter.update(_mask(["#.", ".."]), _mask(["##", ".."]))      # I=1, U=2
    counter.update(_mask(["###", "..."]), _mask(["###", "..."]))  # I=3, U=3
    assert counter.window_iou == pytest.approx(4 / 5)
    # background: image 1 I=2 U=3, image 2 I=3 U=3 -> 5/6
    assert counter.iou(0) == pytest.approx(5 / 6)
    assert counter.mean_iou == pytest.approx((4 / 5 + 5 / 6) / 2)
    assert counter.pixel_accuracy == pytest.approx(9 / 10)


def test_iou_ignores_invalid_pixels():
    counter = IoUCounter()
    valid = _mask(["##.", "##."])
    counter.update(_mask(["#.#", "..#"]), _mask(["#..", "..."]), valid)
    assert counter.window_iou == 1.0 and counter.total == 4


# --------------------------------------------------------------------------- weight files


@pytest.fixture(scope="module")
def upernet18():
    torch.manual_seed(0)
    return seg.build_segmenter("upernet18")


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_csail_encoder_and_150_class_decoder_files_load(tmp_path, upernet18):
    torch.manual_seed(1)
    donor = seg.build_segmenter("upernet18", num_classes=150)
    state = donor.state_dict()
    encoder = {k[len("encoder."):]: v for k, v in state.items()
               if k.startswith("encoder.") and not k.endswith("num_batches_tracked")}
    encoder["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet encoder file carries its classifier
    decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    model = seg.build_segmenter("upernet18")
    report = seg.load_pretrained(model, _save(tmp_path / "encoder_epoch_20.pth", encoder))
    assert report.parts == ("encoder",) and report.ignored == ("fc.weight",)
    report = seg.load_pretrained(model, _save(tmp_path / "decoder_epoch_20.pth", decoder))
    assert report.parts == ("decoder",) and report.adapted == (
        "decoder.conv_last.1.bias",
        "decoder.conv_last.1.weight",
    )
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("decoder.conv_last.1.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(loaded[key], value), key
    head = state["decoder.conv_last.1.weight"]
    assert torch.equal(loaded["decoder.conv_last.1.weight"][1], head[8])  # class 9 = row 8
    others = torch.cat([head[:8], head[9:]]).mean(0)
    assert torch.allclose(loaded["decoder.conv_last.1.weight"][0], others)


def test_whole_model_file_with_module_prefix_loads(tmp_path, upernet18):
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in upernet18.state_dict().items()},
        "epoch": 3,
    }
    model = seg.build_segmenter("upernet18")
    report = seg.load_pretrained(model, _save(tmp_path / "full.pth", wrapped))
    assert report.parts == ("encoder", "decoder") and not report.reinitialised
    for key, value in upernet18.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("edit, message", [
    ("extra", "unexpected keys .*encoder.layer9.0.conv1.weight"),
    ("missing", "missing keys: encoder.layer2.0.conv1.weight"),
    ("shape", r"shape mismatch: encoder.conv1.weight \(64, 3, 5, 5\)"),
])
def test_key_mismatches_are_listed(tmp_path, upernet18, edit, message):
    state = dict(upernet18.state_dict())
    if edit == "extra":
        state["encoder.layer9.0.conv1.weight"] = torch.zeros(1)
    elif edit == "missing":
        del state["encoder.layer2.0.conv1.weight"]
    else:
        state["encoder.conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = _save(tmp_path / "bad.pth", state)
    with pytest.raises(HarnessError, match=message) as info:
        seg.load_pretrained(seg.build_segmenter("upernet18"), path)
    assert str(path) in info.value.one_line()


def test_unsafe_or_corrupt_weight_files_are_refused(tmp_path):
    model = seg.build_segmenter("lraspp-mobilenet-v3")
    _save(tmp_path / "object.pth", {"state_dict": {"x": torch.zeros(1)}, "thing": _Thing()})
    with pytest.raises(HarnessError, match="refusing to load"):
        seg.load_pretrained(model, tmp_path / "object.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "object.pth").read_bytes()[:50])
    with pytest.raises(HarnessError, match="corrupt or truncated"):
        seg.load_pretrained(model, tmp_path / "cut.pth")
    with pytest.raises(HarnessError, match="not found"):
        seg.load_pretrained(model, tmp_path / "absent.pth")


class _Thing:
    pass


def test_torchvision_imagenet_backbone_file_loads_into_lraspp(tmp_path):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(2)
    imagenet = mobilenet_v3_large().state_dict()
    model = seg.build_segmenter("lraspp-mobilenet-v3")
    report = seg.load_pretrained(model, _save(tmp_path / "mobilenet_v3_large.pth", imagenet))
    assert report.parts == ("backbone",)
    assert set(report.ignored) == {k for k in imagenet if k.startswith("classifier.")}
    assert torch.equal(model.state_dict()["backbone.16.0.weight"], imagenet["features.16.0.weight"])


def test_torchvision_segmentation_file_with_other_classes_reinitialises_the_head(tmp_path):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    voc = lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21
    ).state_dict()
    model = seg.build_segmenter("lraspp-mobilenet-v3")
    before = model.state_dict()["classifier.low_classifier.weight"].clone()
    report = seg.load_pretrained(model, _save(tmp_path / "lraspp_voc.pth", voc))
    assert set(report.reinitialised) == {
        "classifier.low_classifier.weight", "classifier.low_classifier.bias",
        "classifier.high_classifier.weight", "classifier.high_classifier.bias"}
    assert torch.equal(model.state_dict()["classifier.low_classifier.weight"], before)
    assert torch.equal(
        model.state_dict()["classifier.cbr.0.weight"], voc["classifier.cbr.0.weight"]
    )


def test_every_arch_gives_two_class_logits_at_the_requested_size():
    images = torch.randn(1, 3, 40, 56)
    for arch in ("upernet18", "lraspp-mobilenet-v3"):
        model = seg.build_segmenter(arch).eval()
        with torch.no_grad():
            logits = seg.segment_logits(model, images, size=(40, 56))
        assert logits.shape == (1, 2, 40, 56)
    assert {"upernet50", "upernet101", "deeplabv3-resnet50"} <= set(seg.list_archs())
    with pytest.raises(HarnessError, match="did you mean upernet50"):
        seg.get_arch("upernet5")


# --------------------------------------------------------------------------- training


TRAIN_OPTIONS = dict(
    arch="lraspp-mobilenet-v3",
    epochs=3,
    batch_size=4,
    crop_size=48,
    scale_min=48,
    scale_max=56,
    optimizer="adamw",
    lr=3e-3,
    eval_short_side=48,
    workers=0,
    seed=0,
)


def test_training_lowers_the_loss_and_resumes(tmp_path):
    ade = write_window_ade(tmp_path / "ade")
    out = tmp_path / "seg"
    result = train_window_segmenter(ade, out, make_config(**TRAIN_OPTIONS), device="cpu")
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(0.0 <= h["window_iou"] <= 1.0 for h in result.history)
    assert result.best_iou == max(h["window_iou"] for h in result.history)
    loaded = seg.load_segmenter(result.best_path)
    assert loaded.info["val_iou"] == pytest.approx(result.best_iou)
    assert loaded.input_short_side == 48
    with pytest.raises(HarnessError, match="pass --resume"):
        train_window_segmenter(ade, out, make_config(**TRAIN_OPTIONS), device="cpu")
    resumed = train_window_segmenter(ade, out, make_config(**{**TRAIN_OPTIONS, "epochs": 4}),
                                     device="cpu", resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:3] == result.history


def test_train_config_rejects_unknown_and_bad_values():
    with pytest.raises(HarnessError, match="unknown option.*valid options are"):
        make_config(learning_rate=0.1)
    with pytest.raises(HarnessError, match="must be one of"):
        make_config(optimizer="adam")
    with pytest.raises(HarnessError, match="scale_min"):
        make_config(scale_min=700)


# --------------------------------------------------------------------------- inference cache


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(3)
    model = seg.build_segmenter("lraspp-mobilenet-v3")
    payload = seg.checkpoint_payload(model, config={}, epoch=0, val_iou=None, input_short_side=32)
    path = tmp_path / "segmenter.pth"
    torch.save(payload, path)
    return path


def test_segment_images_caches_masks_per_checkpoint(tmp_path, checkpoint):
    rng = np.random.default_rng(4)
    root = tmp_path / "queries"
    names = ["a/q1.jpg", "a/q2.jpg", "b/q3.jpg"]
    sizes = [(40, 60), (40, 60), (36, 30)]
    for name, size in zip(names, sizes):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
    cache_dir = tmp_path / "cache"
    first = segment_images(checkpoint, root, names, cache_dir=cache_dir, device="cpu", batch_size=2)
    assert (first.computed, first.reused) == (3, 0)
    segmenter = seg.load_segmenter(checkpoint)
    assert first.folder == cache_dir / cache_key(segmenter)
    assert cache_key(segmenter).startswith(segmenter.sha256[:16])
    images = [np.asarray(Image.open(root / n).convert("RGB")) for n in names]
    expected = predict_masks(segmenter, images)
    cache = MaskCache(cache_dir, cache_key(segmenter))
    for name, mask, size in zip(names, expected, sizes):
        assert mask.shape == size
        assert np.array_equal(read_mask(cache.path(name)), mask)
    again = segment_images(checkpoint, root, names, cache_dir=cache_dir, device="cpu")
    assert (again.computed, again.reused) == (0, 3)
    # Another inference size is another cache folder.
    other = seg.load_segmenter(checkpoint, input_short_side=40)
    assert cache_key(other) != cache_key(segmenter)
    with pytest.raises(HarnessError, match="missing image"):
        segment_images(checkpoint, root, ["a/none.jpg"], cache_dir=cache_dir, device="cpu")


def test_load_segmenter_errors(tmp_path, checkpoint):
    _save(tmp_path / "plain.pth", {"w": torch.zeros(1)})
    with pytest.raises(HarnessError, match="not a window-segmenter checkpoint"):
        seg.load_segmenter(tmp_path / "plain.pth")
    payload = torch.load(checkpoint, weights_only=True)
    del payload["state_dict"]["classifier.cbr.0.weight"]
    payload["state_dict"]["extra.weight"] = torch.zeros(1)
    _save(tmp_path / "broken.pth", payload)
    with pytest.raises(
        HarnessError, match="missing keys: classifier.cbr.0.weight; unexpected keys: extra.weight"
    ):
        seg.load_segmenter(tmp_path / "broken.pth")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_amp_and_inference_match_the_cpu(tmp_path):
    ade = write_window_ade(tmp_path / "ade")
    options = {**TRAIN_OPTIONS, "epochs": 2, "amp": True}
    result = train_window_segmenter(ade, tmp_path / "seg", make_config(**options), device="cuda")
    assert len(result.history) == 2 and all(0.0 <= h["window_iou"] <= 1.0 for h in result.history)
    images = [np.asarray(Image.open(p).convert("RGB"))
              for p in sorted((ade / "images" / "validation").glob("*.jpg"))]
    on_gpu = predict_masks(seg.load_segmenter(result.best_path, "cuda"), images, device="cuda")
    on_cpu = predict_masks(seg.load_segmenter(result.best_path, "cpu"), images, device="cpu")
    for gpu_mask, cpu_mask in zip(on_gpu, on_cpu):
        # autocast on the GPU may flip a few pixels right at the decision boundary
        assert np.mean(gpu_mask != cpu_mask) < 0.01
