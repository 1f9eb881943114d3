"""IOVPR on the synthetic tiny city: the CLI commands and the trainer's layout hook."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

torch = pytest.importorskip("torch")

from harness.cli import cli  # noqa: E402
from methods.iovpr import ade20k  # noqa: E402
from methods.iovpr.layouts import load_layouts, make_layout_transform  # noqa: E402

torch.set_num_threads(1)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def layouts(tiny_city, tmp_path_factory):
    out = tmp_path_factory.mktemp("iovpr-cli") / "layouts"
    result = invoke("layouts", "build", "--ade", tiny_city.ade_dir, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_layouts_build_on_the_synthetic_ade_folder(tiny_city, layouts):
    out, output = layouts
    samples = ade20k.list_samples(tiny_city.ade_dir)
    fractions = [ade20k.read_window_mask(s.annotation_path).mean() for s in samples]
    index = load_layouts(out)
    for threshold in (10, 20, 30):
        expected = sum(f * 100 >= threshold for f in fractions)
        assert len(index.select(threshold)) == expected
        assert f"| >= {threshold}% window |" in output
    assert str(out) in output
    again = invoke("layouts", "build", "--ade", tiny_city.ade_dir, "--out", out)
    assert again.exit_code == 2 and again.output.startswith(f"error: {out}: ")
    assert "output folder exists" in again.output


def test_train_window_seg_then_segment_a_split(tiny_city, tmp_path):
    run = tmp_path / "seg"
    result = invoke(
        "train",
        "window-seg",
        "--ade",
        tiny_city.ade_dir,
        "--out",
        run,
        "--arch",
        "lraspp-mobilenet-v3",
        "--epochs",
        1,
        "--max-steps",
        2,
        "--batch-size",
        2,
        "--crop-size",
        64,
        "--optimizer",
        "adamw",
        "--lr",
        "0.001",
        "--workers",
        0,
        "--device",
        "cpu",
        "--option",
        "scale_min=64",
        "--option",
        "scale_max=72",
        "--option",
        "eval_short_side=64",
        "--option",
        "val_limit=2",
    )
    assert result.exit_code == 0, result.output
    assert "best validation window IoU" in result.output and (run / "best.pth").is_file()
    split = tiny_city.split("indoor-ams-1")
    args = (
        "segment",
        "--split",
        "synth-indoor-ams-1",
        "--segmenter",
        run / "best.pth",
        "--data-root",
        tiny_city.data_root,
        "--cache-dir",
        tmp_path / "masks",
        "--device",
        "cpu",
    )
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert f"{split.num_queries} masks computed, 0 cached" in first.output
    folder = first.output.strip().splitlines()[-1]
    name = split.query_names[0]
    mask = np.asarray(Image.open(f"{folder}/{name}.png"))
    image = Image.open(f"{split.query_root}/{name}")
    assert mask.shape == (image.height, image.width) and set(np.unique(mask)) <= {0, 255}
    second = invoke(*args)
    assert f"0 masks computed, {split.num_queries} cached" in second.output


def test_train_window_seg_rejects_option_clash_and_bad_weights(tiny_city, tmp_path):
    clash = invoke("train", "window-seg", "--ade", tiny_city.ade_dir, "--out", tmp_path / "a",
                   "--option", "lr=0.1")
    assert clash.exit_code == 2 and "set lr with its own flag" in clash.output
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = invoke("train", "window-seg", "--ade", tiny_city.ade_dir, "--out", tmp_path / "b",
                    "--arch", "lraspp-mobilenet-v3", "--pretrained", bad, "--device", "cpu")
    assert result.exit_code == 2 and f"error: {bad}:" in result.output


def test_trainer_applies_layouts_to_queries_only(tiny_city, layouts):
    """D's TupleDataset with our transform: the query is the layout, database images raw."""
    from methods.train.trainer import TupleDataset
    from methods.transforms import ResizeUint8, TrainTransform

    split = tiny_city.split("ams30k-train")
    augment = make_layout_transform(layouts[0], kind="gray", threshold=20, probability=1.0, seed=5)
    transform = TrainTransform(48, 64, jitter=(0.0, 0.0, 0.0, 0.0))
    tuples = np.array([[0, 0, 1], [1, 2, 3]])
    dataset = TupleDataset(split, tuples, transform, seed=(7,), query_augment=augment)
    resize = ResizeUint8(48, 64)
    for index in range(len(tuples)):
        _, images, error = dataset[index]
        assert error is None
        query = Image.open(f"{split.query_root}/{split.query_names[tuples[index, 0]]}").convert(
            "RGB"
        )
        expected = augment(query, np.random.default_rng((7, index)))
        assert torch.equal(images[0], resize(expected))
        assert not torch.equal(images[0], resize(query))
        for column in (1, 2):
            raw = Image.open(
                f"{split.database_root}/{split.database_names[tuples[index, column]]}"
            ).convert("RGB")
            assert torch.equal(images[column], resize(raw))


def test_train_iovpr_records_the_layouts_and_refuses_a_changed_resume(tiny_city, layouts, tmp_path):
    from methods.checkpoints import read_checkpoint

    common = (
        "train",
        "iovpr",
        "--layouts-dir",
        layouts[0],
        "--threshold",
        20,
        "--train-split",
        "synth-ams30k-train",
        "--data-root",
        tiny_city.data_root,
        "--out-dir",
        tmp_path / "run",
        "--backbone",
        "small",
        "--num-clusters",
        4,
        "--image-height",
        64,
        "--image-width",
        96,
        "--generations",
        1,
        "--epochs",
        1,
        "--layout-prob",
        1.0,
        "--workers",
        0,
        "--batch-size",
        8,
        "--neg-pool",
        8,
        "--neg-num",
        2,
        "--pos-num",
        2,
        "--pos-pool",
        2,
        "--cache-size",
        6,
        "--device",
        "cpu",
        "--no-progress",
    )
    result = invoke(*common, "--layouts", "gray")
    assert result.exit_code == 0, result.output
    best = read_checkpoint(result.output.strip().splitlines()[-1])
    trained = best.meta["train_config"]
    assert (trained["layouts"], trained["threshold"], trained["gray"], trained["layout_prob"]) == (
        "gray", 20, "128", 1.0)
    changed = invoke(*common, "--layouts", "real")
    assert (
        changed.exit_code == 2 and "cannot resume" in changed.output and "layouts" in changed.output
    )


def test_train_iovpr_needs_a_layout_folder(tiny_city, tmp_path):
    result = invoke(
        "train", "iovpr", "--train-split", "synth-ams30k-train", "--out-dir", tmp_path / "x"
    )
    assert result.exit_code == 2 and "--layouts-dir" in result.output
    result = invoke(
        "train",
        "iovpr",
        "--train-split",
        "synth-ams30k-train",
        "--out-dir",
        tmp_path / "x",
        "--layouts-dir",
        tmp_path,
        "--data-root",
        tiny_city.data_root,
        "--device",
        "cpu",
    )
    assert result.exit_code == 2 and "not a layout folder" in result.output


def test_study_runs_end_to_end_on_the_tiny_city(tiny_city, tmp_path):
    options = [
        "seg_epochs=1",
        "seg_crop_size=64",
        "seg_scale_min=64",
        "seg_scale_max=80",
        "seg_short_side=96",
        "generations=1",
        "epochs=1",
        "image_height=64",
        "image_width=96",
        "num_clusters=4",
        "workers=0",
    ]
    args = [
        "iovpr",
        "study",
        "--city",
        tiny_city.root,
        "--data-root",
        tiny_city.data_root,
        "--out",
        tmp_path,
        "--train-option",
        "neg_pool=8",
        "--train-option",
        "neg_num=2",
        "--train-option",
        "pos_num=2",
        "--train-option",
        "pos_pool=2",
        "--train-option",
        "jitter=0.2,0.2,0.2,0.02",
    ]
    for option in options:
        args += ["--option", option]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    import json

    study = json.loads((tmp_path / "study.json").read_text())
    assert [row["method"] for row in study["table"]] == [
        "untrained init",
        "untrained init + gray queries, true masks",
        "sfrs (baseline)",
        "sfrs + gray queries",
        "sfrs + gray queries, true masks",
        "iovpr-real",
        "iovpr-gray",
        "iovpr-gray, true masks",
    ]
    for row in study["table"]:
        for split in ("indoor-ams-1", "indoor-ams-2"):
            recalls = [row[split][f"recall@{n}"] for n in (1, 5, 10)]
            assert all(0.0 <= r <= 1.0 for r in recalls) and recalls == sorted(recalls)
    assert 0.0 <= study["segmentation"]["indoor-ams-1"]["window_iou"] <= 1.0
    assert "| iovpr-gray, true masks |" in result.output
