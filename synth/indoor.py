"""Indoor scenes: a room in one-point perspective with windows onto a street.

The room is a box seen from inside: a back wall (an axis-aligned rectangle), two side walls,
floor and ceiling meeting the image corners. Windows are cut into the back wall (sometimes a
side wall too); furniture, lamps, frames, curtains and rugs are drawn over it in painter's
order. Every element is drawn twice with Pillow: as colour, and as its ADE20k class index in
a label image, so the annotation aligns with the image pixel for pixel.

The window pixels show an outdoor image given by the caller (the street at the query's
location for the Indoor-Ams queries, another street or sky for the ADE20k scenes), at the same
pixel positions, dimmed by glass reflection and brightened by the exposure difference between
the inside and the outside, as in real photographs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# ADE20k (SceneParsing, objectInfo150) class indices; 0 is "other / unlabelled".
ADE_CLASSES = {
    "wall": 1,
    "floor": 4,
    "ceiling": 6,
    "bed": 8,
    "window": 9,
    "cabinet": 11,
    "door": 15,
    "table": 16,
    "plant": 18,
    "curtain": 19,
    "chair": 20,
    "painting": 23,
    "sofa": 24,
    "shelf": 25,
    "rug": 29,
    "armchair": 31,
    "desk": 34,
    "wardrobe": 36,
    "lamp": 37,
    "cushion": 40,
    "chest_of_drawers": 45,
    "counter": 46,
    "refrigerator": 51,
    "bookcase": 63,
    "blind": 64,
    "coffee_table": 65,
    "stove": 72,
    "computer": 75,
    "chandelier": 86,
    "television": 90,
}
WINDOW_CLASS = ADE_CLASSES["window"]

# Scene categories as ADE20k's sceneCategories.txt spells them.
ROOM_CATEGORIES = (
    "bedroom",
    "living_room",
    "kitchen",
    "office",
    "dining_room",
    "hotel_room",
    "home_office",
    "conference_room",
)

_WALL_COLOURS = np.array(
    [
        (238, 234, 224),
        (226, 222, 214),
        (244, 240, 230),
        (210, 205, 196),
        (200, 214, 222),
        (222, 210, 190),
        (196, 206, 186),
        (232, 214, 208),
        (150, 160, 170),
        (120, 96, 84),
    ],
    dtype=np.float32,
)
_WOOD = np.array(
    [(150, 105, 70), (120, 80, 50), (186, 150, 110), (90, 62, 44), (200, 176, 140)],
    dtype=np.float32,
)
_FABRIC = np.array(
    [
        (160, 40, 50),
        (50, 80, 140),
        (70, 110, 70),
        (200, 180, 150),
        (90, 90, 96),
        (230, 200, 90),
        (120, 70, 130),
        (40, 40, 44),
        (210, 120, 80),
        (180, 190, 200),
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class RoomImage:
    """An indoor scene: the RGB image, its ADE20k class-index labels, and its category."""

    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8
    category: str
    glass: np.ndarray | None = None  # (H, W) bool: window pixels showing the outdoor image

    @property
    def window_mask(self) -> np.ndarray:
        return self.labels == WINDOW_CLASS

    @property
    def window_fraction(self) -> float:
        return float(self.window_mask.mean())


class _Mask:
    """A drawn shape: its bounding box in the image and a boolean mask of that box."""

    __slots__ = ("rows", "cols", "crop")

    def __init__(self, rows: slice, cols: slice, crop: np.ndarray):
        self.rows, self.cols, self.crop = rows, cols, crop

    def full(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        out[self.rows, self.cols] = self.crop
        return out


_EMPTY = _Mask(slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool))


class _Canvas:
    """Colour and label layers painted together through masks made by Pillow.

    Shapes are drawn by Pillow into a bitmap; only their bounding box is touched in numpy.
    """

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.width, self.height = width, height
        self.rgb = np.zeros((height, width, 3), dtype=np.float32)
        self.labels = np.zeros((height, width), dtype=np.uint8)
        self.glass = np.zeros((height, width), dtype=bool)
        self.rng = rng
        coarse = rng.random((5, 7)).astype(np.float32)
        noise = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)) - 0.5
        grain = rng.normal(0, 1, (height, width)).astype(np.float32)
        # One texture field for every surface: smooth blotches plus fine grain.
        self.texture = 2.0 * noise + 0.4 * grain

    def mask(self, shape: str, coords, **kwargs) -> _Mask:
        if shape != "polygon":  # bounding-box shapes: Pillow wants x0 <= x1 and y0 <= y1
            x0, y0, x1, y1 = (float(v) for v in coords)
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
            if x1 - x0 < 0.5 or y1 - y0 < 0.5:
                return _EMPTY
            coords = [x0, y0, x1, y1]
        layer = Image.new("1", (self.width, self.height), 0)
        draw = ImageDraw.Draw(layer)
        getattr(draw, shape)(coords, fill=1, **kwargs)
        box = layer.getbbox()
        if box is None:
            return _EMPTY
        crop = np.asarray(layer.crop(box), dtype=bool)
        return _Mask(slice(box[1], box[3]), slice(box[0], box[2]), crop)

    def paint(
        self, mask: _Mask, cls: int, colour, texture: float = 0.06, shade: np.ndarray | None = None
    ) -> None:
        if mask.crop.size == 0:
            return
        rows, cols, crop = mask.rows, mask.cols, mask.crop
        colour = np.asarray(colour, dtype=np.float32)
        factor = 1.0 + texture * self.texture[rows, cols][crop]
        if shade is not None:
            factor = factor * shade[rows, cols][crop]
        self.rgb[rows, cols][crop] = colour * factor[:, None]
        self.labels[rows, cols][crop] = cls
        self.glass[rows, cols][crop] = False

    def polygon(self, points, cls: int, colour, texture: float = 0.06) -> _Mask:
        mask = self.mask("polygon", [tuple(map(float, p)) for p in points])
        self.paint(mask, cls, colour, texture)
        return mask

    def rect(self, x0, y0, x1, y1, cls: int, colour, texture: float = 0.06) -> _Mask:
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        mask = self.mask("rectangle", [x0, y0, x1 - 1, y1 - 1])
        self.paint(mask, cls, colour, texture)
        return mask

    def set_glass(self, mask: _Mask) -> None:
        self.glass[mask.rows, mask.cols] |= mask.crop


@dataclass(frozen=True)
class _Room:
    """Back wall rectangle and vanishing point, in pixels."""

    bx0: float
    by0: float
    bx1: float
    by1: float
    vx: float
    vy: float

    def floor_y(self, depth: float) -> float:
        """Image row of the floor line at a depth factor (1 = at the back wall, larger = nearer)."""
        return self.vy + (self.by1 - self.vy) * depth

    def scale(self, depth: float) -> float:
        return depth

    def x_at(self, x_back: float, depth: float) -> float:
        """Image column of a point whose column at the back wall is ``x_back``."""
        return self.vx + (x_back - self.vx) * depth


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.08) -> np.ndarray:
    colour = table[int(rng.integers(len(table)))] * rng.uniform(1 - jitter, 1 + jitter, 3)
    return np.clip(colour, 0, 255)


def _room_box(rng: np.random.Generator, width: int, height: int, back_fraction: float) -> _Room:
    aspect = rng.uniform(0.9, 1.5)  # back wall width / height in pixels, relative to the image's
    bw = min(0.98, np.sqrt(back_fraction * aspect)) * width
    bh = min(0.97, back_fraction * width * height / bw / height) * height
    bx0 = rng.uniform(0.01, 0.99) * (width - bw)
    by0 = rng.uniform(0.15, 0.75) * (height - bh)
    room = _Room(bx0, by0, bx0 + bw, by0 + bh, 0.0, 0.0)
    vx = rng.uniform(room.bx0 + 0.3 * bw, room.bx1 - 0.3 * bw)
    vy = rng.uniform(room.by0 + 0.35 * bh, room.by0 + 0.55 * bh)
    return _Room(room.bx0, room.by0, room.bx1, room.by1, vx, vy)


def _draw_shell(canvas: _Canvas, room: _Room, rng: np.random.Generator) -> dict:
    """Walls, floor and ceiling; returns the colours used."""
    w, h = canvas.width, canvas.height
    wall = _pick(rng, _WALL_COLOURS)
    b = room
    cls = ADE_CLASSES
    canvas.polygon(
        [(0, 0), (w, 0), (b.bx1, b.by0), (b.bx0, b.by0)],
        cls["ceiling"],
        np.clip(wall * 1.05 + 10, 0, 255),
        0.03,
    )
    left_shade, right_shade = rng.uniform(0.72, 0.95), rng.uniform(0.72, 0.95)
    canvas.polygon([(0, 0), (b.bx0, b.by0), (b.bx0, b.by1), (0, h)], cls["wall"], wall * left_shade)
    canvas.polygon(
        [(w, 0), (b.bx1, b.by0), (b.bx1, b.by1), (w, h)], cls["wall"], wall * right_shade
    )
    back = canvas.rect(b.bx0, b.by0, b.bx1 + 1, b.by1 + 1, cls["wall"], wall)
    if rng.random() < 0.25:  # wallpaper stripes on the back wall
        stripe = max(2, int(rng.uniform(0.02, 0.05) * w))
        stripes = ((np.arange(w) // stripe) % 2 == 0)[None, :] & back.full(h, w)
        canvas.rgb[stripes] *= rng.uniform(0.86, 0.95)
    floor = canvas.mask("polygon", [(0, h), (b.bx0, b.by1), (b.bx1, b.by1), (w, h)])
    floor_colour = _pick(rng, _WOOD) if rng.random() < 0.7 else _pick(rng, _WALL_COLOURS) * 0.8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.maximum(yy - b.vy, 1e-3)
        across = (xx - b.vx) / depth  # constant along lines through the vanishing point
        if rng.random() < 0.6:  # planks
            planks = (np.floor(across * rng.uniform(2.0, 5.0)) % 2) * 0.1 + 0.95
        else:  # tiles
            planks = 0.93 + 0.12 * (
                (np.floor(across * 3) + np.floor(rng.uniform(40, 90) / depth)) % 2
            )
    canvas.paint(floor, cls["floor"], floor_colour, 0.05, shade=planks.astype(np.float32))
    return {"wall": wall}


def _draw_windows(canvas: _Canvas, room: _Room, rng: np.random.Generator, target: float) -> list:
    """Cut windows into the back wall totalling about ``target`` of the image area."""
    w, h = canvas.width, canvas.height
    bw, bh = room.bx1 - room.bx0, room.by1 - room.by0
    area = target * w * h
    count = 1 if target > 0.4 else int(rng.integers(1, 4))
    gap = 0.04 * bw
    height = min(bh * 0.92, max(bh * rng.uniform(0.45, 0.85), area / max(bw * 0.9, 1)))
    total_width = min(area / height, bw * 0.94 - gap * (count - 1))
    each = total_width / count
    if each < 0.04 * w:
        count, each = 1, total_width
    free = bw - each * count - gap * (count - 1)
    x = room.bx0 + rng.uniform(0.15, 0.85) * max(free, 0)
    top_room = bh - height
    y0 = room.by0 + rng.uniform(0.2, 0.7) * max(top_room, 0)
    frame_colour = _pick(
        rng,
        np.array([(240, 240, 236), (250, 250, 250), (70, 60, 50), (40, 40, 40)], dtype=np.float32),
        0.03,
    )
    windows = []
    bar = max(1, int(round(0.012 * w)))
    for _ in range(count):
        x0, x1, y1 = x, x + each, y0 + height
        canvas.rect(x0, y0, x1, y1, WINDOW_CLASS, frame_colour, 0.02)
        inner = canvas.rect(x0 + bar, y0 + bar, x1 - bar, y1 - bar, WINDOW_CLASS, (0, 0, 0), 0.0)
        canvas.set_glass(inner)
        # Mullions: part of the window class, as in ADE20k annotations.
        panes_x = int(rng.integers(1, 4)) if each > 0.15 * w else 1
        panes_y = int(rng.integers(1, 3))
        for k in range(1, panes_x):
            mx = x0 + (x1 - x0) * k / panes_x
            canvas.rect(mx - bar / 2, y0, mx + bar / 2 + 1, y1, WINDOW_CLASS, frame_colour, 0.02)
        for k in range(1, panes_y):
            my = y0 + (y1 - y0) * k / panes_y * rng.uniform(0.85, 1.0)
            canvas.rect(x0, my - bar / 2, x1, my + bar / 2 + 1, WINDOW_CLASS, frame_colour, 0.02)
        windows.append((x0, y0, x1, y1))
        x = x1 + gap
    # A smaller window in a side wall, sometimes (a parallelogram in perspective).
    if rng.random() < 0.2 and room.bx0 > 0.2 * w:
        d0, d1 = rng.uniform(1.3, 1.8), rng.uniform(2.0, 2.6)
        top, bottom = room.by0 + 0.25 * bh, room.by0 + 0.7 * bh
        pts = [
            (room.x_at(room.bx0, d0), room.vy + (top - room.vy) * d0),
            (room.x_at(room.bx0, d1), room.vy + (top - room.vy) * d1),
            (room.x_at(room.bx0, d1), room.vy + (bottom - room.vy) * d1),
            (room.x_at(room.bx0, d0), room.vy + (bottom - room.vy) * d0),
        ]
        mask = canvas.polygon(pts, WINDOW_CLASS, (0, 0, 0), 0.0)
        canvas.set_glass(mask)
    return windows


def _draw_curtains(canvas: _Canvas, room: _Room, windows, rng: np.random.Generator) -> None:
    colour = _pick(rng, _FABRIC)
    for x0, y0, x1, y1 in windows:
        if rng.random() < 0.5:
            continue
        span = (x1 - x0) * rng.uniform(0.08, 0.3)
        top = y0 - 0.04 * canvas.height
        for left in (True, False):
            cx0, cx1 = (x0 - span * 0.4, x0 + span) if left else (x1 - span, x1 + span * 0.4)
            mask = canvas.mask("rectangle", [cx0, top, cx1, y1 + 0.05 * canvas.height])
            folds = 0.9 + 0.15 * (np.sin(np.arange(canvas.width) * 1.3) > 0)[None, :].repeat(
                canvas.height, 0
            )
            canvas.paint(mask, ADE_CLASSES["curtain"], colour, 0.05, shade=folds.astype(np.float32))
    if windows and rng.random() < 0.15:  # a half-lowered blind
        x0, y0, x1, y1 = windows[0]
        low = y0 + (y1 - y0) * rng.uniform(0.15, 0.4)
        canvas.rect(x0, y0, x1, low, ADE_CLASSES["blind"], _pick(rng, _WALL_COLOURS), 0.04)


def _draw_wall_decor(canvas: _Canvas, room: _Room, windows, rng: np.random.Generator) -> None:
    bw, bh = room.bx1 - room.bx0, room.by1 - room.by0
    for _ in range(int(rng.integers(0, 4))):
        fw, fh = bw * rng.uniform(0.08, 0.2), bh * rng.uniform(0.1, 0.25)
        fx = rng.uniform(room.bx0, room.bx1 - fw)
        fy = rng.uniform(room.by0 + 0.1 * bh, room.by0 + 0.5 * bh)
        if any(fx < x1 and fx + fw > x0 and fy < y1 and fy + fh > y0 for x0, y0, x1, y1 in windows):
            continue
        frame = _pick(rng, _WOOD)
        canvas.rect(fx, fy, fx + fw, fy + fh, ADE_CLASSES["painting"], frame, 0.03)
        inner = _pick(rng, _FABRIC, 0.2)
        canvas.rect(
            fx + fw * 0.1,
            fy + fh * 0.1,
            fx + fw * 0.9,
            fy + fh * 0.9,
            ADE_CLASSES["painting"],
            inner,
            0.25,
        )
    # Frames on a side wall, in perspective.
    if rng.random() < 0.5 and room.bx1 < canvas.width * 0.8:
        d0, d1 = rng.uniform(1.2, 1.5), rng.uniform(1.6, 2.0)
        top, bottom = room.by0 + 0.2 * bh, room.by0 + 0.45 * bh
        pts = [
            (room.x_at(room.bx1, d), room.vy + (yv - room.vy) * d)
            for d, yv in ((d0, top), (d1, top), (d1, bottom), (d0, bottom))
        ]
        canvas.polygon(pts, ADE_CLASSES["painting"], _pick(rng, _FABRIC, 0.2), 0.2)


def _box(
    canvas: _Canvas,
    room: _Room,
    cls: int,
    colour,
    x_back: float,
    width_back: float,
    depth: float,
    height_back: float,
    top_depth: float = 0.25,
    legs: bool = False,
) -> None:
    """A box-shaped piece of furniture standing on the floor at ``depth`` (front face + top)."""
    y_floor = room.floor_y(depth)
    x0 = room.x_at(x_back, depth)
    x1 = room.x_at(x_back + width_back, depth)
    top = y_floor - height_back * depth
    back_depth = max(1.0, depth - top_depth)
    bx0, bx1 = room.x_at(x_back, back_depth), room.x_at(x_back + width_back, back_depth)
    back_top = room.floor_y(back_depth) - height_back * back_depth
    colour = np.asarray(colour, dtype=np.float32)
    canvas.polygon([(x0, top), (x1, top), (bx1, back_top), (bx0, back_top)], cls, colour * 1.12)
    if legs:
        slab = (y_floor - top) * 0.15
        canvas.rect(x0, top, x1, top + slab, cls, colour)
        leg = max(1.0, (x1 - x0) * 0.05)
        canvas.rect(x0, top, x0 + leg, y_floor, cls, colour * 0.8)
        canvas.rect(x1 - leg, top, x1, y_floor, cls, colour * 0.8)
    else:
        canvas.rect(x0, top, x1, y_floor, cls, colour * 0.9)


def _draw_furniture(canvas: _Canvas, room: _Room, category: str, rng: np.random.Generator) -> None:
    c = ADE_CLASSES
    bw, bh = room.bx1 - room.bx0, room.by1 - room.by0
    pieces = {
        "bedroom": [
            ("bed", 0.5, 0.22, False),
            ("chest_of_drawers", 0.2, 0.3, False),
            ("lamp", 0.05, 0.45, False),
        ],
        "hotel_room": [
            ("bed", 0.5, 0.22, False),
            ("desk", 0.25, 0.27, True),
            ("lamp", 0.05, 0.45, False),
        ],
        "living_room": [
            ("sofa", 0.45, 0.28, False),
            ("coffee_table", 0.25, 0.15, True),
            ("plant", 0.08, 0.35, False),
            ("armchair", 0.18, 0.3, False),
            ("television", 0.2, 0.15, False),
        ],
        "kitchen": [
            ("cabinet", 0.6, 0.32, False),
            ("refrigerator", 0.15, 0.6, False),
            ("table", 0.3, 0.25, True),
            ("chair", 0.08, 0.3, True),
        ],
        "office": [
            ("desk", 0.35, 0.27, True),
            ("chair", 0.09, 0.32, True),
            ("bookcase", 0.25, 0.65, False),
            ("computer", 0.1, 0.12, False),
        ],
        "home_office": [
            ("desk", 0.3, 0.27, True),
            ("chair", 0.09, 0.32, True),
            ("shelf", 0.2, 0.4, False),
            ("plant", 0.08, 0.35, False),
        ],
        "dining_room": [
            ("table", 0.45, 0.25, True),
            ("chair", 0.08, 0.32, True),
            ("chair", 0.08, 0.32, True),
            ("cabinet", 0.3, 0.35, False),
        ],
        "conference_room": [
            ("table", 0.7, 0.25, True),
            ("chair", 0.08, 0.32, True),
            ("chair", 0.08, 0.32, True),
            ("chair", 0.08, 0.32, True),
            ("television", 0.25, 0.18, False),
        ],
    }[category]
    if rng.random() < 0.4:  # a rug first: it lies under everything
        d0, d1 = rng.uniform(1.1, 1.3), rng.uniform(1.5, 1.9)
        xa, xb = room.bx0 + rng.uniform(0.1, 0.4) * bw, room.bx0 + rng.uniform(0.6, 0.9) * bw
        pts = [
            (room.x_at(xa, d0), room.floor_y(d0)),
            (room.x_at(xb, d0), room.floor_y(d0)),
            (room.x_at(xb, d1), room.floor_y(d1)),
            (room.x_at(xa, d1), room.floor_y(d1)),
        ]
        canvas.polygon(pts, c["rug"], _pick(rng, _FABRIC), 0.15)
    placed = []
    for name, width_frac, height_frac, legs in pieces:
        if rng.random() < 0.2:
            continue
        depth = rng.uniform(1.02, 1.5)
        width_back = bw * width_frac * rng.uniform(0.8, 1.2)
        x_back = rng.uniform(room.bx0 - 0.1 * bw, room.bx1 - width_back + 0.1 * bw)
        placed.append(
            (depth, name, x_back, width_back, bh * height_frac * rng.uniform(0.85, 1.15), legs)
        )
    placed.sort(key=lambda item: item[0])  # far (small depth factor) first
    for depth, name, x_back, width_back, height_back, legs in placed:
        cls = c[name]
        if name == "lamp":
            x = room.x_at(x_back, depth)
            y_floor = room.floor_y(depth)
            pole_top = y_floor - height_back * depth
            canvas.rect(x - 1, pole_top, x + 1, y_floor, cls, (40, 40, 40), 0.0)
            shade_w = width_back * depth * 2.0
            canvas.polygon(
                [
                    (x - shade_w * 0.3, pole_top - shade_w * 0.5),
                    (x + shade_w * 0.3, pole_top - shade_w * 0.5),
                    (x + shade_w * 0.5, pole_top + 2),
                    (x - shade_w * 0.5, pole_top + 2),
                ],
                cls,
                (250, 236, 200),
                0.02,
            )
        elif name == "plant":
            x = room.x_at(x_back, depth)
            y_floor = room.floor_y(depth)
            pot = width_back * depth
            canvas.rect(x - pot / 2, y_floor - pot, x + pot / 2, y_floor, cls, (160, 90, 60))
            leaves = height_back * depth
            canvas.paint(
                canvas.mask(
                    "ellipse",
                    [x - pot * 1.3, y_floor - pot - leaves, x + pot * 1.3, y_floor - pot * 0.7],
                ),
                cls,
                (50, 120, 60),
                0.25,
            )
        elif name in ("television", "computer"):
            y_floor = room.floor_y(depth)
            x0 = room.x_at(x_back, depth)
            base = y_floor - bh * 0.25 * depth
            tw, th = width_back * depth, height_back * depth
            canvas.rect(x0, base - th, x0 + tw, base, cls, (25, 25, 28), 0.02)
            canvas.rect(
                x0 + tw * 0.05,
                base - th * 0.92,
                x0 + tw * 0.95,
                base - th * 0.08,
                cls,
                _pick(rng, _FABRIC, 0.3) * 0.5,
                0.2,
            )
        elif name in ("bed", "sofa", "armchair"):
            colour = _pick(rng, _FABRIC)
            _box(canvas, room, cls, colour, x_back, width_back, depth, height_back, 0.35)
            back_h = height_back * 0.9
            y_floor = room.floor_y(depth)
            x0, x1 = room.x_at(x_back, depth), room.x_at(x_back + width_back, depth)
            canvas.rect(
                x0,
                y_floor - (height_back + back_h) * depth,
                x0 + (x1 - x0) * 0.12,
                y_floor,
                cls,
                colour * 0.8,
            )
            if name != "armchair" and rng.random() < 0.7:
                cushion = (x1 - x0) * 0.15
                cy = y_floor - height_back * depth * 1.3
                canvas.paint(
                    canvas.mask(
                        "ellipse",
                        [x0 + cushion, cy - cushion * 0.5, x0 + 2.2 * cushion, cy + cushion * 0.3],
                    ),
                    c["cushion"],
                    _pick(rng, _FABRIC),
                    0.05,
                )
        else:
            colour = (
                _pick(rng, _WOOD) if name not in ("refrigerator",) else np.array([228.0, 228, 226])
            )
            _box(canvas, room, cls, colour, x_back, width_back, depth, height_back, 0.2, legs)
            if name in ("bookcase", "shelf"):
                y_floor = room.floor_y(depth)
                x0, x1 = room.x_at(x_back, depth), room.x_at(x_back + width_back, depth)
                for k in range(1, 4):
                    yy = y_floor - height_back * depth * k / 4
                    canvas.rect(
                        x0 + 2,
                        yy - max(2, height_back * depth * 0.15),
                        x1 - 2,
                        yy - 1,
                        cls,
                        _pick(rng, _FABRIC, 0.3),
                        0.35,
                    )
    # A ceiling lamp.
    if rng.random() < 0.6:
        kind = "chandelier" if rng.random() < 0.25 else "lamp"
        x = rng.uniform(room.bx0 + 0.2 * bw, room.bx1 - 0.2 * bw)
        depth = rng.uniform(1.1, 1.4)
        x = room.x_at(x, depth)
        ceiling_y = room.vy + (room.by0 - room.vy) * depth
        drop = bh * rng.uniform(0.1, 0.25) * depth
        canvas.rect(x - 0.5, max(0, ceiling_y), x + 1, ceiling_y + drop, c[kind], (40, 40, 40), 0.0)
        size = bw * 0.07 * depth
        canvas.paint(
            canvas.mask(
                "pieslice",
                [x - size, ceiling_y + drop - size * 0.2, x + size, ceiling_y + drop + size * 1.2],
                start=180,
                end=360,
            ),
            c[kind],
            (250, 240, 210),
            0.02,
        )


def render_room(
    rng: np.random.Generator,
    width: int,
    height: int,
    target_fraction: float,
    outdoor: np.ndarray | None,
    category: str | None = None,
) -> RoomImage:
    """An indoor scene with windows covering about ``target_fraction`` of the image.

    ``outdoor`` (H, W, 3) uint8 is what the window glass shows, pixel for pixel; ``None`` or a
    target of 0 draws a room without windows. Furniture may hide part of a window: the
    returned labels (and :attr:`RoomImage.window_fraction`) say what is really visible.
    """
    category = category or ROOM_CATEGORIES[int(rng.integers(len(ROOM_CATEGORIES)))]
    if category not in ROOM_CATEGORIES:
        raise ValueError(f"unknown room category {category!r}; known: {ROOM_CATEGORIES}")
    canvas = _Canvas(width, height, rng)
    # The back wall must leave room for the windows around it: ~1/0.7 of the target.
    back_fraction = float(np.clip(target_fraction / rng.uniform(0.55, 0.8) + 0.05, 0.22, 0.93))
    room = _room_box(rng, width, height, back_fraction)
    _draw_shell(canvas, room, rng)
    windows = []
    if target_fraction > 0 and outdoor is not None:
        windows = _draw_windows(canvas, room, rng, target_fraction)
    _draw_curtains(canvas, room, windows, rng)
    _draw_wall_decor(canvas, room, windows, rng)
    if rng.random() < 0.3 and room.bx1 < 0.85 * width:  # a door in the right wall
        d0, d1 = 1.15, 1.45
        top, bottom = room.by0 + 0.15 * (room.by1 - room.by0), room.by1
        pts = [
            (room.x_at(room.bx1, d), room.vy + (yv - room.vy) * d)
            for d, yv in ((d0, top), (d1, top), (d1, bottom), (d0, bottom))
        ]
        canvas.polygon(pts, ADE_CLASSES["door"], _pick(rng, _WOOD), 0.05)
    _draw_furniture(canvas, room, category, rng)

    # Indoor light: a warm cast, a vignette, dimmer than outside.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    light = rng.uniform(0.6, 1.0) * (1.0 - rng.uniform(0.2, 0.6) * radius)
    warm = np.array([1.0, rng.uniform(0.92, 1.0), rng.uniform(0.78, 0.95)], dtype=np.float32)
    image = canvas.rgb * light[..., None] * warm
    glass = canvas.glass & (canvas.labels == WINDOW_CLASS)
    if glass.any():
        reflection = rng.uniform(0.0, 0.18)
        gain = rng.uniform(1.0, 1.45)  # the outside is brighter than the room
        outside = outdoor[glass].astype(np.float32) * gain
        room_mean = image[~glass].mean(axis=0) if (~glass).any() else 128.0
        image[glass] = outside * (1 - reflection) + (room_mean + 40.0) * reflection
    image = image + rng.normal(0, 2.0, image.shape).astype(np.float32)
    return RoomImage(
        np.clip(image + 0.5, 0, 255).astype(np.uint8), canvas.labels.copy(), category, glass.copy()
    )
