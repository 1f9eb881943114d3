"""Tests of the synthetic inside-out city (synth), on the session's tiny city."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from harness.errors import HarnessError
from harness.io import sha256_file
from harness.matfile import read_dbstruct
from synth import CityConfig, get_preset, make_city
from synth.ade import read_scene_categories
from synth.dataset import MAT_FILES, window_view
from synth.indoor import ADE_CLASSES, ROOM_CATEGORIES, WINDOW_CLASS
from synth.probe import (
    PROBE_KINDS,
    evaluate_probe,
    gray_layout,
    probe_descriptor,
    probe_dim,
    write_probe_features,
)


def _tree_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- generation


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tiny_city, tmp_path):
    again = make_city(tmp_path / "again", "tiny", seed=0, workers=2)
    first, second = _tree_digests(tiny_city.root), _tree_digests(again.root)
    assert len(first) > 200
    assert first == second


def test_generation_is_cached_and_refuses_to_overwrite_another_city(tiny_city):
    marker = tiny_city.root / "synth_city.json"
    before = marker.stat().st_mtime_ns
    info = make_city(tiny_city.root, "tiny", seed=0)
    assert info.counts == tiny_city.info.counts
    assert marker.stat().st_mtime_ns == before  # nothing was rewritten
    with pytest.raises(HarnessError, match="another synthetic city"):
        make_city(tiny_city.root, "tiny", seed=1)
    assert marker.stat().st_mtime_ns == before


def test_interrupted_or_stale_city_is_regenerated(tmp_path, monkeypatch):
    config = get_preset("tiny").replace(
        streets_train=1,
        streets_val=1,
        streets_test=1,
        streets_extra=0,
        places_per_street=4,
        queries_train=1,
        queries_val=1,
        queries_test=1,
        queries_outdoor=1,
        queries_indoor=1,
        ade_train=1,
        ade_val=1,
    )
    root = tmp_path / "city"
    make_city(root, config, seed=3)
    (root / "synth_city.json").unlink()  # as if killed before the marker was written
    stale = root / "raw/Amsterdam/images/999/stale.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    info = make_city(root, config, seed=3)
    assert (root / "synth_city.json").is_file() and not stale.exists()
    assert info.counts["database"] == 3 * 4 * 2
    # The same city made by other generator code is stale: regenerated, not reused.
    monkeypatch.setattr("synth.dataset.generator_digest", lambda: "edited-generator")
    assert make_city(root, config, seed=3).generator == "edited-generator"
    marker = json.loads((root / "synth_city.json").read_text())
    assert marker["generator_sha256"] == "edited-generator"


def test_config_rejects_unknown_keys_and_unknown_presets():
    with pytest.raises(HarnessError, match=r"unknown city config keys \['streets'\].*valid keys"):
        CityConfig.from_dict({"streets": 3})
    with pytest.raises(HarnessError, match="did you mean tiny"):
        get_preset("tinny")
    with pytest.raises(HarnessError, match="db_yaws"):
        CityConfig(db_yaws=(45,))


# --------------------------------------------------------------------------------- layout


def test_mat_files_parse_and_match_the_images_on_disk(tiny_city):
    counts = tiny_city.info.counts
    images = tiny_city.root / "raw/Amsterdam/images"
    queries = tiny_city.root / "raw/Amsterdam/queries"
    on_disk = {str(p.relative_to(images)) for p in images.rglob("*.jpg")}
    assert len(on_disk) == counts["database"]
    structs = {name: read_dbstruct(tiny_city.root / "raw" / name) for name in MAT_FILES}
    outdoor = structs["amsoutdoor_test.mat"]
    assert set(outdoor.db_images) == on_disk and outdoor.mat_version == "v7.3"
    for name, struct in structs.items():
        assert all((images / n).is_file() for n in struct.db_images), name
        assert all((queries / n).is_file() for n in struct.q_images), name
        assert struct.utm_db.shape == (struct.num_db, 2) and struct.utm_q.shape == (struct.num_q, 2)
        for utm in (struct.utm_db, struct.utm_q):  # a zone-31U-like Amsterdam area
            assert np.all((utm[:, 0] > 620_000) & (utm[:, 0] < 630_000)), name
            assert np.all((utm[:, 1] > 5_800_000) & (utm[:, 1] < 5_810_000)), name
    for indoor in ("amsindoor1_test.mat", "amsindoor2_test.mat"):
        assert structs[indoor].db_images == outdoor.db_images
        np.testing.assert_array_equal(structs[indoor].utm_db, outdoor.utm_db)
    assert structs["amsindoor1_test.mat"].num_q == counts["indoor1"]
    assert structs["amsoutdoor_test.mat"].num_q == counts["outdoor"]
    # Ams30k areas are disjoint, with no database image of one within 50 m of another's.
    areas = [structs[f"ams30k_{s}.mat"] for s in ("train", "val", "test")]
    for i in range(3):
        assert areas[i].which_set == ("train", "val", "test")[i] and areas[i].pos_dist_thr == 25.0
        for j in range(i + 1, 3):
            assert not set(areas[i].db_images) & set(areas[j].db_images)
            gaps = np.linalg.norm(areas[i].utm_db[:, None] - areas[j].utm_db[None], axis=2)
            assert gaps.min() > 60.0


def test_registered_splits_have_positives_and_absolute_roots(tiny_city):
    from harness.ground_truth import positives_within_radius

    for builtin, radius in (
        ("outdoor-ams", 50.0),
        ("indoor-ams-1", 50.0),
        ("indoor-ams-2", 50.0),
        ("ams30k-train", 25.0),
        ("ams30k-val", 25.0),
        ("ams30k-test", 25.0),
    ):
        split = tiny_city.split(builtin)
        assert split.radius_m == radius
        assert Path(split.query_root).is_absolute() and Path(split.database_root).is_absolute()
        positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
        assert positives.num_without_positive == 0, builtin


def test_places_are_about_ten_metres_apart(tiny_city):
    split = tiny_city.split("outdoor-ams")
    place_of = np.array([int(Path(name).name.split("_")[0]) for name in split.database_names])
    assert np.bincount(place_of).tolist() == [2] * tiny_city.info.counts["places"]  # two headings
    places = np.stack([split.database_utm[place_of == p].mean(axis=0) for p in np.unique(place_of)])
    nearest = np.sort(np.linalg.norm(places[:, None] - places[None], axis=2), axis=1)[:, 1]
    assert np.all((nearest > 8.0) & (nearest < 12.0))


# ------------------------------------------------------------------------ indoor queries


def test_indoor_masks_align_and_window_fractions_spread(tiny_city):
    records = [q for q in tiny_city.info.query_metadata() if q["set"].startswith("indoor")]
    assert len(records) == 2 * tiny_city.info.counts["indoor1"]
    fractions = []
    for record in records:
        image = _rgb(tiny_city.root / "raw/Amsterdam/queries" / record["name"])
        with Image.open(tiny_city.mask_path(record["name"])) as handle:
            assert handle.mode == "L"
            mask = np.asarray(handle)
        assert mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        fraction = float(np.mean(mask == 255))
        assert fraction == pytest.approx(record["window_fraction"], abs=1e-6)
        fractions.append(fraction)
    fractions = np.array(fractions)
    assert fractions.min() < 0.12 and fractions.max() > 0.45
    assert np.sum(fractions >= 0.3) >= 3 and np.sum(fractions < 0.2) >= 3


def test_indoor_window_shows_the_street_at_the_query_location(tiny_city):
    records = [q for q in tiny_city.info.query_metadata() if q["set"] == "indoor1"]
    views = {r["name"]: window_view(tiny_city.info, r["name"]) for r in records[:6]}
    for record in records[:6]:
        image = _rgb(tiny_city.root / "raw/Amsterdam/queries" / record["name"])
        with Image.open(tiny_city.mask_path(record["name"])) as handle:
            window = np.asarray(handle) == 255
        inner = window.copy()  # away from the frame and the JPEG edge ringing
        for axis in (0, 1):
            inner &= np.roll(window, 2, axis) & np.roll(window, -2, axis)
        seen = image[inner].astype(np.float64).mean(axis=1)

        def correlation(view):
            return np.corrcoef(seen, view[inner].astype(np.float64).mean(axis=1))[0, 1]

        own = correlation(views[record["name"]])
        others = [correlation(v) for name, v in views.items() if name != record["name"]]
        assert own > 0.45, record["name"]
        assert own > max(others) + 0.1, record["name"]


# --------------------------------------------------------------------------------- ADE20k


def test_ade_folder_is_in_the_scene_parsing_layout(tiny_city):
    ade = tiny_city.ade_dir
    categories = read_scene_categories(ade)
    valid_classes = set(ADE_CLASSES.values()) | {0}
    window_pixels = 0
    for part, prefix, count in (
        ("training", "ADE_train", tiny_city.info.counts["ade_training"]),
        ("validation", "ADE_val", tiny_city.info.counts["ade_validation"]),
    ):
        images = sorted((ade / "images" / part).glob("*.jpg"))
        assert [p.stem for p in images] == [f"{prefix}_{i:08d}" for i in range(1, count + 1)]
        for path in images:
            annotation = ade / "annotations" / part / f"{path.stem}.png"
            with Image.open(annotation) as handle:
                assert handle.mode == "L"
                labels = np.asarray(handle)
            assert labels.shape == _rgb(path).shape[:2]
            assert set(np.unique(labels)) <= valid_classes
            assert {ADE_CLASSES["wall"], ADE_CLASSES["floor"]} <= set(np.unique(labels))
            window_pixels += int(np.sum(labels == WINDOW_CLASS))
            assert categories[path.stem] in ROOM_CATEGORIES
    assert window_pixels > 0
    assert (
        len(categories)
        == tiny_city.info.counts["ade_training"] + tiny_city.info.counts["ade_validation"]
    )


# ---------------------------------------------------------------------------------- probe


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_probe_descriptor_is_unit_norm_and_photometrically_invariant(tiny_city, kind):
    split = tiny_city.split("outdoor-ams")
    image = _rgb(Path(split.database_root) / split.database_names[0])
    descriptor = probe_descriptor(image, kind)
    assert descriptor.shape == (probe_dim(kind),) and descriptor.dtype == np.float32
    assert np.linalg.norm(descriptor) == pytest.approx(1.0, abs=1e-5)
    darker = np.clip(image.astype(np.float32) * np.array([0.8, 0.75, 0.7]), 0, 255).astype(np.uint8)
    other = _rgb(Path(split.database_root) / split.database_names[-1])
    same = float(descriptor @ probe_descriptor(darker, kind))
    assert same > 0.9 and same > float(descriptor @ probe_descriptor(other, kind))
    gray = gray_layout(image, np.zeros(image.shape[:2], dtype=bool))
    assert np.isfinite(probe_descriptor(gray, kind)).all()


def test_gray_layout_keeps_exactly_the_window_pixels():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:4] = True
    out = gray_layout(image, mask)
    np.testing.assert_array_equal(out[mask], image[mask])
    assert np.all(out[~mask] == 128)


def test_probe_poses_the_inside_out_problem_on_the_tiny_city(tiny_city, tmp_path):
    """Outdoor queries beat indoor ones; oracle gray layouts recover part of the loss."""
    r1 = {}
    for builtin, oracle in (
        ("outdoor-ams", False),
        ("indoor-ams-1", False),
        ("indoor-ams-1", True),
        ("indoor-ams-2", False),
        ("indoor-ams-2", True),
    ):
        split = tiny_city.split(builtin)
        path = write_probe_features(
            split,
            tmp_path / f"{builtin}-{oracle}.h5",
            tiny_city.masks_dir if oracle else None,
            kind="hist",
        )
        recalls, first_rank = evaluate_probe(path, split, ns=(1, 5))
        assert recalls[1] == pytest.approx(np.mean(first_rank == 0))
        r1[builtin, oracle] = recalls[1]
    indoor = (r1["indoor-ams-1", False] + r1["indoor-ams-2", False]) / 2
    oracle = (r1["indoor-ams-1", True] + r1["indoor-ams-2", True]) / 2
    assert r1["outdoor-ams", False] > indoor + 0.1
    assert oracle > indoor + 0.1


def test_probe_feature_file_names_its_method_and_split(tiny_city, tmp_path):
    from harness.features import read_info, read_names

    split = tiny_city.split("indoor-ams-2")
    path = write_probe_features(split, tmp_path / "f.h5", tiny_city.masks_dir)
    info = read_info(path)
    assert info.split == split.name and info.method == "probe-hist-oracle-gray"
    assert info.parts["query"].count == split.num_queries
    assert read_names(path, "database") == list(split.database_names)


def test_probe_missing_mask_is_a_clear_error(tiny_city, tmp_path):
    split = tiny_city.split("outdoor-ams")  # outdoor queries have no window masks
    with pytest.raises(HarnessError, match="window mask not found"):
        write_probe_features(split, tmp_path / "f.h5", tiny_city.masks_dir)
    assert not (tmp_path / "f.h5").exists()


# ------------------------------------------------------------------------------------ CLI


def test_cli_city_reuses_a_complete_city_and_rejects_bad_presets(tiny_city, tmp_path):
    from harness.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["synth", "city", "--out", str(tiny_city.root), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert f"{tiny_city.info.counts['database']} database images" in result.output
    result = runner.invoke(
        cli, ["synth", "city", "--out", str(tiny_city.root), "--preset", "tinny"]
    )
    assert result.exit_code == 2
    assert "unknown city preset 'tinny'; did you mean tiny" in result.output
    data_root = tmp_path / "data"
    result = runner.invoke(
        cli,
        [
            "synth",
            "city",
            "--out",
            str(tiny_city.root),
            "--preset",
            "tiny",
            "--register",
            "--data-root",
            str(data_root),
        ],
    )
    assert result.exit_code == 0 and "registered synth-indoor-ams-1" in result.output
    assert (data_root / "splits" / "synth-indoor-ams-1.split.npz").is_file()
    result = runner.invoke(cli, ["synth", "presets"])
    assert result.exit_code == 0 and "demo" in result.output and "tiny" in result.output


def test_city_marker_records_what_generated_it(tiny_city):
    marker = json.loads((tiny_city.root / "synth_city.json").read_text())
    assert marker["preset"] == "tiny" and marker["seed"] == 0
    assert CityConfig.from_dict(marker["config"]).sha256 == get_preset("tiny").sha256
    assert marker["splits"]["indoor1"] == "indoor-ams-1"
