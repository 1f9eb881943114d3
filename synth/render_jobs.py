"""Rendering planned images (:mod:`synth.plan`) to their files, across worker processes.

Each street's facades are built once per group of its jobs; every image draws from its own
random stream, so the bytes do not depend on the number of workers or the order.
"""

from __future__ import annotations

import concurrent.futures as futures
import io
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from harness.errors import HarnessError
from synth import ade as ade_writer
from synth.city import (
    KEY_ADE,
    KEY_DB,
    KEY_INDOOR,
    KEY_QUERY,
    CityLayout,
    build_layout,
    build_street_model,
    image_rng,
)
from synth.city_files import (
    ADE_DIRNAME,
    IMAGES_DIR,
    MASKS_DIR,
    QUERIES_DIR,
    CityInfo,
    mask_path,
)
from synth.indoor import render_room
from synth.plan import ImageJob, ade_streets, plan_queries
from synth.presets import CityConfig
from synth.render import database_conditions, query_conditions, render_view

_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}


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


def _render_job(job: ImageJob, model, config: CityConfig, seed: int, root: Path) -> dict:
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


def render_jobs(
    jobs: list[ImageJob],
    config: CityConfig,
    seed: int,
    root: Path,
    layout: CityLayout,
    workers: int,
) -> list[dict]:
    """Render every job under ``root`` with ``workers`` processes; per job, the room's facts
    (window fraction, category) for indoor queries and ADE scenes, ``{}`` otherwise."""
    groups: dict[tuple[str, int], list[tuple[int, ImageJob]]] = {}
    for position, job in enumerate(jobs):
        groups.setdefault(("ade" if job.kind == "ade" else "city", job.street), []).append(
            (position, job)
        )
    state = {
        "config": config,
        "seed": seed,
        "root": root,
        "streets": layout.streets,
        "ade_streets": ade_streets(seed),
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
    planned = plan_queries(config, layout, info.seed)
    jobs = {job.name: job for job in planned if job.kind == "indoor"}
    if query_name not in jobs:
        raise HarnessError(f"{query_name!r} is not an indoor query of this city", info.root)
    job = jobs[query_name]
    model = build_street_model(layout.streets[job.street], config.px_per_m)
    rng = image_rng(info.seed, KEY_INDOOR, job.index)
    return render_view(
        model, job.camera, config.image_width, config.image_height, query_conditions(rng), rng
    )
