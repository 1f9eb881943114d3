"""Dataset folders in the VPR-datasets-downloader layout, read as splits.

The layout (gmberton/VPR-datasets-downloader, used by VPR-methods-evaluation and most VPR
papers since 2022)::

    <dataset>/images/test/database/@east@north@zone@letter@lat@lon@pano@tile@heading@...@.jpg
    <dataset>/images/test/queries/...

Only the first two ``@``-fields matter for evaluation: the UTM easting and northing in metres
(the downloader's README: "the only required values for VPR are UTM coordinates"). Nordland
and AmsterTime use dummy coordinates in the same fields (``@0@<north>@@...``), which work the
same way. Images are every ``.jpg``/``.jpeg``/``.png`` below the sub-folder, recursively (as
VPR-methods-evaluation lists them); names are paths relative to the sub-folder, in sorted
order like every split.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.splits import DEFAULT_RECALL_NS, Split, register_split

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DATABASE_FOLDER = "database"
QUERIES_FOLDER = "queries"
DEFAULT_RADIUS_M = 25.0
EXAMPLE_NAME = "@0584213.34@4477114.53@17@T@40.44137@-80.00412@pano@00@000@000@@@@@.jpg"
#: ``<folder>_images_paths.txt`` beside an image folder lists its images (paths relative to
#: the folder, one a line): VPR-methods-evaluation and CosPlace read it instead of globbing
#: millions of files (SF-XL ships ``processed/test/database_images_paths.txt``).
PATHS_FILE_SUFFIX = "_images_paths.txt"


def read_paths_file(folder: str | os.PathLike) -> list[str] | None:
    """The image list of ``<folder>_images_paths.txt`` in its own order, or None without one.

    VPR-methods-evaluation keeps this order (it sorts only what it globs), so its descriptor
    rows follow the file when the file exists.
    """
    path = Path(str(Path(folder)) + PATHS_FILE_SUFFIX)
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"not a readable image list ({exc})", path) from None
    names = [name for name in names if name]
    if not names or not (Path(folder) / names[0]).is_file():
        first = names[0] if names else "(empty)"
        raise HarnessError(f"lists {first!r}, which is not an image in {folder}", path)
    return names


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image paths below ``folder`` (recursive), relative to it with ``/``, sorted.

    ``<folder>_images_paths.txt`` is read instead of walking the folder when it exists.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HarnessError("image folder not found (or not a directory)", folder)
    listed = read_paths_file(folder)
    if listed is not None:
        logger.info("%s: %d images listed in %s%s", folder, len(listed), folder.name,
                    PATHS_FILE_SUFFIX)
        return sorted(listed)
    names = []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        relative = os.path.relpath(directory, folder)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        names.extend(prefix + f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    names.sort()
    return names


def utm_from_name(name: str) -> tuple[float, float]:
    """(easting, northing) from a downloader-style file name; ValueError says why not."""
    base = name.rsplit("/", 1)[-1]
    fields = base.split("@")
    if len(fields) < 4 or fields[0] != "":
        raise ValueError("it does not start with @east@north@")
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        raise ValueError(
            f"easting {fields[1]!r} / northing {fields[2]!r} are not numbers") from None
    if not (math.isfinite(east) and math.isfinite(north)):
        raise ValueError("easting or northing is not finite")
    return east, north


def utm_from_names(names: Sequence[str], folder: Path) -> np.ndarray:
    """``(n, 2)`` float64 positions of ``names``; the first name that does not parse is an
    error naming its file."""
    utm = np.empty((len(names), 2), dtype=np.float64)
    bad = []
    for row, name in enumerate(names):
        try:
            utm[row] = utm_from_name(name)
        except ValueError as exc:
            bad.append((name, str(exc)))
    if bad:
        name, why = bad[0]
        more = f" ({len(bad) - 1} more names do not parse either)" if len(bad) > 1 else ""
        raise HarnessError(
            f"image name {name!r} is not a VPR-datasets-downloader name: {why} (expected "
            f"@<utm east>@<utm north>@<zone>@<letter>@...@<ext>, e.g. {EXAMPLE_NAME}){more}",
            folder / name,
        )
    return utm


def resolve_subfolders(
    folder: str | os.PathLike | None,
    database_folder: str | os.PathLike | None = None,
    queries_folder: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """The database and queries folders: ``folder/database`` and ``folder/queries`` unless
    given explicitly (SF-XL's queries are ``queries_v1``)."""
    if folder is None and (database_folder is None or queries_folder is None):
        raise HarnessError("give a dataset folder, or both the database and the queries folder")
    base = None if folder is None else Path(folder).expanduser()
    if base is not None and not base.is_dir():
        raise HarnessError("dataset folder not found (or not a directory)", base)
    database = Path(database_folder).expanduser() if database_folder else base / DATABASE_FOLDER
    queries = Path(queries_folder).expanduser() if queries_folder else base / QUERIES_FOLDER
    for label, path in (("database", database), ("queries", queries)):
        if not path.is_dir():
            hint = ""
            if base is not None and (base / "images" / "test").is_dir():
                hint = f" (the test set is in {base / 'images' / 'test'}: pass that folder)"
            raise HarnessError(
                f"no {label} folder: a downloader-layout folder holds database/ and "
                f"queries/{hint}", path)
    return database, queries


def split_from_folder(
    name: str,
    folder: str | os.PathLike | None = None,
    *,
    database_folder: str | os.PathLike | None = None,
    queries_folder: str | os.PathLike | None = None,
    radius_m: float = DEFAULT_RADIUS_M,
    recall_ns: Sequence[int] | None = None,
    spatial_nms: bool = False,
    no_positive: str = "miss",
    description: str = "",
    source: Sequence[str] | None = None,
):
    """A :class:`harness.splits.Split` from a downloader-layout folder (not registered).

    Args:
        name: the split name.
        folder: the folder holding ``database/`` and ``queries/`` (``images/test``).
        database_folder, queries_folder: explicit sub-folders instead.
        radius_m: positive radius in metres (25, as VPR-methods-evaluation).
    """
    database_dir, queries_dir = resolve_subfolders(folder, database_folder, queries_folder)
    parts = {}
    for label, path in (("database", database_dir), ("queries", queries_dir)):
        names = list_images(path)
        if not names:
            raise HarnessError(f"no {label} images (.jpg, .jpeg, .png) found", path)
        parts[label] = (tuple(names), utm_from_names(names, path))
        logger.info("%s: %d %s images", path, len(names), label)
    return Split(
        name=name,
        query_names=parts["queries"][0],
        database_names=parts["database"][0],
        query_utm=parts["queries"][1],
        database_utm=parts["database"][1],
        radius_m=float(radius_m),
        recall_ns=tuple(recall_ns or DEFAULT_RECALL_NS),
        spatial_nms=bool(spatial_nms),
        no_positive=no_positive,
        query_root=str(queries_dir.resolve()),
        database_root=str(database_dir.resolve()),
        description=description or f"{name}: downloader-layout folder, {radius_m:g} m",
        source=tuple(source) if source is not None else (
            f"{database_dir.resolve()}:downloader", f"{queries_dir.resolve()}:downloader"),
    )


def import_folder_split(name: str, folder=None, *, data_root=None, **options) -> Path:
    """Build a split from a downloader-layout folder and register it; returns its path."""
    return register_split(split_from_folder(name, folder, **options), data_root)
