"""Window-mask inference with a per-image cache.

``harness segment --split S --segmenter CKPT`` predicts the window mask of every query of a
split and stores each as a PNG (255 = window) at the image's own resolution::

    <cache>/<key>/<image name>.png
        key = first 16 hex of the checkpoint's sha256 + "-s<short side>"

so masks of another checkpoint or inference size never mix, and a rerun only computes
what is missing. The gray-layout method (``iovpr-gray``) reads the same cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.errors import HarnessError
from methods.iovpr import ade20k
from methods.iovpr.layouts import read_mask, write_mask
from methods.iovpr.segmentation import LoadedSegmenter, load_segmenter, segment_logits
from methods.runtime import resolve_device

logger = logging.getLogger(__name__)

CACHE_SUBDIR = Path("cache") / "window-masks"


def default_cache_dir() -> Path:
    """``<data root>/cache/window-masks`` (the data root is ``$HARNESS_DATA`` or ~/.cache/...)."""
    from harness.splits import default_data_root

    return default_data_root() / CACHE_SUBDIR


def cache_key(segmenter: LoadedSegmenter) -> str:
    return f"{segmenter.sha256[:16]}-s{segmenter.input_short_side}"


class MaskCache:
    """Masks of one segmenter (one cache key) under ``root``."""

    def __init__(self, root: str | os.PathLike, key: str):
        self.folder = Path(root) / key
        self.key = key

    def path(self, name: str) -> Path:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise HarnessError(
                f"image name {name!r} must be a relative path inside the image folder"
            )
        return self.folder / f"{name}.png"

    def get(self, name: str) -> np.ndarray | None:
        path = self.path(name)
        return read_mask(path) if path.is_file() else None

    def put(self, name: str, mask: np.ndarray) -> Path:
        return write_mask(self.path(name), mask)


ADE_CLASSES = 150  # CSAIL's ADE20k heads: logit i is class i + 1 (0 = unlabelled)


def window_from_logits(logits):
    """Boolean window mask ``(N, H, W)`` of logits ``(N, C, H, W)``.

    Two classes (our segmenters): class 1 wins. 150 ADE20k classes (a CSAIL model imported
    with ``harness segmenter import``): the window class wins the argmax, as CSAIL predicts.
    """
    classes = logits.shape[1]
    if classes == 2:
        return logits.argmax(1) == 1
    if classes == ADE_CLASSES:
        return logits.argmax(1) == ade20k.WINDOW_CLASS - 1
    raise HarnessError(f"a segmenter with {classes} classes has no window class (need 2 or 150)")


def predict_masks(segmenter: LoadedSegmenter, images: Sequence[np.ndarray],
                  device: str = "cpu") -> list[np.ndarray]:
    """Boolean window masks of ``images`` (uint8 RGB arrays), each at its image's size.

    Images are resized to the segmenter's short side; same-sized ones run as one batch.
    """
    import torch

    from methods.iovpr.segtrain import resize_short_side, to_tensor

    masks: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (
            image.shape,
            image.dtype,
        )
        groups.setdefault(image.shape[:2], []).append(index)
    model = segmenter.model
    with torch.no_grad():
        for size, indices in groups.items():
            batch = torch.stack([to_tensor(resize_short_side(images[i], segmenter.input_short_side))
                                 for i in indices]).to(device)
            with torch.autocast(device_type="cuda", enabled=str(device).startswith("cuda")):
                logits = segment_logits(model, batch, size=size)
            predicted = window_from_logits(logits).cpu().numpy()
            for row, index in enumerate(indices):
                masks[index] = predicted[row]
    return masks  # type: ignore[return-value]


@dataclass(frozen=True)
class SegmentResult:
    folder: Path
    computed: int
    reused: int


def segment_images(
    segmenter: LoadedSegmenter | str | os.PathLike,
    image_root: str | os.PathLike,
    names: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 8,
) -> SegmentResult:
    """Predict and cache the masks of ``image_root/<name>`` for every name not cached yet."""
    from tqdm import tqdm

    device = str(resolve_device(device))
    if not isinstance(segmenter, LoadedSegmenter):
        segmenter = load_segmenter(segmenter, device)
    cache = MaskCache(cache_dir or default_cache_dir(), cache_key(segmenter))
    todo = [name for name in names if not cache.path(name).is_file()]
    image_root = Path(image_root)
    for start in tqdm(range(0, len(todo), batch_size), desc="segment", unit="batch", disable=None):
        chunk = todo[start:start + batch_size]
        images = []
        for name in chunk:
            path = image_root / name
            if not path.is_file():
                raise HarnessError("missing image", path)
            images.append(ade20k.read_image(path))
        for name, mask in zip(chunk, predict_masks(segmenter, images, device)):
            cache.put(name, mask)
    logger.info(
        "window masks in %s: %d computed, %d cached",
        cache.folder,
        len(todo),
        len(names) - len(todo),
    )
    return SegmentResult(cache.folder, len(todo), len(names) - len(todo))


def segment_split(split, segmenter, *, part: str = "query", **kwargs) -> SegmentResult:
    """:func:`segment_images` over the ``query`` or ``database`` images of a split."""
    if part == "query":
        root, names = split.query_root, split.query_names
    elif part == "database":
        root, names = split.database_root, split.database_names
    else:
        raise HarnessError(f"unknown part {part!r}; valid: query, database")
    if not root:
        raise HarnessError(f"split {split.name} does not record its {part} image folder")
    return segment_images(segmenter, root, names, **kwargs)
