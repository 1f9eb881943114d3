"""Reader for the ADE20k scene-parsing release (``ADEChallengeData2016``).

Layout (the official release; the synthetic city writes the same)::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png
    ADEChallengeData2016/sceneCategories.txt        # "ADE_train_00000001 airport_terminal"

Annotations are 8-bit class-index PNGs: 0 = other/unlabelled, 1..150 = the objectInfo150
classes; the IOVPR method only needs class 9, "windowpane, window".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

RELEASE_DIR = "ADEChallengeData2016"
SUBSETS = ("training", "validation")
SCENE_FILE = "sceneCategories.txt"
NUM_CLASSES = 150
WINDOW_CLASS = 9
_NAME_PREFIX = {"training": "ADE_train_", "validation": "ADE_val_"}

#: Scene categories of ADEChallengeData2016 counted as indoor by default. Names are as written
#: in ``sceneCategories.txt`` (the SUN hierarchy with ``/`` replaced by ``_``). Categories
#: ending in ``_indoor``, ``_interior`` or ``_home`` are indoor too (see :func:`is_indoor`).
DEFAULT_INDOOR_CATEGORIES: tuple[str, ...] = (
    "airport_terminal", "alcove", "art_gallery", "art_school", "art_studio", "artists_loft",
    "attic", "auditorium", "bakery_shop", "ballroom", "bar", "basement", "bathroom", "bedroom",
    "biology_laboratory", "bookstore", "bow_window_indoor", "cafeteria", "chemistry_lab",
    "childs_room", "classroom", "clean_room", "closet", "clothing_store", "cloister_indoor",
    "coffee_shop", "computer_room", "conference_center", "conference_room", "corridor",
    "day_care_center", "delicatessen", "dentists_office", "dining_hall", "dining_room",
    "dinette_home", "dorm_room", "dressing_room", "elevator_lobby", "entrance_hall",
    "exhibition_hall", "fastfood_restaurant", "florist_shop_indoor", "game_room",
    "gymnasium_indoor", "hallway", "home_office", "home_theater", "hospital_room",
    "hotel_room", "kindergarden_classroom", "kitchen", "kitchenette", "laundromat",
    "lecture_room", "library_indoor", "living_room", "lobby", "locker_room", "mezzanine",
    "museum_indoor", "music_studio", "nursery", "office", "office_cubicles", "pantry",
    "parlor", "pet_shop", "playroom", "poolroom_home", "reading_room", "reception",
    "recreation_room", "restaurant", "restaurant_kitchen", "shoe_shop", "shop", "shower",
    "staircase", "storage_room", "sunroom", "supermarket", "television_room", "throne_room",
    "toyshop", "utility_room", "waiting_room", "wet_bar", "workroom",
)
_INDOOR_SUFFIXES = ("_indoor", "_interior", "_home")


@dataclass(frozen=True)
class AdeSample:
    """One image of the release: ``name`` is the stem, e.g. ``ADE_train_00000001``."""

    name: str
    subset: str
    scene: str
    image_path: Path
    annotation_path: Path


def find_release_root(path: str | os.PathLike) -> Path:
    """The ``ADEChallengeData2016`` folder given it or its parent; a clear error otherwise."""
    path = Path(path).expanduser()
    for candidate in (path, path / RELEASE_DIR):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise HarnessError(
        f"not an ADE20k scene-parsing folder: expected images/ and annotations/ in it or in "
        f"its {RELEASE_DIR}/ subfolder",
        path,
    )


def read_scene_categories(root: str | os.PathLike) -> dict[str, str]:
    """``{image stem: scene category}`` from ``sceneCategories.txt``."""
    path = find_release_root(root) / SCENE_FILE
    if not path.is_file():
        raise HarnessError(f"missing {SCENE_FILE} (needed to select indoor scenes)", path)
    scenes: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise HarnessError(
                    f"line {line_number}: expected '<image name> <scene>', got {line.strip()!r}",
                    path,
                )
            scenes[fields[0]] = fields[1]
    return scenes


def is_indoor(scene: str, categories: Iterable[str] | None = None) -> bool:
    """Whether ``scene`` is indoor: in ``categories`` (default list) or an indoor suffix.

    With an explicit ``categories`` list only that list counts (no suffix rule), so a user's
    list is exactly what gets selected.
    """
    if categories is not None:
        return scene in set(categories)
    return scene in DEFAULT_INDOOR_CATEGORIES or scene.endswith(_INDOOR_SUFFIXES)


def list_samples(
    root: str | os.PathLike,
    *,
    subsets: Sequence[str] = SUBSETS,
    categories: Iterable[str] | None = None,
    all_scenes: bool = False,
) -> list[AdeSample]:
    """Images of ``subsets`` whose scene is indoor (or every scene with ``all_scenes``).

    Every selected image must have its annotation; a missing one is an error naming it.
    Samples come sorted by subset then name (deterministic).
    """
    release = find_release_root(root)
    scenes = read_scene_categories(release)
    wanted = None if categories is None else frozenset(categories)
    samples: list[AdeSample] = []
    for subset in subsets:
        if subset not in SUBSETS:
            raise HarnessError(f"unknown ADE20k subset {subset!r}; valid: {', '.join(SUBSETS)}")
        image_dir = release / "images" / subset
        if not image_dir.is_dir():
            raise HarnessError(f"missing ADE20k image folder for subset {subset}", image_dir)
        prefix = _NAME_PREFIX[subset]
        for image_path in sorted(image_dir.glob(f"{prefix}*.jpg")):
            name = image_path.stem
            scene = scenes.get(name)
            if scene is None:
                raise HarnessError(f"{name} has no line in {SCENE_FILE}", image_path)
            if not all_scenes and not is_indoor(scene, wanted):
                continue
            annotation = release / "annotations" / subset / f"{name}.png"
            if not annotation.is_file():
                raise HarnessError(f"missing annotation for {name}", annotation)
            samples.append(AdeSample(name, subset, scene, image_path, annotation))
    logger.info(
        "ADE20k %s: %d %s images in %s",
        release, len(samples), "" if all_scenes else "indoor", "/".join(subsets),
    )
    return samples


def read_annotation(path: str | os.PathLike) -> np.ndarray:
    """The ``(H, W)`` uint8 class-index map of an annotation PNG."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"mode {image.mode} is not a single-channel class-index image")
            labels = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"unreadable ADE20k annotation ({exc})", path) from None
    if labels.ndim != 2:
        raise HarnessError(f"annotation has shape {labels.shape}, expected (H, W)", path)
    if labels.max(initial=0) > NUM_CLASSES:
        raise HarnessError(
            f"annotation holds class {int(labels.max())} > {NUM_CLASSES}", path
        )
    return labels.astype(np.uint8, copy=False)


def window_mask(labels: np.ndarray, window_class: int = WINDOW_CLASS) -> np.ndarray:
    """Boolean ``(H, W)`` mask, True where the class index is the window class."""
    assert labels.ndim == 2, labels.shape
    return labels == window_class


def read_window_mask(
    annotation_path: str | os.PathLike, window_class: int = WINDOW_CLASS
) -> np.ndarray:
    """Window mask of one annotation PNG."""
    return window_mask(read_annotation(annotation_path), window_class)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB image as ``(H, W, 3)`` uint8; a missing or broken file is a clear error."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise HarnessError(f"unreadable image ({exc})", path) from None
