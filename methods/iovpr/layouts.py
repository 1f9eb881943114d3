"""Layouts: indoor rooms whose window pixels show an outdoor image.

``build_layouts`` selects the indoor ADE20k images, writes the binary window mask of each and
the three sets of the method (at least 10, 20 and 30 % window pixels) with a stats table.
``LayoutTransform`` is the training augmentation: with a probability it replaces a training
query (an outdoor street view) by a layout made from it:

* real layout: the outdoor image fills the window pixels of a real room; the room stays;
* gray layout: the same, with every non-window pixel set to one uniform gray.

The gray is :data:`GRAY_RGB` = (128, 128, 128) by default: a neutral mid gray, close to the
VGG normalisation mean (124, 117, 104) so that non-window pixels carry almost no signal after
normalisation, and the same gray for training and for the gray-layout queries at inference.
``gray="mean"`` picks the normalisation mean instead (exactly zero after normalisation).

Layout output folder::

    <out>/index.json                 every selected image: scene, window fraction, paths
    <out>/images/<subset>/<name>.jpg the ADE image (hard link or byte copy)
    <out>/masks/<subset>/<name>.png  8-bit PNG, 255 = window, 0 = not window
    <out>/sets/min{10,20,30}.txt     names in each set, one a line
    <out>/stats.json, <out>/stats.md counts and the window-fraction histogram
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.io import write_bytes_atomic, write_json_atomic
from methods.iovpr import ade20k

logger = logging.getLogger(__name__)

LAYOUT_FORMAT_VERSION = 1
THRESHOLDS = (10, 20, 30)
LAYOUT_KINDS = ("real", "gray")
GRAY_RGB = (128, 128, 128)
#: The lineage's normalisation mean on the 0-255 scale, rounded: zero after normalisation.
MEAN_RGB = (124, 117, 104)
HISTOGRAM_BINS = 20
INDEX_FILE = "index.json"


# --------------------------------------------------------------------------- masks


def mask_to_png_bytes(mask: np.ndarray) -> bytes:
    """PNG bytes of a boolean mask (255 = window)."""
    import io

    from PIL import Image

    assert mask.ndim == 2 and mask.dtype == bool, (mask.shape, mask.dtype)
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a boolean mask as an 8-bit PNG (0 / 255), atomically."""
    return write_bytes_atomic(path, mask_to_png_bytes(mask))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG written by :func:`write_mask` as a boolean ``(H, W)`` array."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise ValueError(f"mode {image.mode}, expected an 8-bit gray PNG")
            values = np.asarray(image)
    except FileNotFoundError:
        raise HarnessError("mask file not found", path) from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"unreadable mask ({exc})", path) from None
    if not np.isin(values, (0, 255)).all():
        raise HarnessError("mask holds values other than 0 and 255", path)
    return values == 255


def window_fraction(mask: np.ndarray) -> float:
    """Fraction of window pixels in a boolean mask."""
    assert mask.ndim == 2, mask.shape
    return float(np.count_nonzero(mask)) / mask.size


# --------------------------------------------------------------------------- composites


def parse_gray(value: str | int | Sequence[int] | None) -> tuple[int, int, int]:
    """An RGB gray from ``None`` (default), ``"mean"``, ``"128"``, ``128`` or ``"124,117,104"``."""
    if value is None:
        return GRAY_RGB
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "mean":
            return MEAN_RGB
        parts = [p for p in text.replace(" ", "").split(",") if p]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = list(value)
    try:
        levels = [int(p) for p in parts]
    except ValueError:
        levels = []
    if len(levels) == 1:
        levels = levels * 3
    if len(levels) != 3 or not all(0 <= v <= 255 for v in levels):
        raise HarnessError(
            f"invalid gray {value!r}: give 'mean', one level 0-255, or three as 'R,G,B'"
        )
    return tuple(levels)  # type: ignore[return-value]


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (
        image.shape, image.dtype)
    assert mask.shape == image.shape[:2] and mask.dtype == bool, (mask.shape, mask.dtype)


def composite_real(outdoor: np.ndarray, room: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Real layout: ``outdoor`` where ``mask`` (window), ``room`` elsewhere; all one size."""
    _check_pair(outdoor, mask)
    _check_pair(room, mask)
    return np.where(mask[:, :, None], outdoor, room)


def composite_gray(
    outdoor: np.ndarray, mask: np.ndarray, gray_rgb: Sequence[int] = GRAY_RGB
) -> np.ndarray:
    """Gray layout: ``outdoor`` where ``mask`` (window), the uniform ``gray_rgb`` elsewhere."""
    _check_pair(outdoor, mask)
    gray = np.asarray(gray_rgb, dtype=np.uint8).reshape(1, 1, 3)
    return np.where(mask[:, :, None], outdoor, gray)


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``(height, width)``."""
    from PIL import Image

    assert mask.ndim == 2 and mask.dtype == bool, (mask.shape, mask.dtype)
    if mask.shape == tuple(size_hw):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    resized = image.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) == 255


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 image to ``(height, width)``."""
    from PIL import Image

    if image.shape[:2] == tuple(size_hw):
        return image
    resized = Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def make_layout(
    outdoor: np.ndarray,
    mask: np.ndarray,
    *,
    kind: str,
    room: np.ndarray | None = None,
    gray_rgb: Sequence[int] = GRAY_RGB,
) -> np.ndarray:
    """A layout of ``kind`` at the outdoor image's size.

    The room (``real`` only) and the mask are stretched to the outdoor image (the mask with
    nearest neighbour, so its window fraction is kept); the result is pixel-exact against
    ``resize_mask(mask, outdoor.shape[:2])``.
    """
    size = outdoor.shape[:2]
    fitted = resize_mask(mask, size)
    if kind == "gray":
        return composite_gray(outdoor, fitted, gray_rgb)
    if kind == "real":
        if room is None:
            raise ValueError("a real layout needs the room image")
        return composite_real(outdoor, resize_image(room, size), fitted)
    raise HarnessError(f"unknown layout kind {kind!r}; valid: {', '.join(LAYOUT_KINDS)}")


# --------------------------------------------------------------------------- layout sets


@dataclass(frozen=True)
class LayoutSample:
    """One indoor image of a layout folder, with absolute paths."""

    name: str
    subset: str
    scene: str
    window_fraction: float
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class LayoutIndex:
    """A layout folder: every selected image and the threshold sets."""

    root: Path
    samples: tuple[LayoutSample, ...]
    thresholds: tuple[int, ...]
    window_class: int
    stats: dict = field(default_factory=dict, compare=False)

    def select(self, threshold: int, subsets: Iterable[str] | None = None) -> list[LayoutSample]:
        """Samples with at least ``threshold`` % window pixels (optionally of some subsets)."""
        if threshold not in self.thresholds:
            raise HarnessError(
                f"no layout set for threshold {threshold}; this folder has "
                f"{', '.join(map(str, self.thresholds))}",
                self.root,
            )
        wanted = None if subsets is None else set(subsets)
        chosen = [
            s for s in self.samples
            if s.window_fraction * 100.0 >= threshold and (wanted is None or s.subset in wanted)
        ]
        if not chosen:
            raise HarnessError(f"layout set min{threshold} is empty", self.root)
        return chosen


@dataclass(frozen=True)
class LayoutBuildResult:
    path: Path
    counts: dict[int, int]
    scanned: int
    stats: dict


def window_fraction_histogram(fractions: Sequence[float], bins: int = HISTOGRAM_BINS) -> list[dict]:
    """Counts of window fractions in ``bins`` equal bins over [0, 1] (last bin closed)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.asarray(fractions, dtype=np.float64), bins=edges)
    return [
        {"low": round(float(lo), 6), "high": round(float(hi), 6), "count": int(c)}
        for lo, hi, c in zip(edges[:-1], edges[1:], counts)
    ]


def stats_markdown(stats: dict) -> str:
    """The stats table as Markdown (counts per set and subset, then the histogram)."""
    subsets = stats["subsets"]
    lines = [
        f"# Layout sets ({stats['scanned']} indoor ADE20k images scanned, "
        f"{stats['with_window']} with window pixels)",
        "",
        "| set | " + " | ".join(subsets) + " | total |",
        "|---|" + "---:|" * (len(subsets) + 1),
    ]
    for threshold in stats["thresholds"]:
        row = stats["sets"][f"min{threshold}"]
        cells = [str(row["by_subset"].get(s, 0)) for s in subsets]
        lines.append(f"| >= {threshold}% window | " + " | ".join(cells) + f" | {row['total']} |")
    lines += ["", "| window fraction | images |", "|---|---:|"]
    for bin_ in stats["histogram"]:
        lines.append(f"| {bin_['low'] * 100:.0f}-{bin_['high'] * 100:.0f}% | {bin_['count']} |")
    return "\n".join(lines) + "\n"


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_layouts(
    ade_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    thresholds: Sequence[int] = THRESHOLDS,
    categories: Iterable[str] | None = None,
    all_scenes: bool = False,
    subsets: Sequence[str] = ade20k.SUBSETS,
    window_class: int = ade20k.WINDOW_CLASS,
    overwrite: bool = False,
) -> LayoutBuildResult:
    """Build the layout folder ``out_dir`` from an ADE20k release.

    Everything is written into a temporary folder beside ``out_dir`` and renamed at the end,
    so an interrupted build leaves nothing that looks complete.
    """
    from tqdm import tqdm

    thresholds = tuple(sorted({int(t) for t in thresholds}))
    if not thresholds or not all(0 < t < 100 for t in thresholds):
        raise HarnessError(f"thresholds must be percentages in (0, 100), got {thresholds}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise HarnessError("output folder exists (use --overwrite to replace it)", out_dir)
    samples = ade20k.list_samples(
        ade_root, subsets=subsets, categories=categories, all_scenes=all_scenes
    )
    if not samples:
        raise HarnessError("no indoor images selected (check the scene categories)", ade_root)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent)
    )
    try:
        minimum = thresholds[0] / 100.0
        fractions: list[float] = []
        kept: list[dict] = []
        for sample in tqdm(samples, desc="layouts", unit="img", disable=None):
            mask = ade20k.read_window_mask(sample.annotation_path, window_class)
            fraction = window_fraction(mask)
            fractions.append(fraction)
            if fraction < minimum:
                continue
            image_rel = Path("images") / sample.subset / sample.image_path.name
            mask_rel = Path("masks") / sample.subset / f"{sample.name}.png"
            _check_image_size(sample, mask.shape)
            _link_or_copy(sample.image_path, staging / image_rel)
            (staging / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / mask_rel).write_bytes(mask_to_png_bytes(mask))
            kept.append({
                "name": sample.name, "subset": sample.subset, "scene": sample.scene,
                "window_fraction": round(fraction, 8),
                "image": image_rel.as_posix(), "mask": mask_rel.as_posix(),
            })
        stats = {
            "scanned": len(samples),
            "with_window": int(sum(f > 0 for f in fractions)),
            "subsets": list(subsets),
            "thresholds": list(thresholds),
            "sets": {},
            "histogram": window_fraction_histogram(fractions),
        }
        (staging / "sets").mkdir()
        counts: dict[int, int] = {}
        for threshold in thresholds:
            members = [k for k in kept if k["window_fraction"] * 100.0 >= threshold]
            counts[threshold] = len(members)
            by_subset = {s: sum(k["subset"] == s for k in members) for s in subsets}
            stats["sets"][f"min{threshold}"] = {"total": len(members), "by_subset": by_subset}
            text = "".join(f"{k['subset']}/{k['name']}\n" for k in members)
            (staging / "sets" / f"min{threshold}.txt").write_text(text, encoding="utf-8")
        index = {
            "format_version": LAYOUT_FORMAT_VERSION,
            "source": str(ade20k.find_release_root(ade_root).resolve()),
            "window_class": window_class,
            "thresholds": list(thresholds),
            "categories": None if categories is None else sorted(categories),
            "all_scenes": bool(all_scenes),
            "samples": kept,
        }
        write_json_atomic(staging / "stats.json", stats)
        (staging / "stats.md").write_text(stats_markdown(stats), encoding="utf-8")
        write_json_atomic(staging / INDEX_FILE, index)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for threshold in thresholds:
        logger.info("layout set min%d: %d images", threshold, counts[threshold])
    return LayoutBuildResult(out_dir, counts, len(samples), stats)


def _check_image_size(sample: ade20k.AdeSample, mask_shape: tuple[int, int]) -> None:
    from PIL import Image

    try:
        with Image.open(sample.image_path) as image:
            width, height = image.size
    except OSError as exc:
        raise HarnessError(f"unreadable image ({exc})", sample.image_path) from None
    if (height, width) != tuple(mask_shape):
        raise HarnessError(
            f"image is {width}x{height} but its annotation is {mask_shape[1]}x{mask_shape[0]}",
            sample.image_path,
        )


def _replace_dir(staging: Path, target: Path) -> None:
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, trash)
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)


def load_layouts(path: str | os.PathLike) -> LayoutIndex:
    """Read a layout folder written by :func:`build_layouts`."""
    root = Path(path)
    index_path = root / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(
            f"not a layout folder (no {INDEX_FILE}); build one with `harness layouts build`", root
        ) from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"unreadable layout index ({exc})", index_path) from None
    if index.get("format_version") != LAYOUT_FORMAT_VERSION:
        raise HarnessError(f"unsupported layout format {index.get('format_version')!r}", index_path)
    try:
        samples = tuple(
            LayoutSample(
                name=s["name"], subset=s["subset"], scene=s["scene"],
                window_fraction=float(s["window_fraction"]),
                image_path=root / s["image"], mask_path=root / s["mask"],
            )
            for s in index["samples"]
        )
        thresholds = tuple(int(t) for t in index["thresholds"])
        window_class = int(index["window_class"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HarnessError(
            f"malformed layout index ({type(exc).__name__}: {exc})", index_path
        ) from None
    stats = {}
    with contextlib.suppress(OSError, ValueError):
        stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    return LayoutIndex(root, samples, thresholds, window_class, stats)


# --------------------------------------------------------------------------- training transform


class LayoutTransform:
    """Training augmentation: with ``probability``, turn a query into a layout.

    Call it on a PIL image (the raw training query, before resizing and normalisation);
    it returns a PIL RGB image of the same size. Each call draws a layout uniformly from
    ``samples`` and, with ``flip``, mirrors it (room and mask together).

    It is the trainer's ``query_augment``: called as ``transform(image, rng)`` it draws from
    the trainer's per-tuple numpy generator (results independent of the worker count).
    Called as ``transform(image)`` it draws from its own generator seeded by ``seed``; inside a
    DataLoader worker that generator is re-seeded from the worker's seed (which torch derives
    from its global seed), so workers draw different layouts and runs are reproducible.
    """

    def __init__(
        self,
        samples: Sequence[LayoutSample],
        *,
        kind: str,
        probability: float = 0.5,
        seed: int = 0,
        gray_rgb: Sequence[int] = GRAY_RGB,
        flip: bool = True,
        cache_size: int = 64,
    ):
        if kind not in LAYOUT_KINDS:
            raise HarnessError(f"unknown layout kind {kind!r}; valid: {', '.join(LAYOUT_KINDS)}")
        if not 0.0 <= probability <= 1.0:
            raise HarnessError(f"layout probability must be in [0, 1], got {probability}")
        if not samples:
            raise HarnessError("no layouts to draw from")
        self.samples = tuple(samples)
        self.kind = kind
        self.probability = float(probability)
        self.seed = int(seed)
        self.gray_rgb = tuple(int(v) for v in gray_rgb)
        self.flip = bool(flip)
        self.cache_size = int(cache_size)
        self._rng = random.Random(self.seed)
        self._worker_seed: int | None = None
        self._cache: OrderedDict[int, tuple[np.ndarray | None, np.ndarray]] = OrderedDict()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def describe(self) -> dict:
        """JSON-able settings (recorded in checkpoints)."""
        return {
            "kind": self.kind, "probability": self.probability, "seed": self.seed,
            "gray_rgb": list(self.gray_rgb), "flip": self.flip, "num_layouts": len(self.samples),
        }

    def _maybe_reseed_for_worker(self) -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._rng = random.Random(hash((self.seed, info.seed)))

    def _load(self, index: int) -> tuple[np.ndarray | None, np.ndarray]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        sample = self.samples[index]
        mask = read_mask(sample.mask_path)
        room = ade20k.read_image(sample.image_path) if self.kind == "real" else None
        if room is not None and room.shape[:2] != mask.shape:
            raise HarnessError(
                f"layout image {room.shape[1]}x{room.shape[0]} and mask "
                f"{mask.shape[1]}x{mask.shape[0]} differ", sample.image_path,
            )
        self._cache[index] = (room, mask)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return room, mask

    def draw(self, rng: np.random.Generator | None = None) -> tuple[bool, int, bool]:
        """One draw: (apply?, layout index, flip?), from ``rng`` or the transform's own
        generator."""
        if rng is None:
            self._maybe_reseed_for_worker()
            uniform, choose = self._rng.random, self._rng.randrange
        else:
            uniform, choose = rng.random, lambda n: int(rng.integers(n))
        apply = uniform() < self.probability
        index = choose(len(self.samples))
        flip = self.flip and uniform() < 0.5
        return apply, index, flip

    def apply(self, outdoor: np.ndarray, index: int, flip: bool = False) -> np.ndarray:
        """The layout of ``outdoor`` (uint8 RGB array) with layout ``index``."""
        room, mask = self._load(index)
        if flip:
            mask = mask[:, ::-1]
            room = None if room is None else room[:, ::-1]
        return make_layout(
            outdoor, np.ascontiguousarray(mask), kind=self.kind,
            room=None if room is None else np.ascontiguousarray(room), gray_rgb=self.gray_rgb,
        )

    def __call__(self, image, rng: np.random.Generator | None = None):
        """The (maybe) layout of PIL ``image``; ``rng`` as the trainer's ``query_augment``
        gives it."""
        from PIL import Image

        apply, index, flip = self.draw(rng)
        if not apply:
            return image
        outdoor = np.asarray(image.convert("RGB"))
        return Image.fromarray(self.apply(outdoor, index, flip))


def make_layout_transform(
    layouts_dir: str | os.PathLike,
    *,
    kind: str,
    threshold: int,
    probability: float = 0.5,
    seed: int = 0,
    gray: str | int | Sequence[int] | None = None,
    flip: bool = True,
    subsets: Iterable[str] | None = None,
) -> LayoutTransform:
    """The training transform over the ``threshold`` set of the layout folder."""
    index = load_layouts(layouts_dir)
    samples = index.select(int(threshold), subsets)
    logger.info(
        "%s layouts, set min%d: %d rooms, probability %.2f",
        kind,
        threshold,
        len(samples),
        probability,
    )
    return LayoutTransform(
        samples, kind=kind, probability=probability, seed=seed, gray_rgb=parse_gray(gray), flip=flip
    )
