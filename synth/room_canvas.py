"""The painting surface of the indoor scenes: ADE20k label vocabulary, masks, the canvas that
paints colour and class labels together, and the room's box in one-point perspective.
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


class Mask:
    """A drawn shape: its bounding box in the image and a boolean mask of that box."""

    __slots__ = ("rows", "cols", "crop")

    def __init__(self, rows: slice, cols: slice, crop: np.ndarray):
        self.rows, self.cols, self.crop = rows, cols, crop

    def full(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        out[self.rows, self.cols] = self.crop
        return out


EMPTY_MASK = Mask(slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool))


class Canvas:
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

    def mask(self, shape: str, coords, **kwargs) -> Mask:
        if shape != "polygon":  # bounding-box shapes: Pillow wants x0 <= x1 and y0 <= y1
            x0, y0, x1, y1 = (float(v) for v in coords)
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
            if x1 - x0 < 0.5 or y1 - y0 < 0.5:
                return EMPTY_MASK
            coords = [x0, y0, x1, y1]
        layer = Image.new("1", (self.width, self.height), 0)
        draw = ImageDraw.Draw(layer)
        getattr(draw, shape)(coords, fill=1, **kwargs)
        box = layer.getbbox()
        if box is None:
            return EMPTY_MASK
        crop = np.asarray(layer.crop(box), dtype=bool)
        return Mask(slice(box[1], box[3]), slice(box[0], box[2]), crop)

    def paint(
        self, mask: Mask, cls: int, colour, texture: float = 0.06, shade: np.ndarray | None = None
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

    def polygon(self, points, cls: int, colour, texture: float = 0.06) -> Mask:
        mask = self.mask("polygon", [tuple(map(float, p)) for p in points])
        self.paint(mask, cls, colour, texture)
        return mask

    def rect(self, x0, y0, x1, y1, cls: int, colour, texture: float = 0.06) -> Mask:
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        mask = self.mask("rectangle", [x0, y0, x1 - 1, y1 - 1])
        self.paint(mask, cls, colour, texture)
        return mask

    def set_glass(self, mask: Mask) -> None:
        self.glass[mask.rows, mask.cols] |= mask.crop



@dataclass(frozen=True)
class RoomBox:
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


def place_room_box(
    rng: np.random.Generator, width: int, height: int, back_fraction: float
) -> RoomBox:
    """A random back wall covering about ``back_fraction`` of the image, and its vanishing point."""
    aspect = rng.uniform(0.9, 1.5)  # back wall width / height in pixels, relative to the image's
    bw = min(0.98, np.sqrt(back_fraction * aspect)) * width
    bh = min(0.97, back_fraction * width * height / bw / height) * height
    bx0 = rng.uniform(0.01, 0.99) * (width - bw)
    by0 = rng.uniform(0.15, 0.75) * (height - bh)
    room = RoomBox(bx0, by0, bx0 + bw, by0 + bh, 0.0, 0.0)
    vx = rng.uniform(room.bx0 + 0.3 * bw, room.bx1 - 0.3 * bw)
    vy = rng.uniform(room.by0 + 0.35 * bh, room.by0 + 0.55 * bh)
    return RoomBox(room.bx0, room.by0, room.bx1, room.by1, vx, vy)
