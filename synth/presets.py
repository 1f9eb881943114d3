"""Size presets of the synthetic city: frozen configs, a registry, and a strict constructor.

A preset fixes everything that decides the content of the generated dataset except the seed:
image size, number of streets per area, places per street, database headings, query and
ADE20k counts. ``CityConfig.sha256`` identifies a configuration (the generation cache keys on
it together with the seed and :data:`GENERATOR_VERSION`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Mapping

from harness.errors import HarnessError

# Bump whenever a change in the generator changes any output byte: caches keyed on it are
# then regenerated instead of being silently reused.
GENERATOR_VERSION = 1

# Headings of the database views, in degrees clockwise from the street direction; 90 and 270
# look at the right and left facades, 0 and 180 along the street. They become the Pitts-like
# ``yaw<k>`` suffix of the image names (k = 1 + heading / 30).
SIDE_YAWS = (90, 270)
ALL_YAWS = (0, 90, 180, 270)


@dataclass(frozen=True)
class CityConfig:
    """Everything that decides the generated city except the seed.

    Attributes:
        name: preset name (recorded in the city's metadata).
        image_width, image_height: size of every image, pixels.
        px_per_m: resolution of the facade textures the views are sampled from.
        streets_train, streets_val, streets_test: streets in the disjoint Ams30k areas.
        streets_extra: streets only in the Outdoor-Ams database (as the real one is larger).
        places_per_street: places every ``place_spacing_m`` metres along each street.
        db_yaws: headings of the database views at every place.
        queries_train, queries_val, queries_test: outdoor queries of the Ams30k splits.
        queries_outdoor: outdoor queries of Outdoor-Ams (in the test + extra areas).
        queries_indoor: indoor queries in each of the two Indoor-Ams sets.
        indoor_min_fraction, indoor_max_fraction: spread of the indoor window fractions.
        ade_train, ade_val: images in the ADE20k-format training / validation sets.
        jpeg_quality: quality of the database JPEGs (queries vary their own).
        workers: processes used for rendering (1 = in this process); output is identical.
    """

    name: str = "custom"
    image_width: int = 320
    image_height: int = 240
    px_per_m: float = 16.0
    streets_train: int = 3
    streets_val: int = 1
    streets_test: int = 2
    streets_extra: int = 2
    places_per_street: int = 32
    place_spacing_m: float = 10.0
    db_yaws: tuple[int, ...] = SIDE_YAWS
    queries_train: int = 128
    queries_val: int = 32
    queries_test: int = 48
    queries_outdoor: int = 64
    queries_indoor: int = 80
    indoor_min_fraction: float = 0.05
    indoor_max_fraction: float = 0.60
    ade_train: int = 200
    ade_val: int = 50
    jpeg_quality: int = 92
    workers: int = 1

    def __post_init__(self):
        problems = []
        if self.image_width < 32 or self.image_height < 24:
            problems.append(f"image size {self.image_width}x{self.image_height} is below 32x24")
        for key in ("streets_train", "streets_val", "streets_test", "places_per_street"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1")
        for key in (
            "streets_extra",
            "queries_train",
            "queries_val",
            "queries_test",
            "queries_outdoor",
            "queries_indoor",
            "ade_train",
            "ade_val",
        ):
            if getattr(self, key) < 0:
                problems.append(f"{key} must be >= 0")
        if not self.db_yaws or any(y % 30 or not 0 <= y < 360 for y in self.db_yaws):
            problems.append(f"db_yaws must be multiples of 30 in [0, 360), got {self.db_yaws}")
        if not 0 < self.indoor_min_fraction <= self.indoor_max_fraction < 1:
            problems.append("need 0 < indoor_min_fraction <= indoor_max_fraction < 1")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append("jpeg_quality must be in 1..100")
        if self.workers < 1:
            problems.append("workers must be >= 1")
        if self.px_per_m <= 0 or self.place_spacing_m <= 0:
            problems.append("px_per_m and place_spacing_m must be > 0")
        if problems:
            raise HarnessError(f"invalid city config {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "db_yaws", tuple(int(y) for y in self.db_yaws))

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "CityConfig":
        """Build a config from a mapping; unknown keys are an error that lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise HarnessError(f"unknown city config keys {unknown}; valid keys are {valid}")
        values = dict(values)
        if "db_yaws" in values:
            values["db_yaws"] = tuple(values["db_yaws"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["db_yaws"] = list(self.db_yaws)
        return out

    def content_dict(self) -> dict:
        """The fields that decide the output bytes (``workers`` and ``name`` do not)."""
        out = self.to_dict()
        del out["workers"], out["name"]
        return out

    @property
    def sha256(self) -> str:
        text = json.dumps(self.content_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **changes) -> "CityConfig":
        return CityConfig.from_dict({**self.to_dict(), **changes})

    @property
    def num_streets(self) -> int:
        return self.streets_train + self.streets_val + self.streets_test + self.streets_extra

    @property
    def num_places(self) -> int:
        return self.num_streets * self.places_per_street

    @property
    def num_database(self) -> int:
        return self.num_places * len(self.db_yaws)


_PRESETS: dict[str, Callable[[], CityConfig]] = {}


def register_preset(name: str):
    """Decorator: register a zero-argument function returning a :class:`CityConfig`."""

    def decorate(factory: Callable[[], CityConfig]):
        if name in _PRESETS:
            raise HarnessError(f"city preset {name!r} is already registered")
        _PRESETS[name] = factory
        return factory

    return decorate


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> CityConfig:
    """The config of a registered preset; unknown names suggest close matches."""
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(_PRESETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HarnessError(
            f"unknown city preset {name!r}{hint} (known: {', '.join(list_presets())})"
        )
    return _PRESETS[name]()


@register_preset("tiny")
def _tiny() -> CityConfig:
    """180 images of 160x120 (+24 ADE20k scenes) in a few seconds: the tests' session fixture."""
    return CityConfig(
        name="tiny",
        image_width=160,
        image_height=120,
        px_per_m=10.0,
        streets_train=1,
        streets_val=1,
        streets_test=1,
        streets_extra=1,
        places_per_street=12,
        db_yaws=SIDE_YAWS,
        queries_train=12,
        queries_val=6,
        queries_test=6,
        queries_outdoor=12,
        queries_indoor=12,
        ade_train=16,
        ade_val=8,
    )


@register_preset("demo")
def _demo() -> CityConfig:
    """1,194 images of 320x240 for `make demo` (~70 CPU-seconds: ~35 s on two cores)."""
    return CityConfig(name="demo")


@register_preset("medium")
def _medium() -> CityConfig:
    """A larger city, four headings per place: 3,840 database images, 2,300 queries and
    2,500 ADE20k scenes of 640x480."""
    return CityConfig(
        name="medium",
        image_width=640,
        image_height=480,
        px_per_m=24.0,
        streets_train=8,
        streets_val=2,
        streets_test=4,
        streets_extra=6,
        places_per_street=48,
        db_yaws=ALL_YAWS,
        queries_train=800,
        queries_val=200,
        queries_test=300,
        queries_outdoor=300,
        queries_indoor=500,
        ade_train=2000,
        ade_val=500,
        workers=2,
    )
