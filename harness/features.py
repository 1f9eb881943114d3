"""The feature-file contract between methods (which write) and the harness (which reads).

Layout (HDF5, one file, or several database shards)::

    /query/descriptors      (Q, D) float32 or float16, contiguous
    /query/names            (Q,)   UTF-8 strings, image paths relative to the split's root
    /database/descriptors   (N, D)
    /database/names         (N,)
    attrs: format_version=1, split=<split name>, method=<method name>, [shard="i/n"], ...

Rows may come in any order: names map them to the split. A database may be spread over
several shard files that each hold only ``/database/...``. Datasets are written contiguous
(no chunking: h5py's automatic chunking halves read speed) and every file is written to a
temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np

from harness.errors import HarnessError
from harness.hdf5 import (
    ATTR_MAX_BYTES,
    HDF5_ERRORS,
    check_global_heaps,
    dataset_extents,
    read_plain_attribute,
)
from harness.hdf5_policy import check_hdf5_contents
from harness.io import atomic_path, require_free_space, require_regular_file
from harness.versions import is_version

logger = logging.getLogger(__name__)

FEATURE_FORMAT_VERSION = 1
PARTS = ("query", "database")
DESCRIPTOR_DTYPES = ("float32", "float16")
_ATTR_MAX_CHARS = 1 << 16
#: Wider descriptors are refused (NetVLAD without PCA, the widest in use, has 32768).
MAX_DESCRIPTOR_DIM = 1 << 20


@dataclass(frozen=True)
class PartInfo:
    """Shape and dtype of one part (``query`` or ``database``) of a feature file."""

    count: int
    dim: int
    dtype: str


@dataclass(frozen=True)
class FeatureFileInfo:
    """What a feature file declares, read without loading its descriptors."""

    path: Path
    format_version: int
    split: str
    method: str
    parts: Mapping[str, PartInfo]
    attrs: Mapping[str, object] = field(default_factory=dict)


def _string_dtype():
    return h5py.string_dtype("utf-8")


def _check_rows(part: str, names: Sequence[str], descriptors: np.ndarray) -> np.ndarray:
    descriptors = np.asarray(descriptors)
    if descriptors.ndim != 2 or descriptors.shape[0] != len(names):
        raise ValueError(
            f"{part}: descriptors shape {descriptors.shape} does not match {len(names)} names"
        )
    if descriptors.dtype.name not in DESCRIPTOR_DTYPES:
        descriptors = descriptors.astype(np.float32)
    return np.ascontiguousarray(descriptors)


def _encode_attr(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def write_features(
    path: str | os.PathLike,
    *,
    split: str,
    method: str,
    query: tuple[Sequence[str], np.ndarray] | None = None,
    database: tuple[Sequence[str], np.ndarray] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write a complete feature file atomically; ``query``/``database`` are (names, descriptors)."""
    parts = {p: v for p, v in (("query", query), ("database", database)) if v is not None}
    if not parts:
        raise ValueError("write_features needs a query or a database part")
    dims = set()
    with FeatureWriter(
        path,
        split=split,
        method=method,
        parts={p: list(names) for p, (names, _) in parts.items()},
        dim=None,
        attrs=attrs,
    ) as writer:
        for part, (names, descriptors) in parts.items():
            descriptors = _check_rows(part, names, descriptors)
            dims.add(descriptors.shape[1])
            writer.write(part, 0, descriptors)
    return Path(path)


class FeatureWriter:
    """Incremental writer: datasets are sized up front, rows arrive in batches.

    Used as a context manager; the file appears under its final name only after a clean
    exit with every row written. ``dim``/``dtype`` may be left ``None`` and are then taken
    from the first batch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split: str,
        method: str,
        parts: Mapping[str, Sequence[str]],
        dim: int | None,
        dtype: str | None = None,
        attrs: Mapping[str, object] | None = None,
    ):
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown feature parts {sorted(unknown)}; valid: {PARTS}")
        self.path = Path(path)
        self.split = split
        self.method = method
        self.names = {p: list(n) for p, n in parts.items()}
        self.dim = dim
        self.dtype = dtype
        self.attrs = dict(attrs or {})
        self._written = {p: np.zeros(len(n), dtype=bool) for p, n in self.names.items()}
        self._stack = contextlib.ExitStack()
        self._handle = None

    def __enter__(self) -> "FeatureWriter":
        try:
            return self._open()
        except BaseException:
            # Unwind what was entered (the temporary file goes; a full disk becomes one line).
            if not self._stack.__exit__(*sys.exc_info()):
                raise
            raise

    def _open(self) -> "FeatureWriter":
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._handle = self._stack.enter_context(h5py.File(self._tmp, "w", libver="latest"))
        handle = self._handle
        handle.attrs["format_version"] = FEATURE_FORMAT_VERSION
        handle.attrs["split"] = self.split
        handle.attrs["method"] = self.method
        for key, value in self.attrs.items():
            handle.attrs[key] = _encode_attr(value)
        for part, names in self.names.items():
            group = handle.create_group(part)
            group.create_dataset("names", data=np.array(names, dtype=object), dtype=_string_dtype())
        return self

    def _ensure_datasets(self, descriptors: np.ndarray) -> None:
        if self.dim is None:
            self.dim = int(descriptors.shape[1])
        if self.dtype is None:
            self.dtype = (
                descriptors.dtype.name if descriptors.dtype.name in DESCRIPTOR_DTYPES else "float32"
            )
        if self.dtype not in DESCRIPTOR_DTYPES:
            raise ValueError(
                f"descriptor dtype must be one of {DESCRIPTOR_DTYPES}, got {self.dtype}"
            )
        if not any("descriptors" in self._handle[part] for part in self.names):
            rows = sum(len(names) for names in self.names.values())
            require_free_space(self.path, rows * self.dim * np.dtype(self.dtype).itemsize)
        for part, names in self.names.items():
            group = self._handle[part]
            if "descriptors" not in group:
                group.create_dataset("descriptors", shape=(len(names), self.dim), dtype=self.dtype)

    def write(self, part: str, start_row: int, descriptors: np.ndarray) -> None:
        """Write ``descriptors`` into rows ``start_row:start_row+len`` of ``part``."""
        descriptors = np.asarray(descriptors)
        if descriptors.ndim != 2:
            raise ValueError(f"descriptors must be 2-D, got shape {descriptors.shape}")
        self._ensure_datasets(descriptors)
        if descriptors.shape[1] != self.dim:
            raise ValueError(f"descriptor dim {descriptors.shape[1]} != {self.dim}")
        stop = start_row + descriptors.shape[0]
        if start_row < 0 or stop > len(self.names[part]):
            raise ValueError(f"rows {start_row}:{stop} out of range for {part}")
        self._handle[part]["descriptors"][start_row:stop] = descriptors.astype(
            self.dtype, copy=False
        )
        self._written[part][start_row:stop] = True

    def set_attrs(self, attrs: Mapping[str, object]) -> None:
        """Add root attributes known only once the rows are written (e.g. timings)."""
        for key, value in attrs.items():
            self._handle.attrs[key] = _encode_attr(value)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            missing = {p: int((~w).sum()) for p, w in self._written.items() if not w.all()}
            if missing:
                exc = ValueError(f"{self.path}: rows never written: {missing}")
                self._stack.__exit__(type(exc), exc, None)
                raise exc
        return self._stack.__exit__(exc_type, exc, tb)


@contextlib.contextmanager
def reading_errors(path, what: str = "") -> Iterator[None]:
    """Turn the exceptions a damaged HDF5 file raises inside the block into a HarnessError."""
    try:
        yield
    except HarnessError:
        raise
    except HDF5_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            raise MemoryError(str(exc)) from None  # not the file's fault: the caller's limit
        detail = " ".join(str(exc).split()) or type(exc).__name__
        where = f" reading {what}" if what else ""
        raise HarnessError(f"corrupt HDF5 file: error{where} ({detail})", path) from None


def check_heaps(handle, path) -> None:
    """Refuse a feature file with malformed global heaps (:func:`harness.hdf5.check_global_heaps`),
    skipping the descriptor values."""
    try:
        skip = dataset_extents(handle, [f"{part}/descriptors" for part in PARTS])
    except HDF5_ERRORS:
        skip = []
    check_global_heaps(path, int(handle.userblock_size), skip)


def open_hdf5(path: str | os.PathLike):
    """Open a feature file read-only; a missing, directory or non-HDF5 path is a HarnessError."""
    path = Path(path)
    if path.suffix.lower() in (".npy", ".npz") and path.is_file():
        raise HarnessError(
            "a numpy array is not a feature file (it has no image names); convert "
            "VPR-methods-evaluation descriptors with `harness features import --split SPLIT "
            "--vme-queries queries_descriptors.npy --vme-database database_descriptors.npy "
            "--out features.h5 --method-name NAME`", path)
    path = require_regular_file(path, "feature file")
    try:
        handle = h5py.File(path, "r")
    except HDF5_ERRORS as exc:
        detail = " ".join(str(exc).split())
        raise HarnessError(f"not a readable HDF5 file ({detail})", path) from None
    try:
        with reading_errors(path, "its links"):
            check_hdf5_contents(handle, path)
    except BaseException:
        handle.close()
        raise
    return handle


class OpenFiles:
    """Feature files opened once and shared: validation, reading the queries and streaming
    the database all use the same handle per file (``with OpenFiles() as files``).

    A file is opened on the first :meth:`get`, so a bad file raises where it did before.
    """

    def __init__(self):
        self._handles: dict[Path, h5py.File] = {}

    def get(self, path: str | os.PathLike) -> h5py.File:
        key = Path(path).resolve()
        if key not in self._handles:
            self._handles[key] = open_hdf5(path)
        return self._handles[key]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> "OpenFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _opened(path, files: OpenFiles | None) -> Iterator[h5py.File]:
    """The handle of ``path`` from ``files`` (left open), or a fresh one (closed after)."""
    if files is not None:
        yield files.get(path)
        return
    with open_hdf5(path) as handle:
        yield handle


def _dataset(handle, part: str, name: str, path):
    """``/part/name`` as an h5py Dataset; a missing or odd object is a HarnessError."""
    group = handle.get(part)
    if group is None:
        raise HarnessError(f"/{part} is missing", path)
    if not isinstance(group, h5py.Group):
        raise HarnessError(f"/{part} must be a group", path)
    dataset = group.get(name)
    if dataset is None:
        raise HarnessError(f"/{part}/{name} is missing", path)
    if not isinstance(dataset, h5py.Dataset):
        raise HarnessError(f"/{part}/{name} must be a dataset, is a {type(dataset).__name__}", path)
    return dataset


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_attribute(handle, key: str, path):
    """One root attribute, refused before it is read when it is larger than 64 KiB."""
    _, value = read_plain_attribute(handle, key, path)
    value = _decode(value)
    if isinstance(value, str) and len(value) > _ATTR_MAX_CHARS:
        raise HarnessError(f"attribute {key!r} is larger than {_ATTR_MAX_CHARS} characters", path)
    if isinstance(value, np.ndarray) and value.nbytes > ATTR_MAX_BYTES:
        raise HarnessError(f"attribute {key!r} is larger than {ATTR_MAX_BYTES} bytes", path)
    return value


def read_info(path: str | os.PathLike, files: OpenFiles | None = None) -> FeatureFileInfo:
    """Read attributes and part shapes; structural problems raise :class:`HarnessError`.

    ``files``: share the open handle (:class:`OpenFiles`).
    """
    path = Path(path)
    with _opened(path, files) as handle, reading_errors(path, "its structure"):
        check_heaps(handle, path)
        attrs = {}
        for key in handle.attrs:
            attrs[key] = _read_attribute(handle, key, path)
        parts = {}
        for part in PARTS:
            if part not in handle:
                continue
            if not isinstance(handle[part], h5py.Group):
                raise HarnessError(f"/{part} must be a group", path)
            descriptors = _dataset(handle, part, "descriptors", path)
            _dataset(handle, part, "names", path)
            _check_descriptor_storage(descriptors, part, path)
            parts[part] = PartInfo(
                count=int(descriptors.shape[0]),
                dim=int(descriptors.shape[1]),
                dtype=str(descriptors.dtype),
            )
        if not parts:
            raise HarnessError(
                "holds neither /query nor /database (an hloc global-descriptor file? convert "
                "it with `harness features import --hloc FILE --split SPLIT --out ...`)", path)
    version = attrs.pop("format_version", None)
    if version is None:
        raise HarnessError("root attribute format_version is missing or invalid (None)", path)
    if not is_version(version, FEATURE_FORMAT_VERSION):
        integer = isinstance(version, int) and not isinstance(version, bool)
        raise HarnessError(
            f"format_version {version!r} is "
            + ("not supported" if integer else f"a {type(version).__name__}, not an integer")
            + f" (this harness reads {FEATURE_FORMAT_VERSION})",
            path,
        )
    return FeatureFileInfo(
        path=path,
        format_version=version,
        split=str(attrs.pop("split", "")),
        method=str(attrs.pop("method", "")),
        parts=parts,
        attrs=attrs,
    )


def read_names(path: str | os.PathLike, part: str, files: OpenFiles | None = None,
               count: int | None = None) -> list[str]:
    """Image names of ``part``, decoded as UTF-8 (``files``: share the open handle).

    ``count``: the number of names expected (the part's descriptor rows); a names dataset of
    another length is refused from its shape, before anything is read or allocated.
    """
    with _opened(path, files) as handle, reading_errors(path, f"/{part}/names"):
        check_heaps(handle, path)
        dataset = _dataset(handle, part, "names", path)
        shape = dataset.shape or ()
        if count is not None and shape and shape[0] != count:
            raise HarnessError(
                f"/{part}/names has {shape[0]} entries but /{part}/descriptors has {count} rows",
                path,
            )
        is_text = dataset.id.get_type().get_class() == h5py.h5t.STRING
        one_dimensional = len(dataset.shape or ()) == 1
        if not is_text or dataset.dtype.kind not in ("O", "S", "U") or not one_dimensional:
            raise HarnessError(
                f"/{part}/names must be a 1-D string dataset, has dtype {dataset.dtype} "
                f"and shape {dataset.shape}",
                path,
            )
        try:
            return [str(n) for n in dataset.asstr()[()]]
        except (UnicodeDecodeError, TypeError, ValueError) as exc:
            raise HarnessError(f"/{part}/names are not UTF-8 strings ({exc})", path) from None


def _check_descriptor_storage(dataset, part: str, path) -> None:
    """A 2-D dataset of sane width whose bytes are all in the file (unfiltered layouts).

    HDF5 happily declares a (10^9, 4096) dataset that stores nothing (reads give the fill
    value): such a file is truncated or was never completely written, and scanning it would
    take hours; it is refused here, from its metadata.
    """
    shape = dataset.shape or ()
    if len(shape) != 2:
        raise HarnessError(f"/{part}/descriptors must be 2-D, has shape {shape}", path)
    if not 0 <= shape[1] <= MAX_DESCRIPTOR_DIM:
        raise HarnessError(
            f"/{part}/descriptors has dimension {shape[1]} (at most {MAX_DESCRIPTOR_DIM})", path
        )
    if dataset.dtype.kind not in "fiu" or dataset.id.get_create_plist().get_nfilters():
        return  # other dtypes are refused by validation; filtered data is stored compressed
    needed = shape[0] * shape[1] * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if stored < needed:
        raise HarnessError(
            f"/{part}/descriptors holds {shape[0]} x {shape[1]} values but only {stored} of "
            f"their {needed} bytes are stored (truncated, or rows never written)",
            path,
        )


def _descriptors(handle, part: str, path):
    dataset = _dataset(handle, part, "descriptors", path)
    _check_descriptor_storage(dataset, part, path)
    if dataset.dtype.kind not in "fiu":
        raise HarnessError(f"/{part}/descriptors has dtype {dataset.dtype}, not numbers", path)
    return dataset


def read_descriptors(
    path: str | os.PathLike, part: str, start: int = 0, stop: int | None = None,
    files: OpenFiles | None = None,
) -> np.ndarray:
    """Rows ``start:stop`` of ``/part/descriptors`` as float32 (fp16 is widened)."""
    with _opened(path, files) as handle, reading_errors(path, f"/{part}/descriptors"):
        dataset = _descriptors(handle, part, path)
        stop = dataset.shape[0] if stop is None else stop
        block = dataset[start:stop]
    return np.ascontiguousarray(block, dtype=np.float32)


def iter_descriptor_blocks(
    path: str | os.PathLike, part: str, block_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, descriptors)`` blocks of at most ``block_rows`` rows, as stored."""
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    with open_hdf5(path) as handle:
        with reading_errors(path, f"/{part}/descriptors"):
            dataset = _descriptors(handle, part, path)
            total = dataset.shape[0]
        for start in range(0, total, block_rows):
            stop = min(total, start + block_rows)
            with reading_errors(path, f"/{part}/descriptors rows {start}:{stop}"):
                block = np.empty((stop - start, dataset.shape[1]), dtype=dataset.dtype)
                dataset.read_direct(block, np.s_[start:stop])
            yield start, block


def expand_feature_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, directories expanded to their ``*.h5``/``*.hdf5`` files (sorted)."""
    result: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.suffix in (".h5", ".hdf5") and p.is_file()
            )
            if not found:
                raise HarnessError("directory holds no .h5 feature files", item)
            result.extend(found)
        else:
            # Checked here, before any reader sees it: a FIFO or device given as a feature
            # file is refused at once instead of blocking (or streaming forever) in open().
            result.append(require_regular_file(item, "feature file"))
    return result
