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

import concurrent.futures as futures
import io
import json
import logging
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from harness.errors import HarnessError
from harness.io import write_json_atomic
from synth import ade as ade_writer
from synth.city import (
    KEY_ADE,
    KEY_DB,
    KEY_INDOOR,
    KEY_PLAN,
    KEY_QUERY,
    CityLayout,
    Street,
    build_layout,
    build_street_model,
    image_rng,
)
from synth.indoor import ROOM_CATEGORIES, render_room
from synth.presets import GENERATOR_VERSION, CityConfig, get_preset
from synth.render import Camera, database_conditions, query_conditions, render_view

logger = logging.getLogger(__name__)

MARKER_NAME = "synth_city.json"
QUERY_META_NAME = "synth_queries.json"
IMAGES_DIR = Path("raw/Amsterdam/images")
QUERIES_DIR = Path("raw/Amsterdam/queries")
MASKS_DIR = Path("raw/Amsterdam/query_masks")
ADE_DIRNAME = "ADEChallengeData2016"

# Query sets: name -> (folder under queries/, areas its places come from, kind).
QUERY_SETS = {
    "ams30k_train": ("train",),
    "ams30k_val": ("val",),
    "ams30k_test": ("test",),
    "outdoor": ("test", "extra"),
    "indoor1": ("test", "extra"),
    "indoor2": ("test", "extra"),
}
_SET_CODES = {name: code for code, name in enumerate(QUERY_SETS)}
OUTDOOR_RADIUS_M = 50.0
AMS30K_RADIUS_M = 25.0
# .mat file -> (whichSet, database areas or None for all, query set, posDistThr, version).
MAT_FILES = {
    "ams30k_train.mat": ("train", ("train",), "ams30k_train", AMS30K_RADIUS_M, "v5"),
    "ams30k_val.mat": ("val", ("val",), "ams30k_val", AMS30K_RADIUS_M, "v5"),
    "ams30k_test.mat": ("test", ("test",), "ams30k_test", AMS30K_RADIUS_M, "v5"),
    # The real Outdoor-Ams file is too large for MATLAB v5: write it as v7.3 (HDF5).
    "amsoutdoor_test.mat": ("test", None, "outdoor", OUTDOOR_RADIUS_M, "v7.3"),
    "amsindoor1_test.mat": ("test", None, "indoor1", OUTDOOR_RADIUS_M, "v5"),
    "amsindoor2_test.mat": ("test", None, "indoor2", OUTDOOR_RADIUS_M, "v5"),
}
# Built-in split (splits/builtin.toml) fed by each query set.
BUILTIN_SPLITS = {
    "ams30k_train": "ams30k-train",
    "ams30k_val": "ams30k-val",
    "ams30k_test": "ams30k-test",
    "outdoor": "outdoor-ams",
    "indoor1": "indoor-ams-1",
    "indoor2": "indoor-ams-2",
}
_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}
# Streets rendered only through the windows of the ADE20k scenes (never in the city).
_ADE_STREETS = 3


@dataclass(frozen=True)
class CityInfo:
    """A generated city: where everything is, and what generated it.

    Attributes:
        root: the ``--out`` folder (the dataset root for ``harness splits prepare --root``).
        preset, seed, config: what generated it.
        counts: images per kind (``database``, each query set, ``ade_training``,
            ``ade_validation``).
    """

    root: Path
    preset: str
    seed: int
    config: CityConfig
    counts: dict = field(default_factory=dict)
    version: int = GENERATOR_VERSION
    generator: str = ""  # sha256 of the generator's source (see generator_digest)

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def queries_dir(self) -> Path:
        return self.root / QUERIES_DIR

    @property
    def masks_dir(self) -> Path:
        """Root of the indoor window masks: ``masks_dir / <query name>`` with ``.png``."""
        return self.root / MASKS_DIR

    @property
    def ade_dir(self) -> Path:
        return self.root / ADE_DIRNAME

    @property
    def mat_paths(self) -> dict[str, Path]:
        return {name: self.raw_dir / name for name in MAT_FILES}

    def mask_path(self, query_name: str) -> Path:
        return mask_path(self.masks_dir, query_name)

    def query_metadata(self) -> list[dict]:
        """Per-query records (set, name, place, street, camera, window fraction...)."""
        return json.loads((self.root / QUERY_META_NAME).read_text())["queries"]

    @classmethod
    def load(cls, root: str | os.PathLike) -> "CityInfo":
        """The city generated under ``root`` (its marker file must exist)."""
        root = Path(root)
        marker = root / MARKER_NAME
        try:
            meta = json.loads(marker.read_text())
            return cls(
                root=root,
                preset=meta["preset"],
                seed=int(meta["seed"]),
                config=CityConfig.from_dict(meta["config"]),
                counts=meta["counts"],
                version=int(meta["generator_version"]),
                generator=str(meta.get("generator_sha256", "")),
            )
        except FileNotFoundError:
            raise HarnessError("no synthetic city here (no synth_city.json marker)", root) from None
        except (KeyError, ValueError, TypeError) as exc:
            raise HarnessError(
                f"unreadable city marker ({type(exc).__name__}: {exc})", marker
            ) from None


_GENERATOR_MODULES = ("ade.py", "city.py", "dataset.py", "indoor.py", "presets.py", "render.py")


def generator_digest() -> str:
    """sha256 of the generator's source files: a cached city made by other code (an edited
    renderer, say) is regenerated even if :data:`GENERATOR_VERSION` was not bumped."""
    import hashlib

    digest = hashlib.sha256()
    folder = Path(__file__).resolve().parent
    for name in _GENERATOR_MODULES:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def mask_path(masks_dir: str | os.PathLike, query_name: str) -> Path:
    """Where the window mask of ``query_name`` lives: same relative path, ``.png``."""
    return Path(masks_dir) / Path(query_name).with_suffix(".png")


# ------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Job:
    """One image to render. ``street`` indexes the city's streets, or the ADE streets when
    ``kind`` is ``ade``."""

    kind: str  # "db", "query", "indoor", "ade"
    street: int
    index: int  # position in its stream (the rng key)
    name: str  # relative output path (under images/, queries/, or the ADE folder)
    camera: Camera
    utm: tuple[float, float] = (0.0, 0.0)
    query_set: str = ""
    place: int = -1
    target_fraction: float = 0.0
    category: str = ""
    ade_part: str = ""


def _yaw_name(yaw: int) -> int:
    return 1 + yaw // 30


def _db_jobs(config: CityConfig, layout: CityLayout, seed: int) -> list[_Job]:
    jobs = []
    for place in layout.places:
        street = layout.streets[place.street]
        for yaw in config.db_yaws:
            index = place.index * 12 + yaw // 30
            rng = image_rng(seed, KEY_PLAN, KEY_DB, index)
            lateral = float(rng.uniform(-1.0, 1.0))
            camera = Camera(
                place.along_m, lateral, 2.5, float(yaw), 10.0 + float(rng.uniform(-1, 1)), 90.0
            )
            name = f"{place.index // 1000:03d}/{place.index:06d}_pitch1_yaw{_yaw_name(yaw)}.jpg"
            east, north = street.utm(place.along_m, lateral)
            jobs.append(
                _Job(
                    "db",
                    street.index,
                    index,
                    name,
                    camera,
                    (float(east), float(north)),
                    place=place.index,
                )
            )
    return jobs


def _query_jobs(config: CityConfig, layout: CityLayout, seed: int) -> list[_Job]:
    counts = {
        "ams30k_train": config.queries_train,
        "ams30k_val": config.queries_val,
        "ams30k_test": config.queries_test,
        "outdoor": config.queries_outdoor,
        "indoor1": config.queries_indoor,
        "indoor2": config.queries_indoor,
    }
    jobs = []
    for query_set, areas in QUERY_SETS.items():
        count = counts[query_set]
        places = layout.places_in(areas)
        code = _SET_CODES[query_set]
        plan = image_rng(seed, KEY_PLAN, KEY_QUERY, code)
        chosen = plan.choice(len(places), size=count, replace=count > len(places))
        indoor = query_set.startswith("indoor")
        # Stratified window fractions: every part of the range is represented.
        strata = plan.permutation(count)
        for k in range(count):
            place = places[int(chosen[k])]
            street = layout.streets[place.street]
            rng = image_rng(seed, KEY_PLAN, KEY_QUERY, code, k)
            along = float(np.clip(place.along_m + rng.uniform(-4.0, 4.0), 0.0, street.length_m))
            yaw_base = float(config.db_yaws[int(rng.integers(len(config.db_yaws)))])
            if indoor:
                # Inside a house across the street, looking out at the facade the database
                # sees at this heading; phones have a narrower field of view.
                yaw_base = 90.0 if rng.random() < 0.5 else 270.0
                depth = float(rng.uniform(0.5, 2.5))
                lateral = -street.left_m - depth if yaw_base == 90.0 else street.right_m + depth
                camera = Camera(
                    along,
                    lateral,
                    float(rng.uniform(1.5, 4.0)),
                    yaw_base + float(rng.uniform(-8, 8)),
                    float(rng.uniform(2, 12)),
                    float(rng.uniform(48, 62)),
                )
                lo, hi = config.indoor_min_fraction, config.indoor_max_fraction
                target = lo + (hi - lo) * (strata[k] + rng.uniform()) / max(count, 1)
            else:
                lateral = float(rng.uniform(-2.5, 2.5))
                camera = Camera(
                    along,
                    lateral,
                    float(rng.uniform(1.4, 2.0)),
                    yaw_base + float(rng.uniform(-10, 10)),
                    float(rng.uniform(2, 14)),
                    float(rng.uniform(70, 90)),
                )
                target = 0.0
            east, north = street.utm(along, camera.lateral_m)
            jobs.append(
                _Job(
                    "indoor" if indoor else "query",
                    street.index,
                    code * 1_000_000 + k,
                    f"{query_set}/{k:06d}.jpg",
                    camera,
                    (float(east), float(north)),
                    query_set=query_set,
                    place=place.index,
                    target_fraction=float(target),
                    category=(
                        ROOM_CATEGORIES[int(rng.integers(len(ROOM_CATEGORIES)))] if indoor else ""
                    ),
                )
            )
    return jobs


def _ade_streets(seed: int) -> list[Street]:
    """Streets seen only through ADE20k windows (never part of the city or its splits)."""
    rng = image_rng(seed, KEY_PLAN, KEY_ADE, 0)
    streets = []
    for index in range(_ADE_STREETS):
        water = float(rng.uniform(5, 8)) if index == 0 else 0.0
        road = float(rng.uniform(2.5, 4.5))
        streets.append(
            Street(
                index=index,
                area="ade",
                origin=(0.0, 0.0),
                angle_rad=0.0,
                length_m=300.0,
                kind="canal" if water else "street",
                left_m=water + road + 2.0,
                right_m=water + road + 2.0,
                water_half_m=water,
                road_half_m=road,
                seed=int(rng.integers(2**31)),
            )
        )
    return streets


def _ade_jobs(config: CityConfig, seed: int) -> list[_Job]:
    jobs = []
    streets = _ade_streets(seed)
    for part, count in (("training", config.ade_train), ("validation", config.ade_val)):
        for k in range(count):
            index = (0 if part == "training" else 1) * 1_000_000 + k
            rng = image_rng(seed, KEY_PLAN, KEY_ADE, 1, index)
            street = streets[int(rng.integers(len(streets)))]
            yaw = (90.0 if rng.random() < 0.5 else 270.0) + float(rng.uniform(-30, 30))
            lateral = -street.left_m - 1.0 if yaw < 180 else street.right_m + 1.0
            camera = Camera(
                float(rng.uniform(0, street.length_m)),
                lateral,
                float(rng.uniform(1.5, 15)),
                yaw,
                float(rng.uniform(-10, 25)),
                float(rng.uniform(50, 80)),
            )
            # ~10% of ADE's indoor scenes show no window at all.
            target = 0.0 if rng.random() < 0.1 else float(rng.uniform(0.02, 0.6))
            prefix = "ADE_train" if part == "training" else "ADE_val"
            jobs.append(
                _Job(
                    "ade",
                    street.index,
                    index,
                    f"{prefix}_{k + 1:08d}",
                    camera,
                    target_fraction=target,
                    ade_part=part,
                    category=ROOM_CATEGORIES[int(rng.integers(len(ROOM_CATEGORIES)))],
                )
            )
    return jobs


# ------------------------------------------------------------------------------ rendering


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(
        buffer,
        format="JPEG",
        quality=int(quality),
        optimize=False,
        progressive=False,
        subsampling=0,
    )
    return buffer.getvalue()


def _encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, **_PNG_OPTIONS)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write beside the target and rename: a crash never leaves a truncated image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _render_job(job: _Job, model, config: CityConfig, seed: int, root: Path) -> dict:
    width, height = config.image_width, config.image_height
    if job.kind == "db":
        rng = image_rng(seed, KEY_DB, job.index)
        image = render_view(model, job.camera, width, height, database_conditions(rng), rng)
        _write(root / IMAGES_DIR / job.name, _encode_jpeg(image, config.jpeg_quality))
        return {}
    if job.kind == "query":
        rng = image_rng(seed, KEY_QUERY, job.index)
        image = render_view(model, job.camera, width, height, query_conditions(rng), rng)
        _write(root / QUERIES_DIR / job.name, _encode_jpeg(image, int(rng.integers(75, 96))))
        return {}
    key = KEY_INDOOR if job.kind == "indoor" else KEY_ADE
    rng = image_rng(seed, key, job.index)
    outdoor = render_view(model, job.camera, width, height, query_conditions(rng), rng)
    room = render_room_near(rng, width, height, job.target_fraction, outdoor, job.category)
    quality = int(rng.integers(75, 96))
    if job.kind == "indoor":
        _write(root / QUERIES_DIR / job.name, _encode_jpeg(room.image, quality))
        mask = np.where(room.window_mask, 255, 0).astype(np.uint8)
        _write(mask_path(root / MASKS_DIR, job.name), _encode_png(mask))
    else:
        ade_writer.write_scene(
            root / ADE_DIRNAME,
            job.ade_part,
            job.name,
            _encode_jpeg(room.image, quality),
            _encode_png(room.labels),
        )
    return {"window_fraction": room.window_fraction, "category": room.category}


def render_room_near(rng, width, height, target, outdoor, category, tries: int = 3):
    """A room whose visible window fraction is near ``target`` (furniture and curtains hide
    part of the windows, so the drawn windows are enlarged and the closest try is kept)."""
    if target <= 0:
        return render_room(rng, width, height, 0.0, None, category)
    best, ask = None, target * 1.15
    for _ in range(tries):
        room = render_room(rng, width, height, min(ask, 0.85), outdoor, category)
        if best is None or abs(room.window_fraction - target) < abs(best.window_fraction - target):
            best = room
        if abs(room.window_fraction - target) <= 0.2 * target:
            break
        ask = ask * target / max(room.window_fraction, 0.01)
    return best


_WORKER_STATE: dict = {}


def _render_group(args) -> list[tuple[int, dict]]:
    """Render every job of one street (its facades are built once for them)."""
    group_key, jobs = args
    config, seed, root, city_streets, ade_streets = (
        _WORKER_STATE[k] for k in ("config", "seed", "root", "streets", "ade_streets")
    )
    kind, street_index = group_key
    street = (ade_streets if kind == "ade" else city_streets)[street_index]
    model = build_street_model(street, config.px_per_m)
    return [(position, _render_job(job, model, config, seed, root)) for position, job in jobs]


def _init_worker(state: dict) -> None:
    _WORKER_STATE.clear()
    _WORKER_STATE.update(state)


def _run_jobs(
    jobs: list[_Job], config: CityConfig, seed: int, root: Path, layout: CityLayout, workers: int
) -> list[dict]:
    groups: dict[tuple[str, int], list[tuple[int, _Job]]] = {}
    for position, job in enumerate(jobs):
        groups.setdefault(("ade" if job.kind == "ade" else "city", job.street), []).append(
            (position, job)
        )
    state = {
        "config": config,
        "seed": seed,
        "root": root,
        "streets": layout.streets,
        "ade_streets": _ade_streets(seed),
    }
    # Split big groups so that the workers stay busy (a street's facades are rebuilt per part).
    chunk = max(16, len(jobs) // (4 * workers) + 1) if workers > 1 else len(jobs) + 1
    tasks = [
        (key, items[i : i + chunk])
        for key, items in sorted(groups.items())
        for i in range(0, len(items), chunk)
    ]
    results: list[dict] = [{} for _ in jobs]
    with tqdm(total=len(jobs), desc="rendering", unit="img", leave=False) as bar:
        if workers <= 1:
            _init_worker(state)
            for task in tasks:
                for position, meta in _render_group(task):
                    results[position] = meta
                bar.update(len(task[1]))
        else:
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            with futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=(state,)
            ) as pool:
                pending = {pool.submit(_render_group, task): len(task[1]) for task in tasks}
                for done in futures.as_completed(pending):
                    for position, meta in done.result():
                        results[position] = meta
                    bar.update(pending[done])
    return results


def window_view(info: CityInfo, query_name: str) -> np.ndarray:
    """Re-render the street view that an indoor query's windows show (uint8 (H, W, 3)), from
    the same camera, conditions and random stream as when the city was generated."""
    config = info.config
    layout = build_layout(config, info.seed)
    jobs = {job.name: job for job in _query_jobs(config, layout, info.seed) if job.kind == "indoor"}
    if query_name not in jobs:
        raise HarnessError(f"{query_name!r} is not an indoor query of this city", info.root)
    job = jobs[query_name]
    model = build_street_model(layout.streets[job.street], config.px_per_m)
    rng = image_rng(info.seed, KEY_INDOOR, job.index)
    return render_view(
        model, job.camera, config.image_width, config.image_height, query_conditions(rng), rng
    )


# ------------------------------------------------------------------------------- writing


def _write_mat_files(
    root: Path, layout: CityLayout, db_jobs: list[_Job], query_jobs: list[_Job]
) -> None:
    from harness.matfile import write_dbstruct

    by_set: dict[str, list[_Job]] = {}
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
    db_jobs = _db_jobs(config, layout, seed)
    query_jobs = _query_jobs(config, layout, seed)
    ade_jobs = _ade_jobs(config, seed)
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
    results = _run_jobs(jobs, config, seed, root, layout, workers)

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
