"""Which images a synthetic city has: one :class:`ImageJob` per database view, query and
ADE20k scene, with its camera, position and random-stream key, planned before any rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.city import (
    KEY_ADE,
    KEY_DB,
    KEY_PLAN,
    KEY_QUERY,
    CityLayout,
    Street,
    image_rng,
)
from synth.city_files import QUERY_SETS
from synth.indoor import ROOM_CATEGORIES
from synth.presets import CityConfig
from synth.render import Camera

_SET_CODES = {name: code for code, name in enumerate(QUERY_SETS)}
# Streets rendered only through the windows of the ADE20k scenes (never in the city).
_ADE_STREETS = 3


@dataclass(frozen=True)
class ImageJob:
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


def plan_database(config: CityConfig, layout: CityLayout, seed: int) -> list[ImageJob]:
    """The database views: every place at each of the config's headings."""
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
                ImageJob(
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


def plan_queries(config: CityConfig, layout: CityLayout, seed: int) -> list[ImageJob]:
    """The queries of every query set (outdoor views, and indoor views out of a window)."""
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
                ImageJob(
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


def ade_streets(seed: int) -> list[Street]:
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


def plan_ade(config: CityConfig, seed: int) -> list[ImageJob]:
    """The ADE20k-layout training and validation scenes (rooms over the ADE streets)."""
    jobs = []
    streets = ade_streets(seed)
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
                ImageJob(
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

