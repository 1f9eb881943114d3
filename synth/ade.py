"""The ADE20k scene-parsing layout (ADEChallengeData2016) the synthetic indoor scenes use::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png
    ADEChallengeData2016/sceneCategories.txt      lines "ADE_train_00000001 bedroom"

Annotations are single-channel uint8 PNGs of class indices: 0 = other, 1..150 = the classes
of ADE20k's objectInfo150 (window = 9, wall = 1, floor = 4, ceiling = 6, ...; see
:data:`synth.indoor.ADE_CLASSES`), the same size as their image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

ADE_PARTS = ("training", "validation")


def image_path(ade_root: str | os.PathLike, part: str, stem: str) -> Path:
    return Path(ade_root) / "images" / part / f"{stem}.jpg"


def annotation_path(ade_root: str | os.PathLike, part: str, stem: str) -> Path:
    return Path(ade_root) / "annotations" / part / f"{stem}.png"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_scene(ade_root: str | os.PathLike, part: str, stem: str, jpeg: bytes, png: bytes) -> None:
    """Write one scene: its encoded image and its encoded class-index annotation."""
    if part not in ADE_PARTS:
        raise ValueError(f"part must be one of {ADE_PARTS}, got {part!r}")
    _write(image_path(ade_root, part, stem), jpeg)
    _write(annotation_path(ade_root, part, stem), png)


def write_scene_categories(ade_root: str | os.PathLike, scenes: Iterable[tuple[str, str]]) -> Path:
    """Write ``sceneCategories.txt`` (sorted by image stem, training before validation)."""
    lines = sorted(f"{stem} {category}\n" for stem, category in scenes)
    path = Path(ade_root) / "sceneCategories.txt"
    _write(path, "".join(lines).encode("utf-8"))
    return path


def read_scene_categories(ade_root: str | os.PathLike) -> dict[str, str]:
    """``{image stem: scene category}`` from ``sceneCategories.txt``."""
    path = Path(ade_root) / "sceneCategories.txt"
    categories = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            stem, category = line.split(maxsplit=1)
            categories[stem] = category.strip()
    return categories
