"""The city: streets, places every ~10 m in UTM, and the facades along each street.

Streets are straight, laid out on a grid in a zone-31U-like area around Amsterdam
(easting ~620-630 km, northing ~5800-5810 km), far enough apart that no place of one street
is within 60 m of another street (more than the largest positive radius, 50 m). Each street
has a left and a right row of contiguous canal houses; every building has its own identity
(facade colour and material, window grid and frames, door or shop with a sign, gable shape).

A street is described twice: :class:`Street` (cheap geometry, positions, the seed of its
facades) and :class:`StreetModel` (the facade textures, built on demand by
:func:`build_street_model`, a few MB per street, which the renderer samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from synth.presets import CityConfig

# South-west corner of the synthetic city (UTM zone 31U, metres).
ORIGIN_EASTING = 620_500.0
ORIGIN_NORTHING = 5_800_500.0
ROW_SPACING_M = 160.0
COLUMN_GAP_M = 160.0
# Facades extend this far beyond both ends of a street so that views near the ends, and
# oblique views, still see buildings.
MARGIN_M = 80.0
MAX_BUILDING_HEIGHT_M = 26.0
AREAS = ("train", "val", "test", "extra")


def image_rng(seed: int, *key: int) -> np.random.Generator:
    """A Generator keyed by (seed, *key): every image has its own stream, so rendering in any
    order or in parallel gives the same bytes."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, key)]))


# Stream keys: the first element of every image_rng key says what the stream is for.
KEY_STREET = 1
KEY_DB = 2
KEY_QUERY = 3
KEY_INDOOR = 4
KEY_ADE = 5
KEY_PLAN = 6


@dataclass(frozen=True)
class Street:
    """A straight street: geometry in street coordinates and its placement in UTM.

    Street coordinates: ``along`` (metres from the street's start, direction ``angle_rad``
    counter-clockwise from east), ``lateral`` (metres to the right of the centre line) and
    height. The right facade is at ``lateral = right_m``, the left one at ``-left_m``.
    """

    index: int
    area: str
    origin: tuple[float, float]
    angle_rad: float
    length_m: float
    kind: str  # "street" or "canal"
    left_m: float
    right_m: float
    water_half_m: float  # canal water either side of the centre line (0: no canal)
    road_half_m: float  # road beyond the water (or either side of the centre)
    seed: int

    def utm(self, along_m, lateral_m=0.0) -> np.ndarray:
        """UTM (easting, northing) of street coordinates; vectorised over numpy inputs."""
        along = np.asarray(along_m, dtype=np.float64)
        lateral = np.asarray(lateral_m, dtype=np.float64)
        cos_a, sin_a = math.cos(self.angle_rad), math.sin(self.angle_rad)
        # "right" of the direction (cos, sin) is (sin, -cos).
        east = self.origin[0] + along * cos_a + lateral * sin_a
        north = self.origin[1] + along * sin_a - lateral * cos_a
        return np.stack(np.broadcast_arrays(east, north), axis=-1)


@dataclass(frozen=True)
class Place:
    """A database place: a point on a street's centre line."""

    index: int
    street: int
    along_m: float
    utm: tuple[float, float]


@dataclass(frozen=True)
class CityLayout:
    streets: tuple[Street, ...]
    places: tuple[Place, ...]

    def places_in(self, areas) -> list[Place]:
        wanted = set(areas)
        return [p for p in self.places if self.streets[p.street].area in wanted]


def build_layout(config: CityConfig, seed: int) -> CityLayout:
    """Streets and places of a city; deterministic in (config, seed)."""
    rng = image_rng(seed, KEY_PLAN, 0)
    counts = (config.streets_train, config.streets_val, config.streets_test, config.streets_extra)
    areas = [area for area, n in zip(AREAS, counts) for _ in range(n)]
    length = config.place_spacing_m * (config.places_per_street - 1)
    columns = max(1, math.ceil(math.sqrt(len(areas))))
    streets = []
    for index, area in enumerate(areas):
        row, col = divmod(index, columns)
        kind = "canal" if rng.random() < 0.4 else "street"
        if kind == "canal":
            water, road = rng.uniform(5.0, 8.0), rng.uniform(3.0, 4.5)
        else:
            water, road = 0.0, rng.uniform(2.5, 4.5)
        left = water + road + rng.uniform(1.5, 3.0)
        right = water + road + rng.uniform(1.5, 3.0)
        origin = (
            ORIGIN_EASTING + col * (length + COLUMN_GAP_M) + rng.uniform(0, 30),
            ORIGIN_NORTHING + row * ROW_SPACING_M + rng.uniform(0, 30),
        )
        # Nearly east-west (within +-4 degrees): rows stay > 60 m apart over their length.
        angle = math.radians(rng.uniform(-4.0, 4.0) + (180.0 if rng.random() < 0.5 else 0.0))
        if angle > math.pi / 2:  # a westward street starts at the east end of its cell
            origin = (origin[0] + length, origin[1])
        streets.append(
            Street(
                index=index,
                area=area,
                origin=origin,
                angle_rad=angle,
                length_m=length,
                kind=kind,
                left_m=float(left),
                right_m=float(right),
                water_half_m=float(water),
                road_half_m=float(road),
                seed=int(rng.integers(2**31)),
            )
        )
    places = []
    for street in streets:
        for k in range(config.places_per_street):
            along = k * config.place_spacing_m
            east, north = street.utm(along)
            places.append(Place(len(places), street.index, along, (float(east), float(north))))
    return CityLayout(tuple(streets), tuple(places))


# --------------------------------------------------------------------------------------
# Facades


@dataclass
class FacadeAtlas:
    """The texture of one side of a street, sampled by the renderer.

    ``pixels[row, col]``: row 0 is the ground, ``px_per_m`` rows per metre upwards; column 0
    is at ``along = -MARGIN_M``. ``roof_px[col]``: rows at or above it are sky.
    ``buildings``: (start_m, end_m, colour) of each building, for tests and debugging.
    """

    pixels: np.ndarray  # (H, L, 3) uint8
    roof_px: np.ndarray  # (L,) int32
    px_per_m: float
    buildings: list


@dataclass(frozen=True)
class StreetObject:
    """A static object on the street (tree, lamp post, bollard, bench, parked bike)."""

    kind: str
    along_m: float
    lateral_m: float
    height_m: float
    colour: tuple[int, int, int]
    width_m: float


@dataclass
class StreetModel:
    street: Street
    left: FacadeAtlas
    right: FacadeAtlas
    objects: list[StreetObject]


# Facade palettes (RGB): Amsterdam brick browns and reds, painted black/green/white, beige.
_FACADE_COLOURS = np.array(
    [
        (122, 58, 40),
        (140, 70, 48),
        (96, 48, 36),
        (160, 92, 62),
        (70, 40, 32),
        (52, 50, 48),
        (38, 52, 44),
        (222, 218, 205),
        (236, 230, 214),
        (196, 176, 140),
        (170, 150, 120),
        (120, 112, 104),
        (150, 52, 44),
        (88, 92, 104),
        (200, 120, 80),
        (110, 130, 110),
        (210, 190, 150),
        (180, 80, 60),
    ],
    dtype=np.float32,
)
_FRAME_COLOURS = np.array(
    [
        (240, 240, 232),
        (230, 225, 210),
        (30, 34, 30),
        (40, 70, 50),
        (120, 30, 30),
        (200, 200, 190),
        (60, 60, 80),
    ],
    dtype=np.float32,
)
_ACCENT_COLOURS = np.array(
    [
        (200, 30, 40),
        (30, 90, 170),
        (240, 190, 40),
        (30, 130, 70),
        (240, 240, 240),
        (20, 20, 20),
        (230, 110, 30),
        (140, 40, 140),
        (0, 150, 160),
    ],
    dtype=np.float32,
)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    rows = shape[0] // cell + 2
    cols = shape[1] // cell + 2
    coarse = rng.uniform(-1, 1, size=(rows, cols)).astype(np.float32)
    fine = Image.fromarray(coarse).resize((cols * cell, rows * cell), Image.BILINEAR)
    return np.asarray(fine)[: shape[0], : shape[1]]


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One HSV colour (each in [0, 1]) as float RGB in [0, 255]."""
    sector = hue * 6.0
    chroma = value * saturation
    x = chroma * (1 - abs(sector % 2 - 1))
    table = [
        (chroma, x, 0),
        (x, chroma, 0),
        (0, chroma, x),
        (0, x, chroma),
        (x, 0, chroma),
        (chroma, 0, x),
    ]
    rgb = np.array(table[int(sector) % 6], dtype=np.float32) + (value - chroma)
    return rgb * 255.0


def _gable_profile(kind: str, width_px: int, body_px: int, gable_px: int) -> np.ndarray:
    """Top row (exclusive) of a building per column for its gable kind."""
    x = (np.arange(width_px) + 0.5) / max(width_px, 1)  # 0..1 across the building
    centre = np.abs(x - 0.5) * 2.0  # 0 in the middle, 1 at the sides
    if kind == "flat":
        top = np.full(width_px, float(body_px))
    elif kind == "triangle":
        top = body_px + gable_px * (1.0 - centre)
    elif kind == "step":
        steps = 4
        top = body_px + gable_px * (1.0 - np.ceil(centre * steps) / steps + 1.0 / steps)
        top = np.where(centre > 0.92, body_px, top)
    elif kind == "bell":
        top = body_px + gable_px * np.clip(np.cos(np.clip(centre, 0, 1) * np.pi / 2) ** 0.6, 0, 1)
        top = np.where(centre > 0.85, body_px + gable_px * 0.15, top)
    elif kind == "neck":
        top = np.where(centre < 0.45, body_px + gable_px, body_px + gable_px * 0.35)
        top = np.where(centre > 0.9, body_px, top)
    else:  # "spout": a narrow raised centre
        top = np.where(centre < 0.3, body_px + gable_px, body_px + gable_px * (1.0 - centre) * 0.7)
    return np.round(top).astype(np.int32)


_GABLES = ("flat", "triangle", "step", "bell", "neck", "spout")


def _draw_building(
    atlas: np.ndarray, roof: np.ndarray, x0: int, x1: int, res: float, rng: np.random.Generator
) -> tuple:
    """Paint one building into ``atlas[:, x0:x1]``; returns its identity (for debugging)."""
    width = x1 - x0
    height_max = atlas.shape[0]
    floors = int(rng.integers(3, 6))
    ground_h = rng.uniform(3.4, 4.4)
    floor_h = rng.uniform(2.7, 3.3)
    body_m = ground_h + floors * floor_h
    gable = _GABLES[int(rng.integers(len(_GABLES)))]
    gable_m = 0.0 if gable == "flat" else rng.uniform(2.0, 4.5)
    body_px = min(int(body_m * res), height_max - 2)
    gable_px = min(int(gable_m * res), height_max - 1 - body_px)
    top = np.clip(
        _gable_profile(gable, width, body_px, gable_px), 1, min(body_px + gable_px, height_max - 1)
    )
    roof[x0:x1] = top

    if rng.random() < 0.5:  # traditional brick, painted black/green/white, sandstone...
        colour = _FACADE_COLOURS[int(rng.integers(len(_FACADE_COLOURS)))] * rng.uniform(
            0.85, 1.12, 3
        )
    else:  # ...or any muted paint colour (modern and renovated facades)
        colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.15, 0.65), rng.uniform(0.3, 0.92))
    colour = np.clip(colour, 0, 255)
    frame = _FRAME_COLOURS[int(rng.integers(len(_FRAME_COLOURS)))]
    accent = _ACCENT_COLOURS[int(rng.integers(len(_ACCENT_COLOURS)))]
    rows = int(top.max()) + 1
    region = np.empty((rows, width, 3), dtype=np.float32)
    material = int(rng.integers(4))
    noise = _smooth_noise(rng, (rows, width), max(2, int(res * 1.5)))
    grain = rng.normal(0.0, 1.0, size=(rows, width)).astype(np.float32)
    shade = 1.0 + 0.10 * noise + 0.04 * grain
    yy = np.arange(rows)[:, None]
    xx = np.arange(width)[None, :]
    if material == 0:  # brick courses: fine horizontal mortar lines
        course = max(2, int(res * 0.3))
        shade = shade * np.where(yy % course == 0, 1.12, 1.0)
    elif material == 1:  # stone blocks
        block_h, block_w = max(3, int(res * 0.6)), max(5, int(res * 1.2))
        joints = (yy % block_h == 0) | (((xx + (yy // block_h) * (block_w // 2)) % block_w) == 0)
        shade = shade * np.where(joints, 0.82, 1.0)
    elif material == 2:  # vertical timber boards
        board = max(2, int(res * 0.4))
        shade = shade * np.where(xx % board == 0, 0.85, 1.0)
    # material 3: smooth stucco (noise only)
    region[:] = colour * shade[..., None]
    # Sky above the gable is masked by `roof`; trims: a plinth and a cornice band.
    plinth = max(1, int(res * 0.5))
    region[:plinth] = region[:plinth] * 0.6
    cornice = max(1, int(res * 0.35))
    region[max(0, body_px - cornice) : body_px] = frame * 0.95

    # Upper floors: a window grid with frames, sash bars, curtains.
    cols = int(rng.integers(2, 5)) if width > 6 * res else int(rng.integers(1, 3))
    win_w = width / cols * rng.uniform(0.42, 0.62)
    win_h = floor_h * res * rng.uniform(0.5, 0.7)
    frame_px = max(1, int(res * 0.12))
    glass_base = np.array(
        rng.choice([(40, 52, 62), (60, 74, 84), (30, 34, 40), (82, 96, 110)]), dtype=np.float32
    )
    shutters = rng.random() < 0.25
    for floor in range(floors):
        y_mid = (ground_h + (floor + 0.5) * floor_h) * res
        y0, y1 = int(y_mid - win_h / 2), int(y_mid + win_h / 2)
        if y1 >= body_px - cornice:
            continue
        for col in range(cols):
            x_mid = (col + 0.5) * width / cols
            wx0, wx1 = int(x_mid - win_w / 2), int(x_mid + win_w / 2)
            region[y0:y1, wx0:wx1] = frame
            gy0, gy1, gx0, gx1 = y0 + frame_px, y1 - frame_px, wx0 + frame_px, wx1 - frame_px
            if gy1 <= gy0 or gx1 <= gx0:
                continue
            reflection = np.linspace(1.25, 0.8, gy1 - gy0, dtype=np.float32)[::-1, None, None]
            region[gy0:gy1, gx0:gx1] = glass_base * reflection
            if rng.random() < 0.35:  # a curtain half-drawn behind the glass
                cx1 = gx0 + int((gx1 - gx0) * rng.uniform(0.2, 0.5))
                region[gy0:gy1, gx0:cx1] = (
                    _ACCENT_COLOURS[int(rng.integers(len(_ACCENT_COLOURS)))] * 0.7
                )
            mid_y = (gy0 + gy1) // 2
            region[mid_y : mid_y + frame_px, gx0:gx1] = frame
            mid_x = (gx0 + gx1) // 2
            region[gy0:gy1, mid_x : mid_x + max(1, frame_px // 2)] = frame
            if shutters and wx0 - int(win_w * 0.4) >= 0 and wx1 + int(win_w * 0.4) <= width:
                region[y0:y1, wx0 - int(win_w * 0.4) : wx0] = accent * 0.8
                region[y0:y1, wx1 : wx1 + int(win_w * 0.4)] = accent * 0.8

    # Ground floor: a shop (display window and a sign band) or a door with windows.
    ground_px = int(ground_h * res)
    if rng.random() < 0.4 and width > 4 * res:
        sx0, sx1 = int(width * 0.08), int(width * 0.92)
        region[plinth : int(ground_px * 0.72), sx0:sx1] = glass_base * 1.1
        door_x0 = int(rng.uniform(0.1, 0.7) * width)
        door_w = max(2, int(1.1 * res))
        region[plinth : int(ground_px * 0.72), door_x0 : door_x0 + door_w] = frame * 0.6
        sign_y0, sign_y1 = int(ground_px * 0.76), int(ground_px * 0.97)
        region[sign_y0:sign_y1, sx0:sx1] = accent
        # "Lettering": blocks of a contrasting colour, a pattern unique to the shop.
        letters = int(rng.integers(3, 9))
        text = 255.0 - accent if accent.mean() < 140 else accent * 0.25
        slots = np.linspace(sx0 + 2, sx1 - 2, letters + 1).astype(int)
        ly0 = sign_y0 + max(1, (sign_y1 - sign_y0) // 4)
        ly1 = sign_y1 - max(1, (sign_y1 - sign_y0) // 4)
        for k in range(letters):
            if rng.random() < 0.8:
                lx0 = slots[k] + 1
                lx1 = max(lx0 + 1, slots[k + 1] - 1 - int(rng.integers(0, 2)))
                region[ly0:ly1, lx0:lx1] = text
        if rng.random() < 0.5:  # an awning in stripes below the sign
            aw0, aw1 = int(ground_px * 0.62), int(ground_px * 0.76)
            stripes = (np.arange(sx1 - sx0) // max(2, int(res * 0.5))) % 2
            region[aw0:aw1, sx0:sx1] = np.where(stripes[None, :, None] == 0, accent, 235.0)
    else:
        door_w = max(2, int(1.2 * res))
        door_x0 = int(rng.uniform(0.1, 0.9) * (width - door_w))
        door_colour = _ACCENT_COLOURS[int(rng.integers(len(_ACCENT_COLOURS)))] * 0.7
        region[plinth : int(ground_px * 0.8), door_x0 : door_x0 + door_w] = door_colour
        region[int(ground_px * 0.8) : int(ground_px * 0.9), door_x0 : door_x0 + door_w] = glass_base
        for col in range(cols):
            x_mid = (col + 0.5) * width / cols
            wx0, wx1 = int(x_mid - win_w / 2), int(x_mid + win_w / 2)
            if wx1 > door_x0 - 1 and wx0 < door_x0 + door_w + 1:
                continue
            gy0, gy1 = int(ground_px * 0.3), int(ground_px * 0.85)
            region[gy0:gy1, wx0:wx1] = frame
            region[gy0 + frame_px : gy1 - frame_px, wx0 + frame_px : wx1 - frame_px] = glass_base
    # A dark separation line between neighbouring houses.
    region[:, :1] *= 0.7
    atlas[:rows, x0:x1] = np.clip(region, 0, 255).astype(np.uint8)
    return (x0 / res - MARGIN_M, x1 / res - MARGIN_M, tuple(int(c) for c in colour), gable)


def build_facade(street: Street, side: int, px_per_m: float) -> FacadeAtlas:
    """The facade texture of one side (0 = left, 1 = right) of a street."""
    rng = image_rng(street.seed, KEY_STREET, side)
    total_m = street.length_m + 2 * MARGIN_M
    width = int(math.ceil(total_m * px_per_m))
    height = int(MAX_BUILDING_HEIGHT_M * px_per_m)
    atlas = np.zeros((height, width, 3), dtype=np.uint8)
    roof = np.zeros(width, dtype=np.int32)
    buildings = []
    x = 0
    while x < width:
        w_m = rng.uniform(5.0, 9.5) if rng.random() < 0.8 else rng.uniform(10.0, 16.0)
        x1 = min(width, x + max(4, int(w_m * px_per_m)))
        buildings.append(_draw_building(atlas, roof, x, x1, px_per_m, rng))
        x = x1
    return FacadeAtlas(atlas, roof, px_per_m, buildings)


def _street_objects(street: Street, rng: np.random.Generator) -> list[StreetObject]:
    objects = []
    total = street.length_m + 2 * MARGIN_M
    for side, sign, facade in ((0, -1.0, street.left_m), (1, 1.0, street.right_m)):
        along = -MARGIN_M + rng.uniform(0, 12)
        while along < total - MARGIN_M:
            if street.kind == "canal":
                kind = "tree" if rng.random() < 0.7 else "lamp"
                lateral = sign * (street.water_half_m + 0.6)
            else:
                kind = ("tree", "lamp", "bollard", "bike")[int(rng.integers(4))]
                lateral = sign * (facade - rng.uniform(0.6, 1.4))
            if kind == "tree":
                obj = StreetObject(
                    kind,
                    along,
                    lateral,
                    rng.uniform(7, 11),
                    (
                        int(rng.integers(40, 80)),
                        int(rng.integers(90, 140)),
                        int(rng.integers(30, 70)),
                    ),
                    rng.uniform(3.0, 5.0),
                )
            elif kind == "lamp":
                obj = StreetObject(kind, along, lateral, rng.uniform(4, 5.5), (30, 32, 30), 0.2)
            elif kind == "bollard":
                obj = StreetObject(kind, along, lateral, 0.9, (90, 30, 30), 0.2)
            else:
                obj = StreetObject(
                    kind,
                    along,
                    lateral,
                    1.0,
                    tuple(int(c) for c in _ACCENT_COLOURS[int(rng.integers(len(_ACCENT_COLOURS)))]),
                    1.7,
                )
            objects.append(obj)
            along += rng.uniform(9, 22) if street.kind == "canal" else rng.uniform(12, 30)
    return objects


def build_street_model(street: Street, px_per_m: float) -> StreetModel:
    """Facades of both sides and the static street objects (deterministic in the street)."""
    return StreetModel(
        street=street,
        left=build_facade(street, 0, px_per_m),
        right=build_facade(street, 1, px_per_m),
        objects=_street_objects(street, image_rng(street.seed, KEY_STREET, 2)),
    )
