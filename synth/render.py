"""Outdoor street views: ray casting against the two facade planes, the ground and the sky.

A view is a pinhole camera in street coordinates (see :class:`synth.city.Street`).
Every pixel's ray is intersected, vectorised, with the left and right facade planes and the
ground; facade hits above the building's roof line are sky. Static street objects (trees,
lamps, bollards, bikes) and per-image occluders (cars, people, cyclists) are billboards in
3-D, projected with the same camera. Conditions (light, colour cast, sky, shadows, blur,
noise) are applied last; only ``numpy`` and Pillow are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synth.city import MARGIN_M, StreetModel, StreetObject


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in street coordinates.

    ``yaw_deg``: heading clockwise from the street direction (90 looks at the right facade).
    ``pitch_deg``: positive looks up. ``hfov_deg``: horizontal field of view.
    """

    along_m: float
    lateral_m: float
    height_m: float
    yaw_deg: float
    pitch_deg: float = 8.0
    hfov_deg: float = 90.0
    roll_deg: float = 0.0


@dataclass(frozen=True)
class Conditions:
    """Photometric conditions of one image."""

    sky_top: tuple[float, float, float] = (110.0, 160.0, 225.0)
    sky_horizon: tuple[float, float, float] = (200.0, 220.0, 240.0)
    clouds: float = 0.3
    exposure: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shadow: float = 0.0  # darkening of the facade part in shadow (0 = overcast)
    shadow_slope: float = 0.5
    shadow_offset_m: float = 6.0
    haze_m: float = 400.0
    blur_px: float = 0.0
    noise: float = 1.5
    occluders: int = 0


_SKIES = {
    "clear": ((100.0, 150.0, 225.0), (195.0, 215.0, 240.0)),
    "overcast": ((165.0, 170.0, 178.0), (205.0, 208.0, 212.0)),
    "evening": ((70.0, 90.0, 150.0), (240.0, 170.0, 110.0)),
    "grey": ((120.0, 125.0, 135.0), (170.0, 172.0, 176.0)),
}


def database_conditions(rng: np.random.Generator) -> Conditions:
    """Mild variation: street-view cars drive in daylight, mostly in similar weather."""
    top, horizon = _SKIES["clear" if rng.random() < 0.6 else "overcast"]
    return Conditions(
        sky_top=top,
        sky_horizon=horizon,
        clouds=rng.uniform(0.0, 0.5),
        exposure=rng.uniform(0.93, 1.07),
        cast=tuple(rng.uniform(0.97, 1.03, 3)),
        shadow=rng.uniform(0.0, 0.15),
        shadow_slope=rng.uniform(-0.8, 0.8),
        shadow_offset_m=rng.uniform(3, 12),
        noise=1.0,
        occluders=int(rng.integers(0, 2)),
    )


def query_conditions(rng: np.random.Generator, occluders: bool = True) -> Conditions:
    """Queries are taken at another time: other light, colour, sky, blur and occluders."""
    sky = ("clear", "overcast", "evening", "grey")[int(rng.integers(4))]
    top, horizon = _SKIES[sky]
    dark = sky in ("evening", "grey")
    return Conditions(
        sky_top=top,
        sky_horizon=horizon,
        clouds=rng.uniform(0.0, 0.8),
        exposure=rng.uniform(0.7, 1.0) if dark else rng.uniform(0.85, 1.2),
        gamma=rng.uniform(0.85, 1.18),
        contrast=rng.uniform(0.8, 1.1),
        cast=tuple(rng.uniform(0.9, 1.1, 3)),
        shadow=rng.uniform(0.2, 0.4) if sky == "clear" and rng.random() < 0.5 else 0.0,
        shadow_slope=rng.uniform(-1.2, 1.2),
        shadow_offset_m=rng.uniform(2, 14),
        haze_m=rng.uniform(150, 500),
        blur_px=rng.uniform(0.0, 1.2),
        noise=rng.uniform(1.0, 4.0),
        occluders=int(rng.integers(0, 5)) if occluders else 0,
    )


def _camera_axes(camera: Camera):
    yaw, pitch = math.radians(camera.yaw_deg), math.radians(camera.pitch_deg)
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    forward, up = forward * math.cos(pitch) + up * math.sin(pitch), up * math.cos(
        pitch
    ) - forward * math.sin(pitch)
    roll = math.radians(camera.roll_deg)
    if roll:
        right, up = right * math.cos(roll) + up * math.sin(roll), up * math.cos(
            roll
        ) - right * math.sin(roll)
    return forward, right, up


def _focal(camera: Camera, width: int) -> float:
    return (width / 2.0) / math.tan(math.radians(camera.hfov_deg) / 2.0)


def _hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic per-cell value in [0, 1) from integer cell coordinates (vectorised)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _ground_colour(street, along: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Water, road (with dashes) and brick pavement by lateral position (vectorised)."""
    dist = np.abs(lateral)
    out = np.empty(along.shape + (3,), dtype=np.float32)
    water = dist < street.water_half_m
    road = (~water) & (dist < street.water_half_m + street.road_half_m)
    walk = ~(water | road)
    cell = _hash01(np.floor(along * 4), np.floor(lateral * 8), street.seed % 997)
    out[water] = np.array([52.0, 70.0, 68.0]) * (0.85 + 0.3 * cell[water, None])
    out[road] = np.array([78.0, 78.0, 80.0]) * (0.9 + 0.2 * cell[road, None])
    bricks = _hash01(np.floor(along * 5), np.floor(lateral * 10), street.seed % 991 + 7)
    out[walk] = np.array([150.0, 110.0, 100.0]) * (0.75 + 0.35 * bricks[walk, None])
    if street.water_half_m == 0:
        dash = road & (np.abs(lateral) < 0.08) & ((along % 6.0) < 3.0)
        out[dash] = 225.0
    else:  # quay edge
        quay = (dist >= street.water_half_m) & (dist < street.water_half_m + 0.4)
        out[quay] = 120.0
    return out


def _stacked_facades(model: StreetModel):
    """Both facades in one array (side 0 = left, 1 = right), so a view samples them with one
    gather; cached on the model."""
    cached = getattr(model, "_stacked", None)
    if cached is None:
        left, right = model.left, model.right
        assert left.pixels.shape == right.pixels.shape and left.px_per_m == right.px_per_m
        cached = (
            np.stack([left.pixels, right.pixels]),
            np.stack([left.roof_px, right.roof_px]),
            left.px_per_m,
        )
        model._stacked = cached  # type: ignore[attr-defined]
    return cached


def render_geometry(
    model: StreetModel, camera: Camera, width: int, height: int, conditions: Conditions
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast facades, ground and sky; returns (float32 RGB image, distance in metres per
    pixel, inf for sky)."""
    street = model.street
    forward, right, up = _camera_axes(camera)
    focal = _focal(camera, width)
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2.0)[None, :]
    ys = (height / 2.0 - (np.arange(height, dtype=np.float32) + 0.5))[:, None]
    ray_along, ray_lat, ray_up = (
        np.float32(forward[k] * focal) + np.float32(right[k]) * xs + np.float32(up[k]) * ys
        for k in range(3)
    )
    ray_up = np.broadcast_to(ray_up, (height, width))
    norm = np.sqrt(ray_along * ray_along + ray_lat * ray_lat + ray_up * ray_up)

    # Sky: vertical gradient by ray elevation.
    t = np.clip(ray_up / norm * 1.6, 0.0, 1.0)[..., None]
    horizon = np.asarray(conditions.sky_horizon, dtype=np.float32)
    image = horizon + (np.asarray(conditions.sky_top, dtype=np.float32) - horizon) * t

    # Facades: each ray meets the plane on the side it points to (right if ray_lat > 0).
    pixels, roofs, res = _stacked_facades(model)
    side = (ray_lat > 0).astype(np.intp)
    plane = np.where(side == 1, np.float32(street.right_m), np.float32(-street.left_m))
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = (plane - np.float32(camera.lateral_m)) / ray_lat
    lam = np.where(np.isfinite(lam) & (lam > 0), lam, np.float32(np.inf))
    along = camera.along_m + lam * ray_along
    up_m = camera.height_m + lam * ray_up
    cols = np.clip(
        np.nan_to_num((along + MARGIN_M) * res, nan=0.0, posinf=0.0, neginf=0.0),
        0,
        pixels.shape[2] - 1,
    ).astype(np.intp)
    rows = np.clip(
        np.nan_to_num(up_m * res, nan=-1.0, posinf=-1.0, neginf=-1.0), 0, pixels.shape[1] - 1
    ).astype(np.intp)
    facade = (
        np.isfinite(lam)
        & (up_m >= 0)
        & (rows < roofs[side, cols])
        & (np.abs(along - camera.along_m) < MARGIN_M + 40)
    )
    colour = pixels[side[facade], rows[facade], cols[facade]].astype(np.float32)
    if conditions.shadow > 0:
        line = (
            conditions.shadow_offset_m
            + conditions.shadow_slope * (along[facade] % 40.0 - 20.0) * 0.3
        )
        colour *= np.where(
            up_m[facade] < line, np.float32(1.0 - conditions.shadow), np.float32(1.0)
        )[:, None]
    image[facade] = colour
    depth = np.where(facade, lam, np.float32(np.inf))

    # Ground: downward rays that meet the ground before a facade.
    with np.errstate(divide="ignore", invalid="ignore"):
        lam_g = np.where(ray_up < 0, -np.float32(camera.height_m) / ray_up, np.float32(np.inf))
    # (a downward ray over a roof meets the ground behind the facade: that stays sky)
    ground = np.isfinite(lam_g) & ~facade & (lam_g < lam)
    along_g = camera.along_m + lam_g[ground] * ray_along[ground]
    lat_g = camera.lateral_m + lam_g[ground] * ray_lat[ground]
    image[ground] = _ground_colour(street, along_g, lat_g)
    depth[ground] = lam_g[ground]

    # Atmospheric perspective: far things fade to the horizon colour.
    metres = depth * norm
    solid = np.isfinite(metres)
    fade = np.exp(-metres[solid] / np.float32(conditions.haze_m))[:, None]
    image[solid] = image[solid] * fade + horizon * (1 - fade)
    return image, metres


def _project(camera: Camera, width: int, height: int, along: float, lateral: float, up_m: float):
    """Pixel (x, y) and depth of a 3-D point in street coordinates, or None behind the camera."""
    forward, right, up = _camera_axes(camera)
    rel = np.array([along - camera.along_m, lateral - camera.lateral_m, up_m - camera.height_m])
    depth = float(rel @ forward)
    if depth < 0.5:
        return None
    focal = _focal(camera, width)
    return (
        width / 2.0 + focal * float(rel @ right) / depth,
        height / 2.0 - focal * float(rel @ up) / depth,
        depth,
        focal / depth,
    )


def _draw_billboard(
    draw: ImageDraw.ImageDraw,
    kind: str,
    base_x: float,
    base_y: float,
    scale: float,
    obj_height: float,
    width_m: float,
    colour,
    rng_values,
) -> None:
    """Draw an object whose base is at (base_x, base_y); ``scale`` is pixels per metre."""

    def box(x0, z0, x1, z1):  # metres relative to the base point, z upwards
        return [base_x + x0 * scale, base_y - z1 * scale, base_x + x1 * scale, base_y - z0 * scale]

    c = tuple(int(v) for v in colour)
    if kind == "tree":
        trunk = (70, 55, 45)
        draw.rectangle(box(-0.15, 0, 0.15, obj_height * 0.55), fill=trunk)
        r = width_m / 2
        draw.ellipse(box(-r, obj_height * 0.4, r, obj_height), fill=c)
        draw.ellipse(
            box(-r * 0.6, obj_height * 0.55, r * 0.9, obj_height * 1.05),
            fill=tuple(min(255, int(v * 1.15)) for v in c),
        )
    elif kind == "lamp":
        draw.rectangle(box(-0.06, 0, 0.06, obj_height), fill=c)
        draw.rectangle(box(-0.25, obj_height - 0.4, 0.25, obj_height), fill=(50, 50, 45))
    elif kind == "bollard":
        draw.rectangle(box(-0.1, 0, 0.1, obj_height), fill=c)
    elif kind == "bike":
        r = 0.33
        draw.ellipse(
            box(-0.85, 0, -0.85 + 2 * r, 2 * r),
            outline=(25, 25, 25),
            width=max(1, int(scale * 0.05)),
        )
        draw.ellipse(
            box(0.85 - 2 * r, 0, 0.85, 2 * r), outline=(25, 25, 25), width=max(1, int(scale * 0.05))
        )
        draw.line(
            [tuple(box(-0.5, r, 0.5, r)[:2]), tuple(box(0.5, 0.9, 0.5, 0.9)[:2])],
            fill=c,
            width=max(1, int(scale * 0.06)),
        )
    elif kind == "car":
        draw.rounded_rectangle(
            box(-width_m / 2, 0.25, width_m / 2, 0.95), radius=max(1, int(scale * 0.3)), fill=c
        )
        draw.rounded_rectangle(
            box(-width_m / 3.2, 0.9, width_m / 3.4, 1.45), radius=max(1, int(scale * 0.25)), fill=c
        )
        draw.rectangle(box(-width_m / 3.6, 1.0, width_m / 3.8, 1.38), fill=(60, 75, 90))
        for wx in (-width_m / 3, width_m / 3):
            draw.ellipse(box(wx - 0.33, 0, wx + 0.33, 0.66), fill=(20, 20, 20))
    elif kind == "person":
        skin = (
            int(150 + 80 * rng_values[0]),
            int(110 + 70 * rng_values[0]),
            int(90 + 60 * rng_values[0]),
        )
        draw.rectangle(box(-0.18, 0, 0.18, obj_height * 0.5), fill=(40, 40, 60))
        draw.rounded_rectangle(
            box(-0.25, obj_height * 0.48, 0.25, obj_height * 0.85),
            radius=max(1, int(scale * 0.08)),
            fill=c,
        )
        draw.ellipse(box(-0.12, obj_height * 0.85, 0.12, obj_height), fill=skin)
    elif kind == "cyclist":
        _draw_billboard(draw, "bike", base_x, base_y, scale, 1.0, 1.7, c, rng_values)
        draw.rounded_rectangle(box(-0.2, 0.9, 0.2, 1.5), radius=max(1, int(scale * 0.08)), fill=c)
        draw.ellipse(box(-0.12, 1.5, 0.12, 1.75), fill=(200, 160, 130))


def _dynamic_objects(model: StreetModel, camera: Camera, rng: np.random.Generator, count: int):
    street = model.street
    objects = []
    for _ in range(count):
        kind = ("car", "person", "cyclist", "person")[int(rng.integers(4))]
        along = camera.along_m + rng.uniform(-10, 10)
        side = 1.0 if rng.random() < 0.5 else -1.0
        facade = street.right_m if side > 0 else street.left_m
        if kind == "car":
            lateral = side * (street.water_half_m + street.road_half_m - 1.0)
            height, width = 1.45, rng.uniform(3.8, 4.6)
        elif kind == "cyclist":
            lateral = side * (street.water_half_m + street.road_half_m * rng.uniform(0.3, 0.8))
            height, width = 1.75, 1.7
        else:
            lateral = side * (facade - rng.uniform(0.5, 1.8))
            height, width = rng.uniform(1.55, 1.95), 0.5
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        objects.append(StreetObject(kind, along, lateral, height, colour, width))
    return objects


def render_view(
    model: StreetModel,
    camera: Camera,
    width: int,
    height: int,
    conditions: Conditions,
    rng: np.random.Generator,
) -> np.ndarray:
    """An outdoor view as a uint8 (height, width, 3) array."""
    image, metres = render_geometry(model, camera, width, height, conditions)
    if conditions.clouds > 0:  # soft bright blobs where the sky shows
        sky = ~np.isfinite(metres)
        coarse = rng.random((4, 6)).astype(np.float32)
        blobs = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
        amount = np.clip((blobs - 0.45) * 2.5, 0, 1) * conditions.clouds
        image[sky] = image[sky] * (1 - amount[sky, None]) + 235.0 * amount[sky, None]
    extra = _dynamic_objects(model, camera, rng, conditions.occluders)
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    projected = []
    for obj in list(model.objects) + extra:
        if abs(obj.along_m - camera.along_m) > 60:
            continue
        hit = _project(camera, width, height, obj.along_m, obj.lateral_m, 0.0)
        if hit is None:
            continue
        x, y, depth, scale = hit
        if -width < x < 2 * width:
            projected.append((depth, obj, x, y, scale))
    # Painter's order (far first); the second key keeps ties deterministic.
    projected.sort(key=lambda item: (-item[0], item[1].along_m, item[1].lateral_m))
    values = rng.random(len(projected))
    for (depth, obj, x, y, scale), value in zip(projected, values):
        _draw_billboard(
            draw, obj.kind, x, y, scale, obj.height_m, obj.width_m, obj.colour, (value,)
        )
    return finish(np.asarray(canvas, dtype=np.float32), conditions, rng)


def finish(image: np.ndarray, conditions: Conditions, rng: np.random.Generator) -> np.ndarray:
    """Photometric conditions: exposure, colour cast, contrast, gamma, blur, sensor noise."""
    out = image * (conditions.exposure * np.asarray(conditions.cast, dtype=np.float32))
    mean = out.mean(axis=(0, 1), keepdims=True)
    out = (out - mean) * np.float32(conditions.contrast) + mean
    levels = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    curve = (255.0 * (np.arange(256) / 255.0) ** conditions.gamma).astype(np.float32)
    out = curve[levels]
    if conditions.noise > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(conditions.noise)
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if conditions.blur_px > 0.05:
        result = np.asarray(
            Image.fromarray(result).filter(ImageFilter.GaussianBlur(conditions.blur_px))
        )
    return result
