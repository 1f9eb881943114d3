"""What furnishes an indoor scene, drawn on a :class:`synth.room_canvas.Canvas` in painter's
order: walls, floor and ceiling; windows (their glass marked for the outdoor view); curtains
and blinds; frames; a door; furniture and lamps by room category.
"""

from __future__ import annotations

import numpy as np

from synth.room_canvas import ADE_CLASSES, WINDOW_CLASS, Canvas, RoomBox

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


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.08) -> np.ndarray:
    colour = table[int(rng.integers(len(table)))] * rng.uniform(1 - jitter, 1 + jitter, 3)
    return np.clip(colour, 0, 255)


def draw_shell(canvas: Canvas, room: RoomBox, rng: np.random.Generator) -> dict:
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


def draw_windows(canvas: Canvas, room: RoomBox, rng: np.random.Generator, target: float) -> list:
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


def draw_curtains(canvas: Canvas, room: RoomBox, windows, rng: np.random.Generator) -> None:
    """Curtains beside some windows, sometimes a half-lowered blind."""
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


def draw_wall_decor(canvas: Canvas, room: RoomBox, windows, rng: np.random.Generator) -> None:
    """Framed pictures on the back wall (clear of the windows) and a side wall."""
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


def draw_door(canvas: Canvas, room: RoomBox, rng: np.random.Generator) -> None:
    """Sometimes a door in the right wall (a parallelogram in perspective)."""
    if rng.random() < 0.3 and room.bx1 < 0.85 * canvas.width:
        d0, d1 = 1.15, 1.45
        top, bottom = room.by0 + 0.15 * (room.by1 - room.by0), room.by1
        pts = [
            (room.x_at(room.bx1, d), room.vy + (yv - room.vy) * d)
            for d, yv in ((d0, top), (d1, top), (d1, bottom), (d0, bottom))
        ]
        canvas.polygon(pts, ADE_CLASSES["door"], _pick(rng, _WOOD), 0.05)


def _box(
    canvas: Canvas,
    room: RoomBox,
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


def draw_furniture(canvas: Canvas, room: RoomBox, category: str, rng: np.random.Generator) -> None:
    """The furniture of the room ``category``, rugs, and ceiling lamps."""
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
