"""Writing ``dbStruct`` ``.mat`` files (v5 through scipy, v7.3 as MATLAB lays out HDF5).

Used by the synthetic city and the tests; real datasets ship their own files.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import scipy.io

from harness.io import atomic_path
from harness.matfile.layout import (
    DBSTRUCT_VARIABLE,
    MAT_VERSIONS,
    STANDARD_FIELDS,
    TIMESTAMP_FIELDS,
)

_NON_TRIVIAL_POS_DIST_SQ_THR = 100.0
_MAT73_HEADER_BYTES = 512
_V5_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: iovpr-harness"


def write_dbstruct(
    path: str | os.PathLike,
    *,
    which_set: str,
    db_images: Sequence[str],
    utm_db: np.ndarray,
    q_images: Sequence[str],
    utm_q: np.ndarray,
    pos_dist_thr: float = 25.0,
    version: str = "v5",
    db_timestamps: np.ndarray | None = None,
    q_timestamps: np.ndarray | None = None,
) -> Path:
    """Write a NetVLAD ``dbStruct`` ``.mat`` file atomically.

    Args:
        path: destination ``.mat`` file.
        which_set: ``"train"``, ``"val"`` or ``"test"`` (stored as ``whichSet``).
        db_images, q_images: image names relative to the image/query folders.
        utm_db, utm_q: ``(n, 2)`` UTM easting/northing (stored transposed, 2 x n, as NetVLAD).
        pos_dist_thr: positive radius in metres (``posDistThr``; ``posDistSqThr`` is its square).
        version: ``"v5"`` (scipy.io) or ``"v7.3"`` (HDF5 laid out as MATLAB ``-v7.3`` does).
        db_timestamps, q_timestamps: given together, write the timestamp (Tokyo) variant.

    Returns:
        ``path``. The same arguments always give the same bytes.
    """
    if version not in MAT_VERSIONS:
        raise ValueError(f"version must be one of {MAT_VERSIONS}, got {version!r}")
    if (db_timestamps is None) != (q_timestamps is None):
        raise ValueError("db_timestamps and q_timestamps must be given together")
    db_images, q_images = list(db_images), list(q_images)
    utm_db = _as_utm(utm_db, len(db_images), "utm_db")
    utm_q = _as_utm(utm_q, len(q_images), "utm_q")
    radius = float(pos_dist_thr)
    values: dict[str, object] = {
        "whichSet": str(which_set),
        "dbImageFns": db_images,
        "utmDb": utm_db.T,
        "qImageFns": q_images,
        "utmQ": utm_q.T,
        "numImages": float(len(db_images)),
        "numQueries": float(len(q_images)),
        "posDistThr": radius,
        "posDistSqThr": radius * radius,
        "nonTrivPosDistSqThr": _NON_TRIVIAL_POS_DIST_SQ_THR,
    }
    fields = STANDARD_FIELDS
    if db_timestamps is not None:
        fields = TIMESTAMP_FIELDS
        values["dbTimeStamp"] = _as_row(db_timestamps, len(db_images), "db_timestamps")
        values["qTimeStamp"] = _as_row(q_timestamps, len(q_images), "q_timestamps")
    ordered = [(name, values[name]) for name in fields]
    path = Path(path)
    with atomic_path(path) as tmp:
        if version == "v5":
            _write_v5(tmp, ordered)
        else:
            _write_v73(tmp, ordered)
    return path


def _as_utm(utm, count: int, label: str) -> np.ndarray:
    utm = np.asarray(utm, dtype=np.float64)
    if count == 0 and utm.size == 0:
        return np.zeros((0, 2))
    if utm.shape != (count, 2):
        raise ValueError(f"{label} must have shape ({count}, 2), got {utm.shape}")
    return utm


def _as_row(values, count: int, label: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape != (count,):
        raise ValueError(f"{label} must have {count} values, got {values.shape}")
    return values.reshape(1, count)


def _write_v5(path: Path, ordered: list[tuple[str, object]]) -> None:
    # A structured array (not a dict) so that the field order is exactly NetVLAD's.
    record = np.zeros((1, 1), dtype=[(name, object) for name, _ in ordered])
    for name, value in ordered:
        if isinstance(value, list):  # cell array of strings, N x 1 as NetVLAD writes it
            cell = np.empty((len(value), 1), dtype=object)
            cell[:, 0] = value
            value = cell
        record[0, 0][name] = value
    with open(path, "wb") as handle:
        scipy.io.savemat(handle, {DBSTRUCT_VARIABLE: record}, format="5", oned_as="column")
    # scipy puts the creation time in the 116-byte text header; a fixed text makes the same
    # content give the same bytes (readers ignore the text).
    with open(path, "r+b") as handle:
        handle.write(_V5_HEADER_TEXT.ljust(116, b" "))


def _mat73_header() -> bytes:
    text = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: iovpr-harness HDF5 schema 1.00 ."
    header = text.encode("ascii").ljust(116, b" ") + b" " * 8 + struct.pack("<H", 0x0200) + b"IM"
    return header.ljust(_MAT73_HEADER_BYTES, b"\0")


def _write_v73(path: Path, ordered: list[tuple[str, object]]) -> None:
    """Write HDF5 the way MATLAB ``save -v7.3`` does.

    MATLAB stores arrays column-major, so an ``m x n`` MATLAB array is an HDF5 dataset of
    shape ``(n, m)``; chars are ``uint16`` (UTF-16 code units); a cell array is a dataset of
    object references into the ``#refs#`` group; a struct is a group with a ``MATLAB_fields``
    attribute giving the field order. The file starts with a 512-byte MATLAB userblock.
    """
    with h5py.File(path, "w", userblock_size=_MAT73_HEADER_BYTES, libver="earliest") as handle:
        refs = handle.create_group("#refs#")
        group = handle.create_group(DBSTRUCT_VARIABLE)
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        field_names = np.empty(len(ordered), dtype=h5py.vlen_dtype(np.dtype("S1")))
        for i, (name, _) in enumerate(ordered):
            field_names[i] = np.array(list(name), dtype="S1")
        group.attrs.create("MATLAB_fields", field_names)
        counter = iter(range(1 << 62))
        for name, value in ordered:
            if isinstance(value, str):
                _write_v73_char(group, name, value)
            elif isinstance(value, list):
                _write_v73_cell(group, refs, name, value, counter)
            else:
                array = np.atleast_2d(np.asarray(value, dtype=np.float64))
                _write_v73_double(group, name, array)
    with open(path, "r+b") as raw:
        raw.write(_mat73_header())


def _write_v73_char(parent, name: str, text: str):
    codes = np.frombuffer(text.encode("utf-16-le"), dtype="<u2")
    if codes.size == 0:
        dataset = parent.create_dataset(name, data=np.array([1, 0], dtype=np.uint64))
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        dataset = parent.create_dataset(name, data=codes.reshape(-1, 1))
    dataset.attrs["MATLAB_class"] = np.bytes_("char")
    dataset.attrs["MATLAB_int_decode"] = np.int32(2)
    return dataset


def _write_v73_double(parent, name: str, matlab_array: np.ndarray) -> None:
    if matlab_array.size == 0:
        dataset = parent.create_dataset(name, data=np.array(matlab_array.shape, dtype=np.uint64))
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        dataset = parent.create_dataset(name, data=np.ascontiguousarray(matlab_array.T))
    dataset.attrs["MATLAB_class"] = np.bytes_("double")


def _write_v73_cell(parent, refs, name: str, texts: list[str], counter) -> None:
    if not texts:
        dataset = parent.create_dataset(name, data=np.array([0, 1], dtype=np.uint64))
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
        dataset.attrs["MATLAB_class"] = np.bytes_("cell")
        return
    references = np.empty((1, len(texts)), dtype=h5py.ref_dtype)  # N x 1 cell, transposed
    for i, text in enumerate(texts):
        element = _write_v73_char(refs, _ref_name(next(counter)), text)
        references[0, i] = element.ref
    dataset = parent.create_dataset(name, data=references)
    dataset.attrs["MATLAB_class"] = np.bytes_("cell")


def _ref_name(number: int) -> str:
    # MATLAB names #refs# members a, b, ..., z, ba, bb, ...; any unique name works.
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = letters[number % 26]
    number //= 26
    while number:
        out = letters[number % 26] + out
        number //= 26
    return out


# ----------------------------------------------------------------------------- reading

