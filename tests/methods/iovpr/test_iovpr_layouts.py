"""IOVPR layouts: the ADE20k reader, the threshold sets, and pixel-exact composites."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from methods.iovpr import ade20k
from methods.iovpr.layouts import (
    GRAY_RGB,
    MEAN_RGB,
    LayoutTransform,
    build_layouts,
    composite_gray,
    composite_real,
    load_layouts,
    make_layout,
    make_layout_transform,
    parse_gray,
    read_mask,
    resize_mask,
    window_fraction,
    window_fraction_histogram,
    write_mask,
)

# (subset, index, scene, window fraction of the image as a rectangle of rows)
TINY_ADE = [
    ("training", 1, "bedroom", 0.00),
    ("training", 2, "bedroom", 0.125),
    ("training", 3, "living_room", 0.25),
    ("training", 4, "kitchen", 0.375),
    ("training", 5, "street", 0.50),        # outdoor: not selected by default
    ("training", 6, "garage_indoor", 0.1875),  # indoor by suffix
    ("validation", 1, "office", 0.3125),
    ("validation", 2, "highway", 0.25),
]
HEIGHT, WIDTH = 32, 40


def write_tiny_ade(root, entries=TINY_ADE, seed=0):
    """An ADEChallengeData2016 folder: wall/floor rooms with a window band of known size."""
    rng = np.random.default_rng(seed)
    release = root / "ADEChallengeData2016"
    lines = []
    for subset, index, scene, fraction in entries:
        stem = f"{'ADE_train_' if subset == 'training' else 'ADE_val_'}{index:08d}"
        labels = np.full((HEIGHT, WIDTH), 1, np.uint8)  # wall
        labels[-6:] = 4  # floor
        window_rows = round(fraction * HEIGHT)
        labels[2:2 + window_rows, :] = 9
        labels[0, :3] = 0  # some unlabelled pixels
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        for folder, array, ext in (("images", image, "jpg"), ("annotations", labels, "png")):
            path = release / folder / subset / f"{stem}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
        lines.append(f"{stem} {scene}\n")
    (release / "sceneCategories.txt").write_text("".join(lines))
    return release


@pytest.fixture
def ade(tmp_path):
    return write_tiny_ade(tmp_path / "ade")


# --------------------------------------------------------------------------- ADE reader


def test_list_samples_selects_indoor_scenes(ade):
    samples = ade20k.list_samples(ade.parent)  # the parent folder is accepted too
    names = [s.name for s in samples]
    assert names == ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003",
                     "ADE_train_00000004", "ADE_train_00000006", "ADE_val_00000001"]
    assert {s.subset for s in samples} == {"training", "validation"}
    assert samples[-1].scene == "office"
    assert samples[0].annotation_path.name == "ADE_train_00000001.png"


def test_list_samples_custom_categories_and_all_scenes(ade):
    only = ade20k.list_samples(ade, categories=["street", "office"])
    assert [s.name for s in only] == ["ADE_train_00000005", "ADE_val_00000001"]
    assert len(ade20k.list_samples(ade, all_scenes=True)) == len(TINY_ADE)
    assert len(ade20k.list_samples(ade, subsets=("validation",), all_scenes=True)) == 2


def test_window_mask_from_annotation(ade):
    sample = ade20k.list_samples(ade)[2]  # living_room, 25 %
    mask = ade20k.read_window_mask(sample.annotation_path)
    labels = np.asarray(Image.open(sample.annotation_path))
    assert mask.dtype == bool and mask.shape == (HEIGHT, WIDTH)
    assert np.array_equal(mask, labels == 9)
    assert window_fraction(mask) == pytest.approx(0.25)


@pytest.mark.parametrize("problem, message", [
    ("no_scene_file", "missing sceneCategories.txt"),
    ("bad_scene_line", "expected '<image name> <scene>'"),
    ("missing_annotation", "missing annotation for ADE_train_00000002"),
    ("image_without_scene", "has no line in sceneCategories.txt"),
    ("not_ade", "not an ADE20k scene-parsing folder"),
])
def test_ade_reader_errors(ade, problem, message):
    if problem == "no_scene_file":
        (ade / "sceneCategories.txt").unlink()
    elif problem == "bad_scene_line":
        (ade / "sceneCategories.txt").write_text("ADE_train_00000001 bed room\n")
    elif problem == "missing_annotation":
        (ade / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    elif problem == "image_without_scene":
        lines = (ade / "sceneCategories.txt").read_text().splitlines()[1:]
        (ade / "sceneCategories.txt").write_text("\n".join(lines) + "\n")
    target = ade / "images" if problem == "not_ade" else ade
    with pytest.raises(HarnessError, match=message):
        ade20k.list_samples(target)


def test_annotation_with_unknown_class_is_an_error(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(path)
    with pytest.raises(HarnessError, match="class 200 > 150"):
        ade20k.read_annotation(path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(HarnessError, match="not a single-channel"):
        ade20k.read_annotation(path)


# --------------------------------------------------------------------------- sets and stats


def test_build_layouts_sets_match_brute_force(ade, tmp_path):
    out = tmp_path / "layouts"
    result = build_layouts(ade, out)
    indoor = ade20k.list_samples(ade)
    fractions = {s.name: ade20k.read_window_mask(s.annotation_path).mean() for s in indoor}
    for threshold in (10, 20, 30):
        expected = sorted(n for n, f in fractions.items() if f * 100 >= threshold)
        listed = (out / "sets" / f"min{threshold}.txt").read_text().split()
        assert sorted(line.split("/")[1] for line in listed) == expected
        assert result.counts[threshold] == len(expected)
        assert [s.name for s in load_layouts(out).select(threshold)] == sorted(expected)
    # 12.5, 18.75 (garage_indoor), 25, 31.25 (validation), 37.5 %
    assert result.counts == {10: 5, 20: 3, 30: 2}
    index = load_layouts(out)
    for sample in index.samples:
        source = next(s for s in indoor if s.name == sample.name)
        assert np.array_equal(
            read_mask(sample.mask_path), ade20k.read_window_mask(source.annotation_path)
        )
        assert sample.image_path.read_bytes() == source.image_path.read_bytes()
        assert sample.window_fraction == pytest.approx(fractions[sample.name])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["scanned"] == 6 and stats["with_window"] == 5
    assert sum(b["count"] for b in stats["histogram"]) == 6
    assert stats["sets"]["min20"] == {"total": 3, "by_subset": {"training": 2, "validation": 1}}
    table = (out / "stats.md").read_text()
    assert "| >= 30% window | 1 | 1 | 2 |" in table
    assert "| 0-5% | 1 |" in table  # the room without windows


def test_histogram_bins_are_closed_on_the_right():
    bins = window_fraction_histogram([0.0, 0.049, 0.05, 0.5, 1.0], bins=20)
    counts = [b["count"] for b in bins]
    assert counts[0] == 2 and counts[1] == 1 and counts[10] == 1 and counts[19] == 1
    assert sum(counts) == 5


def test_build_layouts_refuses_existing_output_and_leaves_nothing_on_failure(ade, tmp_path):
    out = tmp_path / "layouts"
    out.mkdir()
    with pytest.raises(HarnessError, match="output folder exists"):
        build_layouts(ade, out)
    # A corrupt annotation in the middle: no output and no staging folder remains.
    (ade / "annotations" / "training" / "ADE_train_00000004.png").write_bytes(b"not a png")
    with pytest.raises(HarnessError, match="unreadable ADE20k annotation"):
        build_layouts(ade, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ade", "layouts"]
    assert list(out.iterdir()) == []


def test_build_layouts_overwrite_and_custom_thresholds(ade, tmp_path):
    out = tmp_path / "layouts"
    build_layouts(ade, out, thresholds=(30,))
    result = build_layouts(ade, out, thresholds=(25, 35), overwrite=True)
    assert result.counts == {25: 3, 35: 1}
    assert sorted(p.name for p in (out / "sets").iterdir()) == ["min25.txt", "min35.txt"]
    with pytest.raises(HarnessError, match="no layout set for threshold 10"):
        load_layouts(out).select(10)


def test_load_layouts_errors(tmp_path):
    with pytest.raises(HarnessError, match="not a layout folder"):
        load_layouts(tmp_path)
    (tmp_path / "index.json").write_text('{"format_version": 1, "samples": [{"name": "x"}]}')
    with pytest.raises(HarnessError, match="malformed layout index"):
        load_layouts(tmp_path)


def test_mask_files_round_trip_and_reject_non_binary(tmp_path):
    mask = np.random.default_rng(1).random((7, 9)) > 0.5
    write_mask(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    Image.fromarray(np.full((3, 3), 7, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(HarnessError, match="values other than 0 and 255"):
        read_mask(tmp_path / "bad.png")


# --------------------------------------------------------------------------- composites


def _random_case(seed, height=24, width=30):
    rng = np.random.default_rng(seed)
    outdoor = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    room = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.random((height, width)) < 0.3
    return outdoor, room, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_real_composite_is_pixel_exact(seed):
    outdoor, room, mask = _random_case(seed)
    layout = composite_real(outdoor, room, mask)
    assert layout.dtype == np.uint8 and layout.shape == outdoor.shape
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            expected = outdoor[y, x] if mask[y, x] else room[y, x]
            assert tuple(layout[y, x]) == tuple(expected)


@pytest.mark.parametrize("gray", [GRAY_RGB, MEAN_RGB, (0, 10, 255)])
def test_gray_composite_is_pixel_exact(gray):
    outdoor, _, mask = _random_case(3)
    layout = composite_gray(outdoor, mask, gray)
    assert np.array_equal(layout[mask], outdoor[mask])
    assert (layout[~mask] == np.array(gray, np.uint8)).all()
    assert np.count_nonzero((layout == outdoor).all(-1) & ~mask) == np.count_nonzero(
        (outdoor[~mask] == np.array(gray, np.uint8)).all(-1))


@pytest.mark.parametrize("kind", ["real", "gray"])
def test_make_layout_resizes_room_and_mask_to_the_outdoor_image(kind):
    outdoor, _, _ = _random_case(4, 48, 64)
    rng = np.random.default_rng(5)
    room = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    mask = np.zeros((30, 20), bool)
    mask[5:20, 4:12] = True
    layout = make_layout(outdoor, mask, kind=kind, room=room)
    fitted = resize_mask(mask, (48, 64))
    assert window_fraction(fitted) == pytest.approx(window_fraction(mask), abs=0.02)
    assert np.array_equal(layout[fitted], outdoor[fitted])
    if kind == "gray":
        assert (layout[~fitted] == np.array(GRAY_RGB, np.uint8)).all()
    else:
        resized_room = np.asarray(Image.fromarray(room).resize((64, 48), Image.Resampling.BILINEAR))
        assert np.array_equal(layout[~fitted], resized_room[~fitted])


@pytest.mark.parametrize("value, expected", [
    (None, GRAY_RGB), ("mean", MEAN_RGB), ("128", (128, 128, 128)), (90, (90, 90, 90)),
    ("1,2,3", (1, 2, 3)), ((4, 5, 6), (4, 5, 6)),
])
def test_parse_gray(value, expected):
    assert parse_gray(value) == expected


@pytest.mark.parametrize("value", ["256", "a", "1,2", "-1"])
def test_parse_gray_rejects(value):
    with pytest.raises(HarnessError, match="invalid gray"):
        parse_gray(value)


# --------------------------------------------------------------------------- training transform


@pytest.fixture
def layout_dir(ade, tmp_path):
    return build_layouts(ade, tmp_path / "layouts").path


@pytest.mark.parametrize("kind", ["real", "gray"])
def test_layout_transform_is_pixel_exact_against_the_drawn_mask(layout_dir, kind):
    transform = make_layout_transform(layout_dir, kind=kind, threshold=20, probability=1.0, seed=7)
    replay = make_layout_transform(layout_dir, kind=kind, threshold=20, probability=1.0, seed=7)
    samples = load_layouts(layout_dir).select(20)
    outdoor = np.random.default_rng(8).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    flips = set()
    for _ in range(12):
        result = np.asarray(transform(Image.fromarray(outdoor)))
        applied, index, flip = replay.draw()
        assert applied
        flips.add(flip)
        mask = read_mask(samples[index].mask_path)
        room = ade20k.read_image(samples[index].image_path)
        if flip:
            mask, room = mask[:, ::-1], room[:, ::-1]
        fitted = resize_mask(np.ascontiguousarray(mask), (60, 80))
        assert result.shape == outdoor.shape
        assert np.array_equal(result[fitted], outdoor[fitted])
        if kind == "gray":
            assert (result[~fitted] == np.array(GRAY_RGB, np.uint8)).all()
        else:
            resized = np.asarray(Image.fromarray(np.ascontiguousarray(room)).resize(
                (80, 60), Image.Resampling.BILINEAR))
            assert np.array_equal(result[~fitted], resized[~fitted])
    assert flips == {True, False}


def test_layout_transform_probability(layout_dir):
    outdoor = Image.fromarray(
        np.random.default_rng(9).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    )
    never = make_layout_transform(layout_dir, kind="gray", threshold=10, probability=0.0)
    assert all(never(outdoor) is outdoor for _ in range(20))
    half = make_layout_transform(layout_dir, kind="gray", threshold=10, probability=0.5, seed=3)
    changed = sum(half(outdoor) is not outdoor for _ in range(400))
    assert 150 < changed < 250
    # Only layouts of the chosen set are drawn.
    strict = make_layout_transform(layout_dir, kind="gray", threshold=30, probability=1.0)
    indices = {strict.draw()[1] for _ in range(50)}
    assert indices == {0, 1} and len(strict.samples) == 2
    assert all(s.window_fraction >= 0.30 for s in strict.samples)


def test_layout_transform_is_reproducible_and_picklable(layout_dir):
    import pickle

    first = make_layout_transform(layout_dir, kind="real", threshold=10, probability=0.7, seed=11)
    draws = [first.draw() for _ in range(30)]
    second = make_layout_transform(layout_dir, kind="real", threshold=10, probability=0.7, seed=11)
    assert [second.draw() for _ in range(30)] == draws
    clone = pickle.loads(pickle.dumps(first))
    assert clone.draw() == first.draw()
    assert first.describe()["num_layouts"] == 5


def test_layout_transform_rejects_bad_options(layout_dir):
    samples = load_layouts(layout_dir).select(10)
    with pytest.raises(HarnessError, match="unknown layout kind"):
        LayoutTransform(samples, kind="blue")
    with pytest.raises(HarnessError, match="probability must be in"):
        LayoutTransform(samples, kind="gray", probability=1.5)


def test_layout_transform_reports_a_missing_mask(layout_dir):
    transform = make_layout_transform(layout_dir, kind="gray", threshold=30, probability=1.0)
    transform.samples[0].mask_path.unlink()
    transform.samples[1].mask_path.unlink()
    with pytest.raises(HarnessError, match="mask file not found"):
        transform(Image.new("RGB", (8, 8)))

