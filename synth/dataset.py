"""Generate the synthetic city in the layout of the real Amsterdam-XXXL release.

Written under ``<out>``::

    raw/ams30k_{train,val,test}.mat        NetVLAD dbStructs, disjoint areas (25 m)
    raw/amsoutdoor_test.mat                Outdoor-Ams: every place + outdoor queries (50 m, v7.3)
    raw/amsindoor{1,2}_test.mat            indoor queries; dbImage repeats Outdoor-Ams (50 m)
    raw/Amsterdam/images/<ddd>/<place:06d>_pitch1_yaw<k>.jpg      database views
    raw/Amsterdam/queries/<set>/<index:06d>.jpg                   queries; <set> is one of
        ams30k_train, ams30k_val, ams30k_test, outdoor, indoor1, indoor2
    raw/Amsterdam/query_masks/indoor{1,2}/<index:06d>.png         true window mask of each
        indoor query (uint8, 255 = window pixel, 0 = room), same size as the query
    ADEChallengeData2016/...                ADE20k scene-parsing layout (see synth.ade)
    synth_queries.json                      per query: set, place, camera, window fraction
    synth_city.json                         written last: preset, seed, config, counts

Every image has its own random stream keyed by (seed, kind, index), so the bytes do not
depend on the number of worker processes or the order of rendering.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.io import write_json_atomic
from synth import ade as ade_writer
from synth.city import CityLayout, build_layout
from synth.city_files import (
    ADE_DIRNAME,
    AMS30K_RADIUS_M,
    BUILTIN_SPLITS,
    IMAGES_DIR,
    MARKER_NAME,
    MASKS_DIR,
    MAT_FILES,
    OUTDOOR_RADIUS_M,
    QUERIES_DIR,
    QUERY_META_NAME,
    QUERY_SETS,
    CityInfo,
    generator_digest,
    mask_path,
)
from synth.plan import ImageJob, plan_ade, plan_database, plan_queries
from synth.presets import GENERATOR_VERSION, CityConfig, get_preset
from synth.render_jobs import render_jobs, render_room_near, window_view

# Re-exported: the file layout (synth.city_files), the plan (synth.plan) and the rendering
# (synth.render_jobs) live in their own modules.
__all__ = [
    "ADE_DIRNAME",
    "AMS30K_RADIUS_M",
    "BUILTIN_SPLITS",
    "IMAGES_DIR",
    "MARKER_NAME",
    "MASKS_DIR",
    "MAT_FILES",
    "OUTDOOR_RADIUS_M",
    "QUERIES_DIR",
    "QUERY_META_NAME",
    "QUERY_SETS",
    "CityInfo",
    "generator_digest",
    "make_city",
    "mask_path",
    "render_room_near",
    "window_view",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- writing


def _write_mat_files(
    root: Path, layout: CityLayout, db_jobs: list[ImageJob], query_jobs: list[ImageJob]
) -> None:
    from harness.matfile import write_dbstruct

    by_set: dict[str, list[ImageJob]] = {}
    for job in query_jobs:
        by_set.setdefault(job.query_set, []).append(job)
    for filename, (which_set, areas, query_set, radius, version) in MAT_FILES.items():
        db = [j for j in db_jobs if areas is None or layout.streets[j.street].area in areas]
        db.sort(key=lambda j: j.name)
        queries = sorted(by_set.get(query_set, []), key=lambda j: j.name)
        write_dbstruct(
            root / "raw" / filename,
            which_set=which_set,
            db_images=[j.name for j in db],
            utm_db=np.array([j.utm for j in db], dtype=np.float64).reshape(-1, 2),
            q_images=[j.name for j in queries],
            utm_q=np.array([j.utm for j in queries], dtype=np.float64).reshape(-1, 2),
            pos_dist_thr=radius,
            version=version,
        )
        if version == "v5":
            _drop_v5_timestamp(root / "raw" / filename)


_V5_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: iovpr-harness synthetic city"


def _drop_v5_timestamp(path: Path) -> None:
    """scipy writes the creation time into the 116-byte free-text header of a MATLAB v5 file;
    replace it with a fixed text so the same seed gives the same bytes (readers ignore it)."""
    with open(path, "r+b") as handle:
        head = handle.read(116)
        if head.startswith(b"MATLAB 5.0 MAT-file") and b"Created on" in head:
            handle.seek(0)
            handle.write(_V5_TEXT.ljust(116, b" "))


def _clean(root: Path) -> None:
    """Remove what a previous (other or interrupted) generation wrote; nothing else."""
    for relative in (MARKER_NAME, QUERY_META_NAME, *(f"raw/{n}" for n in MAT_FILES)):
        (root / relative).unlink(missing_ok=True)
    for relative in ("raw/Amsterdam", ADE_DIRNAME):
        shutil.rmtree(root / relative, ignore_errors=True)


def make_city(
    out_dir: str | os.PathLike,
    preset: str | CityConfig = "demo",
    seed: int = 0,
    *,
    workers: int | None = None,
    force: bool = False,
) -> CityInfo:
    """Generate the synthetic city under ``out_dir`` (cached).

    If ``out_dir`` already holds a complete city of the same config, seed and generator
    (:data:`GENERATOR_VERSION` and the digest of the generator's source), nothing is done; the
    same city made by other generator code is regenerated. A different complete city there is
    an error unless ``force``; an incomplete one (no marker: an interrupted run) is
    regenerated. The marker file is written last, atomically.

    Args:
        out_dir: dataset root to write (``raw/...`` and ``ADEChallengeData2016/...``).
        preset: a preset name (``tiny``, ``demo``, ``medium``) or a :class:`CityConfig`.
        seed: the random seed; the same seed gives byte-identical files.
        workers: rendering processes (default: the config's); the output does not depend on it.
        force: overwrite a different city already in ``out_dir``.

    Returns:
        The :class:`CityInfo` of the city.
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    generator = generator_digest()
    root = Path(out_dir).expanduser()
    marker = root / MARKER_NAME
    if marker.is_file():
        existing = CityInfo.load(root)
        same = (
            existing.version == GENERATOR_VERSION
            and existing.seed == int(seed)
            and existing.config.sha256 == config.sha256
            and existing.generator == generator
        )
        if existing.seed == int(seed) and existing.config.sha256 == config.sha256 and not same:
            force = True  # the same city by other generator code: stale, regenerate it
            logger.info(
                "synthetic city in %s was made by another generator version: regenerating", root
            )
        if same:
            logger.info(
                "synthetic city %s (seed %d) is already complete in %s", config.name, seed, root
            )
            return existing
        if not force:
            raise HarnessError(
                f"holds another synthetic city (preset {existing.preset}, seed {existing.seed}, "
                f"generator v{existing.version}); use another --out or --force",
                root,
            )
    if root.exists() and not root.is_dir():
        raise HarnessError("output path exists and is not a directory", root)
    root.mkdir(parents=True, exist_ok=True)
    _clean(root)
    workers = config.workers if workers is None else max(1, int(workers))

    layout = build_layout(config, seed)
    db_jobs = plan_database(config, layout, seed)
    query_jobs = plan_queries(config, layout, seed)
    ade_jobs = plan_ade(config, seed)
    jobs = db_jobs + query_jobs + ade_jobs
    logger.info(
        "generating synthetic city %s (seed %d): %d database images, %d queries, "
        "%d ADE20k scenes, %dx%d, %d worker(s) -> %s",
        config.name,
        seed,
        len(db_jobs),
        len(query_jobs),
        len(ade_jobs),
        config.image_width,
        config.image_height,
        workers,
        root,
    )
    results = render_jobs(jobs, config, seed, root, layout, workers)

    ade_results = [(job, meta) for job, meta in zip(jobs, results) if job.kind == "ade"]
    ade_writer.write_scene_categories(
        root / ADE_DIRNAME, [(j.name, m["category"]) for j, m in ade_results]
    )
    _write_mat_files(root, layout, db_jobs, query_jobs)
    queries_meta = []
    for job, meta in zip(jobs, results):
        if job.kind not in ("query", "indoor"):
            continue
        record = {
            "set": job.query_set,
            "name": job.name,
            "place": job.place,
            "street": job.street,
            "utm": [round(v, 4) for v in job.utm],
            "camera": {k: round(float(v), 4) for k, v in vars(job.camera).items()},
        }
        if job.kind == "indoor":
            record.update(
                window_fraction=round(meta["window_fraction"], 6),
                category=meta["category"],
                mask=str(mask_path(MASKS_DIR, job.name)),
            )
        queries_meta.append(record)
    write_json_atomic(root / QUERY_META_NAME, {"queries": queries_meta})
    counts = {
        "database": len(db_jobs),
        "places": len(layout.places),
        "streets": len(layout.streets),
    }
    for query_set in QUERY_SETS:
        counts[query_set] = sum(1 for j in query_jobs if j.query_set == query_set)
    counts["ade_training"] = sum(1 for j in ade_jobs if j.ade_part == "training")
    counts["ade_validation"] = sum(1 for j in ade_jobs if j.ade_part == "validation")
    info = CityInfo(
        root=root,
        preset=config.name,
        seed=int(seed),
        config=config,
        counts=counts,
        generator=generator,
    )
    write_json_atomic(
        marker,
        {
            "generator_version": GENERATOR_VERSION,
            "generator_sha256": generator,
            "preset": config.name,
            "seed": int(seed),
            "config": {**config.content_dict(), "name": config.name},
            "config_sha256": config.sha256,
            "counts": counts,
            "splits": {qs: BUILTIN_SPLITS[qs] for qs in QUERY_SETS},
        },
    )
    logger.info("synthetic city complete: %s", counts)
    return info
