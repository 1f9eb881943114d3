"""Descriptors written by other tools, converted to the harness feature file.

- **VPR-methods-evaluation** (``--save_descriptors``): ``queries_descriptors.npy`` (Q, D) and
  ``database_descriptors.npy`` (N, D), rows in the sorted order of the image paths, which is
  the split's order for a split built from the same downloader-layout folder (or in the order
  of ``<folder>_images_paths.txt`` when that file exists: VME reads it unsorted). The arrays are
  read with ``np.load(allow_pickle=False)`` (memory-mapped) and must have exactly the split's
  row counts: a row count is the only check that rows and images belong together.
- **hloc** global descriptors (``extract_features.py`` with a global model): one HDF5 group
  per image, named by the image path relative to hloc's image folder (nested groups when the
  path has folders), holding ``global_descriptor`` (D,) float32 or float16. Names are matched
  to the split by their path or a trailing part of it; a leading ``queries/``/``query/`` or
  ``database/`` folder says which part an image belongs to when its name is in both.

Both produce the harness feature file (:mod:`harness.features`) with the split's names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from harness.errors import HarnessError
from harness.features import FeatureWriter, check_heaps, open_hdf5, reading_errors
from harness.sources.downloader import read_paths_file, utm_from_name

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 16384
_QUERY_FOLDERS = {"queries", "query", "queries_v1"}
_DATABASE_FOLDERS = {"database", "db"}


def load_npy(path: str | os.PathLike, rows: int, what: str) -> np.ndarray:
    """A (rows, D) float array from a ``.npy`` file, memory-mapped, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{what} file not found", path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise HarnessError(f"not a readable .npy array ({exc})", path) from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind != "f":
        shape = getattr(array, "shape", None)
        dtype = getattr(array, "dtype", None)
        raise HarnessError(f"{what} must be a 2-D float array, is {dtype} {shape}", path)
    if array.shape[0] != rows:
        raise HarnessError(
            f"{what} has {array.shape[0]} rows, the split {rows}: the rows must be the split's "
            "images in sorted order (VPR-methods-evaluation --save_descriptors on the same "
            "folder)", path)
    return array


def _write(out, split, method: str, parts: dict, attrs: dict) -> Path:
    dims = {array.shape[1] for _, array in parts.values()}
    if len(dims) != 1:
        raise HarnessError(f"query and database descriptors differ in dimension ({sorted(dims)})")
    dtypes = {array.dtype.name for _, array in parts.values()}
    dtype = "float16" if dtypes == {"float16"} else "float32"
    with FeatureWriter(out, split=split.name, method=method,
                       parts={p: names for p, (names, _) in parts.items()},
                       dim=dims.pop(), dtype=dtype, attrs=attrs) as writer:
        for part, (_, array) in parts.items():
            for start in range(0, array.shape[0], _BLOCK_ROWS):
                block = np.asarray(array[start:start + _BLOCK_ROWS])
                if not np.all(np.isfinite(block)):
                    raise HarnessError(f"{part} descriptors hold NaN or Inf (rows from {start})")
                writer.write(part, start, block.astype(dtype, copy=False))
    return Path(out)


def check_downloader_split(split) -> None:
    """Refuse a split whose rows are not the sorted downloader file names.

    VPR-methods-evaluation's rows follow its sorted file names; they are the split's rows only
    when the split was built from the same downloader-layout folder (a split from NetVLAD
    ``.mat`` files names the same images differently and orders them differently).
    """
    for part, names, utm in (("query", split.query_names, split.query_utm),
                             ("database", split.database_names, split.database_utm)):
        for row, name in enumerate(names):
            try:
                position = utm_from_name(name)
            except ValueError:
                position = None
            if position is None or np.any(np.abs(np.asarray(position) - utm[row]) > 1e-6):
                raise HarnessError(
                    f"split {split.name} was not built from a downloader-layout folder ({part} "
                    f"image {name!r}), so VPR-methods-evaluation's rows cannot be matched to it; "
                    "register the split from the folder VPR-methods-evaluation read "
                    "(harness splits import --folder, or splits prepare)")


def _vme_order(root: str, names) -> tuple[str, ...]:
    """The image order of VPR-methods-evaluation's rows: the sorted names, or the order of
    ``<root>_images_paths.txt`` when that file exists (VME reads it as it is)."""
    listed = read_paths_file(root) if root else None
    if listed is None:
        return tuple(names)
    if sorted(listed) != list(names):
        raise HarnessError("lists other images than the split (register the split again from "
                           "this folder)", root + "_images_paths.txt")
    logger.info("%s_images_paths.txt: descriptor rows follow its order", root)
    return tuple(listed)


def import_vme_descriptors(queries_npy, database_npy, split, out, *, method: str) -> Path:
    """Write the feature file ``out`` from VPR-methods-evaluation's two ``.npy`` files."""
    check_downloader_split(split)
    queries = load_npy(queries_npy, split.num_queries, "queries descriptors")
    database = load_npy(database_npy, split.num_database, "database descriptors")
    parts = {"query": (_vme_order(split.query_root, split.query_names), queries),
             "database": (_vme_order(split.database_root, split.database_names), database)}
    attrs = {"source": "vpr-methods-evaluation", "source_files": [str(queries_npy),
                                                                  str(database_npy)]}
    return _write(out, split, method, parts, attrs)


def _hloc_entries(handle, path) -> dict[str, object]:
    """Image name -> its ``global_descriptor`` dataset, for every image in an hloc file."""
    found: dict[str, object] = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and name.rsplit("/", 1)[-1] == "global_descriptor":
            found[name.rsplit("/", 1)[0] if "/" in name else ""] = item

    handle.visititems(visit)
    if not found:
        raise HarnessError("no /<image>/global_descriptor datasets: not an hloc global-"
                           "descriptor file", path)
    return found


def _match(name: str, split) -> tuple[str, int] | None:
    """(part, split row) of an hloc image name, trying ever shorter trailing paths."""
    components = name.split("/")
    for start in range(len(components)):
        candidate = "/".join(components[start:])
        in_query = split.query_index.get(candidate)
        in_database = split.database_index.get(candidate)
        if in_query is None and in_database is None:
            continue
        hint = components[start - 1] if start else ""
        if in_query is not None and (in_database is None or hint in _QUERY_FOLDERS):
            return "query", in_query
        if in_database is not None and (in_query is None or hint in _DATABASE_FOLDERS):
            return "database", in_database
        raise HarnessError(f"image {name!r} is both a query and a database image of split "
                           f"{split.name}; put hloc's images under queries/ and database/")
    return None


def import_hloc_descriptors(h5_path, split, out, *, method: str) -> Path:
    """Write the feature file ``out`` from an hloc global-descriptor HDF5 file."""
    path = Path(h5_path)
    rows = {"query": {}, "database": {}}
    with open_hdf5(path) as handle, reading_errors(path, "hloc descriptors"):
        check_heaps(handle, path)
        entries = _hloc_entries(handle, path)
        unmatched = 0
        dim = None
        for name, dataset in entries.items():
            try:
                where = _match(name, split)
            except HarnessError as exc:
                raise HarnessError(exc.message, path) from None
            if where is None:
                unmatched += 1
                continue
            if dataset.dtype.kind != "f" or dataset.size == 0 or dataset.ndim > 2:
                raise HarnessError(f"{name}/global_descriptor is {dataset.dtype} "
                                   f"{dataset.shape}, not a float vector", path)
            vector = np.asarray(dataset[()]).reshape(-1)
            dim = dim or vector.size
            if vector.size != dim:
                raise HarnessError(f"{name}/global_descriptor has {vector.size} values, "
                                   f"others {dim}", path)
            rows[where[0]][where[1]] = vector
    if unmatched:
        logger.info("%s: %d images are not in split %s (ignored)", path, unmatched, split.name)
    parts = {}
    for part, names in (("query", split.query_names), ("database", split.database_names)):
        missing = [n for i, n in enumerate(names) if i not in rows[part]]
        if missing:
            raise HarnessError(f"{len(missing)} of {len(names)} split {part} images have no "
                               f"global descriptor (first: {missing[0]!r})", path)
        stacked = np.stack([rows[part][i] for i in range(len(names))]) if names else \
            np.zeros((0, dim or 1), np.float32)
        parts[part] = (names, stacked)
    attrs = {"source": "hloc", "source_files": [str(path)]}
    return _write(out, split, method, parts, attrs)
