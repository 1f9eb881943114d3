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

from synth.room_canvas import (
    ADE_CLASSES,
    ROOM_CATEGORIES,
    WINDOW_CLASS,
    Canvas,
    place_room_box,
)
from synth.room_parts import (
    draw_curtains,
    draw_door,
    draw_furniture,
    draw_shell,
    draw_wall_decor,
    draw_windows,
)

# Re-exported: the label vocabulary lives with the canvas (synth.room_canvas).
__all__ = ["ADE_CLASSES", "ROOM_CATEGORIES", "WINDOW_CLASS", "RoomImage", "render_room"]


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
    canvas = Canvas(width, height, rng)
    # The back wall must leave room for the windows around it: ~1/0.7 of the target.
    back_fraction = float(np.clip(target_fraction / rng.uniform(0.55, 0.8) + 0.05, 0.22, 0.93))
    room = place_room_box(rng, width, height, back_fraction)
    draw_shell(canvas, room, rng)
    windows = []
    if target_fraction > 0 and outdoor is not None:
        windows = draw_windows(canvas, room, rng, target_fraction)
    draw_curtains(canvas, room, windows, rng)
    draw_wall_decor(canvas, room, windows, rng)
    draw_door(canvas, room, rng)
    draw_furniture(canvas, room, category, rng)

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

