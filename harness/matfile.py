"""Read and write the NetVLAD ``dbStruct`` ``.mat`` files that Pitts, Tokyo and Amsterdam-XXXL ship.

A ``dbStruct`` is a 1x1 MATLAB struct whose fields are read *by position*, as NetVLAD and
OpenIBL do (field names differ between releases)::

    standard:  [0] whichSet  [1] dbImage  [2] utmDb (2xN)  [3] qImage  [4] utmQ (2xQ)
               [5] numDb  [6] numQ  [7] posDistThr  [8] posDistSqThr  [9] nonTrivPosDistSqThr
    timestamp: [0] whichSet  [1] dbImage  [2] utmDb  [3] dbTimeStamp  [4] qImage  [5] utmQ
    (Tokyo)    [6] qTimeStamp  [7] numDb  [8] numQ  [9] posDistThr  [10] posDistSqThr  [11] ...

The variant is detected from the field types (is field 3 a cell array of strings, or numbers?),
never from the file name. Both MATLAB v5 files (``scipy.io``) and v7.3 files (HDF5: cell arrays
are object references to ``uint16`` char arrays under ``#refs#``) are supported; v7.3 cell
arrays with millions of names are decoded by reading the referenced datasets' headers and
bytes straight from the file, vectorised (see :class:`_CharCellReader`), not one h5py object
at a time.
"""

from __future__ import annotations

import logging
import math
import os
import struct as _struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_path

logger = logging.getLogger(__name__)

DBSTRUCT_VARIABLE = "dbStruct"
VARIANTS = ("standard", "timestamp")
MAT_VERSIONS = ("v5", "v7.3")

# Field names as NetVLAD's MATLAB code writes them (only the positions matter when reading).
_STANDARD_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
_TIMESTAMP_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "dbTimeStamp",
    "qImageFns",
    "utmQ",
    "qTimeStamp",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
# Field positions per variant; fields after pos_dist_thr are optional when reading.
_LAYOUT = {
    "standard": dict(
        which_set=0,
        db_images=1,
        utm_db=2,
        q_images=3,
        utm_q=4,
        num_db=5,
        num_q=6,
        pos_dist_thr=7,
        pos_dist_sq_thr=8,
        non_triv_pos_dist_sq_thr=9,
    ),
    "timestamp": dict(
        which_set=0,
        db_images=1,
        utm_db=2,
        db_timestamps=3,
        q_images=4,
        utm_q=5,
        q_timestamps=6,
        num_db=7,
        num_q=8,
        pos_dist_thr=9,
        pos_dist_sq_thr=10,
        non_triv_pos_dist_sq_thr=11,
    ),
}
# NetVLAD's default for nonTrivPosDistSqThr (10 m squared); only written, never relied on.
_NON_TRIVIAL_POS_DIST_SQ_THR = 100.0
_MAT73_HEADER_BYTES = 512
_V5_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: iovpr-harness"


@dataclass(frozen=True, eq=False)
class DbStruct:
    """The content of one ``dbStruct``; positions are ``(n, 2)`` UTM easting/northing.

    Image lists keep the file's order (sorting is the split builder's job).
    """

    path: Path | None
    which_set: str
    db_images: tuple[str, ...]
    utm_db: np.ndarray
    q_images: tuple[str, ...]
    utm_q: np.ndarray
    pos_dist_thr: float
    pos_dist_sq_thr: float | None = None
    non_triv_pos_dist_sq_thr: float | None = None
    db_timestamps: np.ndarray | None = None
    q_timestamps: np.ndarray | None = None
    variant: str = "standard"
    mat_version: str = "v5"

    @property
    def num_db(self) -> int:
        return len(self.db_images)

    @property
    def num_q(self) -> int:
        return len(self.q_images)


# ----------------------------------------------------------------------------- writing


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
    fields = _STANDARD_FIELDS
    if db_timestamps is not None:
        fields = _TIMESTAMP_FIELDS
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
    import scipy.io

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
    header = text.encode("ascii").ljust(116, b" ") + b" " * 8 + _struct.pack("<H", 0x0200) + b"IM"
    return header.ljust(_MAT73_HEADER_BYTES, b"\0")


def _write_v73(path: Path, ordered: list[tuple[str, object]]) -> None:
    """Write HDF5 the way MATLAB ``save -v7.3`` does.

    MATLAB stores arrays column-major, so an ``m x n`` MATLAB array is an HDF5 dataset of
    shape ``(n, m)``; chars are ``uint16`` (UTF-16 code units); a cell array is a dataset of
    object references into the ``#refs#`` group; a struct is a group with a ``MATLAB_fields``
    attribute giving the field order. The file starts with a 512-byte MATLAB userblock.
    """
    import h5py

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
    import h5py

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


def read_dbstruct(path: str | os.PathLike) -> DbStruct:
    """Read a NetVLAD ``dbStruct`` from a MATLAB v5 or v7.3 ``.mat`` file.

    The struct is the variable ``dbStruct`` (or the file's only struct variable). Fields are
    taken by position; the standard and timestamp (Tokyo) variants are told apart by the
    field types. A file that is not a ``.mat`` file, holds no such struct, lacks fields, or
    whose counts disagree raises :class:`HarnessError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(".mat file not found", path)
    version = _mat_version(path)
    try:
        if version == "v7.3":
            try:
                fields = _read_v73_fields(path)
            except _V73_ERRORS as exc:
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise HarnessError(f"corrupt MATLAB v7.3 (HDF5) file ({detail})", path) from None
        else:
            fields = _read_v5_fields(path)
        return _build(path, fields, version)
    except HarnessError as exc:
        if exc.path is None:
            raise HarnessError(exc.message, path) from None
        raise


# What h5py raises for a damaged HDF5 file (its error stack mapped to KeyError, ValueError,
# OSError, RuntimeError...), plus what the bulk cell reader's arithmetic on garbage headers
# and a dataspace claiming a huge extent can raise.
_V73_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
               OverflowError, MemoryError, UnicodeDecodeError)


def _mat_version(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(128)
    import h5py

    if h5py.is_hdf5(path):
        return "v7.3"
    if len(head) == 128 and head[:6] == b"MATLAB" and head[126:128] in (b"IM", b"MI"):
        subsys_version = head[124:126]
        if subsys_version in (b"\x00\x01", b"\x01\x00"):
            return "v5"
    if head[:10] == b"MATLAB 5.0":
        return "v5"
    raise HarnessError("not a MATLAB v5 or v7.3 .mat file (unrecognised header)", path)


class _Field:
    """One struct field as read: its kind and its value.

    ``kind`` is ``"cell"`` (value: list of str), ``"char"`` (str) or ``"numeric"`` (a
    MATLAB-shaped float64 array), or ``"other"`` (value: a description for the error).
    """

    __slots__ = ("name", "kind", "value")

    def __init__(self, name: str, kind: str, value):
        self.name, self.kind, self.value = name, kind, value


# ---- v5


# MATLAB v5 data types (the ``mi*`` codes) and their item sizes; 8, 10 and 11 are reserved.
_MI_ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8,
                  16: 1, 17: 2, 18: 4}
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 1, 5, 6, 14, 15, 16
_MI_TEXT = frozenset({16, 17, 18})
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
_MX_NUMERIC = frozenset(range(6, 16))
_FLAGS_TYPES, _DIMS_TYPES, _NAME_TYPES = frozenset({6}), frozenset({5}), frozenset({1})
_V5_MAX_DEPTH = 16
# A v5 variable holds at most 2**31 bytes (MATLAB's limit); larger inflated data is a bomb.
_V5_MAX_INFLATED = (1 << 31) + 64


class _V5Checker:
    """Check the structure of a MATLAB v5 file before scipy reads it.

    scipy's compiled reader trusts the file: it looks data types up in a table without
    checking the type code, reads dimensions of any byte count and an imaginary part that
    is not there, so one flipped byte crashes the whole process (segmentation fault). Here
    every element, at every nesting level (inside compressed variables too), is checked
    against the v5 layout: a known data type, a size that fits its parent, matrix headers
    (flags, dimensions, name) of the right types, as many cells, fields and data bytes as
    the dimensions say, bounded nesting. Anything else is a HarnessError naming the offset.
    """

    def __init__(self, path: Path):
        import struct

        self.path = path
        data = path.read_bytes()
        if len(data) < 128:
            raise HarnessError("not a MATLAB v5 file (shorter than its 128-byte header)", path)
        order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
        if order is None:
            raise HarnessError("not a MATLAB v5 file (no IM/MI endian mark in its header)", path)
        self.data = data
        self.tag = struct.Struct(order + "II")
        self.order = order
        self._dims: dict = {}
        self._head = struct.Struct(order + "8I2i")

    def fail(self, where: str, message: str):
        raise HarnessError(f"corrupt MATLAB v5 file: {message} ({where})", self.path)

    def check(self) -> None:
        self.variables(memoryview(self.data), 128, len(self.data), 0, "file offset")

    def element(self, buffer, position: int, end: int, where: str):
        """(type, size, body offset, next offset) of the element at ``position``."""
        if position >= end:
            self.fail(f"{where} {position}", "a matrix ends before all its elements")
        if end - position < 8:
            self.fail(f"{where} {position}", f"{end - position} stray bytes")
        kind, size = self.tag.unpack_from(buffer, position)
        if kind >> 16:  # small data element: type and size share the first 4 bytes
            kind, size = kind & 0xFFFF, kind >> 16
            if size > 4 or kind not in _MI_ITEM_BYTES:
                self.fail(f"{where} {position}",
                          f"invalid small element (type {kind}, {size} bytes)")
            return kind, size, position + 4, position + 8
        if kind not in _MI_ITEM_BYTES and kind not in (_MI_MATRIX, _MI_COMPRESSED):
            self.fail(f"{where} {position}", f"unknown data type {kind}")
        body = position + 8
        if size > end - body:
            self.fail(f"{where} {position}", f"element claims {size} bytes, {end - body} remain")
        padded = size if kind == _MI_COMPRESSED else (size + 7) // 8 * 8
        return kind, size, body, body + min(padded, end - body)

    def data_element(self, buffer, position, end, where, kinds=None, count=None):
        kind, size, body, after = self.element(buffer, position, end, where)
        if kind in (_MI_MATRIX, _MI_COMPRESSED) or (kinds is not None and kind not in kinds):
            self.fail(f"{where} {position}", f"unexpected data type {kind}")
        if count is not None and kind != _MI_UTF8 and size != count * _MI_ITEM_BYTES[kind]:
            self.fail(f"{where} {position}", f"{size} data bytes for {count} values of type {kind}")
        return kind, size, body, after

    def variables(self, buffer, position, end, depth, where) -> None:
        import zlib

        while position < end:
            kind, size, body, after = self.element(buffer, position, end, where)
            if kind == _MI_MATRIX:
                self.matrix(buffer, body, body + size, depth, where)
            elif kind == _MI_COMPRESSED:
                inflater = zlib.decompressobj()
                try:
                    inflated = inflater.decompress(bytes(buffer[body:body + size]),
                                                   _V5_MAX_INFLATED)
                except zlib.error as exc:
                    self.fail(f"{where} {position}",
                              f"compressed variable does not inflate ({exc})")
                if inflater.unconsumed_tail:
                    self.fail(f"{where} {position}",
                              f"compressed variable inflates to more than {_V5_MAX_INFLATED} bytes")
                self.variables(memoryview(inflated), 0, len(inflated), depth,
                               f"offset in the variable compressed at {position}:")
            else:
                self.fail(f"{where} {position}", f"a variable must be a matrix, found type {kind}")
            position = after

    def matrix(self, buffer, position, end, depth, where) -> None:
        if depth > _V5_MAX_DEPTH:
            self.fail(f"{where} {position}", f"matrices nested deeper than {_V5_MAX_DEPTH} levels")
        if position == end:
            return  # an empty matrix ([] in a cell or a field)
        _, _, body, position = self.data_element(buffer, position, end, where, _FLAGS_TYPES, 2)
        flags = self.tag.unpack_from(buffer, body)[0]
        cls, is_complex = flags & 0xFF, bool(flags & 0x800)
        _, size, body, position = self.data_element(buffer, position, end, where, _DIMS_TYPES)
        if size < 8 or size % 4:
            self.fail(f"{where} {position}", f"dimensions of {size} bytes")
        dims = self.dims(size // 4).unpack_from(buffer, body)
        if min(dims) < 0:
            self.fail(f"{where} {position}", f"negative dimensions {list(dims)}")
        count = math.prod(dims)
        _, _, _, position = self.data_element(buffer, position, end, where, _NAME_TYPES)
        if cls == _MX_CELL:
            position = self.matrices(buffer, position, end, depth, where, count)
        elif cls in (_MX_STRUCT, _MX_OBJECT):
            if cls == _MX_OBJECT:
                _, _, _, position = self.data_element(buffer, position, end, where, _NAME_TYPES)
            _, _, body, position = self.data_element(buffer, position, end, where, _DIMS_TYPES, 1)
            name_length = self.dims(1).unpack_from(buffer, body)[0]
            _, size, _, position = self.data_element(buffer, position, end, where, _NAME_TYPES)
            if name_length < 0 or (name_length == 0 and size) or (
                    name_length and size % name_length):
                self.fail(f"{where} {position}",
                          f"{size} bytes of field names of length {name_length}")
            fields = size // name_length if name_length else 0
            position = self.matrices(buffer, position, end, depth, where, count * fields)
        elif cls == _MX_CHAR:
            _, _, _, position = self.data_element(buffer, position, end, where, count=count)
        elif cls in _MX_NUMERIC:
            for _ in range(2 if is_complex else 1):
                _, _, _, position = self.data_element(buffer, position, end, where, count=count)
        elif cls == _MX_SPARSE:
            for _ in range(4 if is_complex else 3):
                _, _, _, position = self.data_element(buffer, position, end, where)
        else:
            self.fail(f"{where} {position}", f"unsupported MATLAB class {cls}")
        if position != end:
            self.fail(f"{where} {position}", f"{end - position} unexpected bytes after a matrix")

    def dims(self, count: int):
        import struct

        parser = self._dims.get(count)
        if parser is None:
            parser = self._dims[count] = struct.Struct(f"{self.order}{count}i")
        return parser

    def matrices(self, buffer, position, end, depth, where, count: int) -> int:
        if count * 8 > end - position:
            self.fail(f"{where} {position}",
                      f"{count} cells or fields cannot fit in {end - position} bytes")
        head = self._head  # matrix tag, flags tag, flags, dims tag, two dims: one unpack
        for _ in range(count):
            # Fast path for the common element, a 2-D char matrix (an image name); anything
            # else, or anything odd, takes the general path.
            if end - position >= 48:
                (kind, size, flags_kind, flags_size, flags, _, dims_kind, dims_size, rows,
                 cols) = head.unpack_from(buffer, position)
                after = position + 8 + size
                if (kind == _MI_MATRIX and flags_kind == 6 and flags_size == 8
                        and (flags & 0x8FF) == _MX_CHAR and dims_kind == 5 and dims_size == 8
                        and rows >= 0 and cols >= 0 and after <= end and size % 8 == 0):
                    if (after - position >= 56  # an empty name: an 8-byte miINT8 element
                            and self.tag.unpack_from(buffer, position + 40) == (_MI_INT8, 0)):
                        data_kind, data_size = self.tag.unpack_from(buffer, position + 48)
                        units = _MI_ITEM_BYTES.get(data_kind)
                        if (units and (data_kind == _MI_UTF8 or data_size == rows * cols * units)
                                and position + 56 + (data_size + 7) // 8 * 8 == after):
                            position = after
                            continue
            kind, size, body, after = self.element(buffer, position, end, where)
            if kind != _MI_MATRIX:
                self.fail(f"{where} {position}",
                          f"a cell or field must be a matrix, found type {kind}")
            self.matrix(buffer, body, body + size, depth + 1, where)
            position = after
        return position


def _read_v5_fields(path: Path) -> list[_Field]:
    import scipy.io

    _V5Checker(path).check()
    try:
        variables = scipy.io.whosmat(path)
    except Exception as exc:
        raise HarnessError(
            f"unreadable MATLAB v5 file ({type(exc).__name__}: {exc})", path
        ) from None
    name = _choose_variable(path, [(v[0], v[2]) for v in variables])
    try:
        content = scipy.io.loadmat(
            path,
            variable_names=[name],
            struct_as_record=True,
            squeeze_me=False,
            chars_as_strings=True,
            mat_dtype=False,
        )
    except Exception as exc:
        raise HarnessError(
            f"unreadable MATLAB v5 file ({type(exc).__name__}: {exc})", path
        ) from None
    record = content[name]
    if record.dtype.names is None or record.size != 1:
        raise HarnessError(f"variable {name!r} is not a 1x1 struct (shape {record.shape})", path)
    record = record.reshape(-1)[0]
    return [_v5_field(field, record[field]) for field in record.dtype.names]


def _v5_field(name: str, value) -> _Field:
    if isinstance(value, str):
        return _Field(name, "char", value)
    value = np.asarray(value)
    if value.dtype.kind == "U":
        return _Field(name, "char", "".join(value.reshape(-1).tolist()))
    if value.dtype == object:
        texts = []
        for element in value.reshape(-1, order="F"):
            if isinstance(element, str):
                texts.append(element)
                continue
            element = np.asarray(element)
            if element.dtype.kind != "U" or element.size > 1:
                return _Field(name, "other", f"a cell array holding {element.dtype} values")
            texts.append(str(element.reshape(-1)[0]) if element.size else "")
        return _Field(name, "cell", texts)
    if value.dtype.kind in "biuf":
        return _Field(name, "numeric", value.astype(np.float64))
    return _Field(name, "other", f"a value of type {value.dtype}")


def _choose_variable(path: Path, variables: list[tuple[str, str]]) -> str:
    structs = [name for name, cls in variables if cls == "struct"]
    if any(name == DBSTRUCT_VARIABLE for name, _ in variables):
        return DBSTRUCT_VARIABLE
    if len(structs) == 1:
        return structs[0]
    found = ", ".join(f"{n} ({c})" for n, c in variables) or "none"
    raise HarnessError(f"no {DBSTRUCT_VARIABLE} struct variable (variables: {found})", path)


# ---- v7.3


def _read_v73_fields(path: Path) -> list[_Field]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise HarnessError(f"unreadable MATLAB v7.3 (HDF5) file ({exc})", path) from None
    with handle:
        from harness.features import check_global_heaps

        # MATLAB_fields is a variable-length attribute: a malformed heap would hang HDF5.
        check_global_heaps(path, int(handle.userblock_size))
        variables = [
            (key, _attr_text(_attr(handle[key], "MATLAB_class", b"")))
            for key in handle
            if key != "#refs#" and key != "#subsystem#"
        ]
        name = _choose_variable(path, variables)
        group = handle[name]
        if (
            not isinstance(group, h5py.Group)
            or _attr_text(_attr(group, "MATLAB_class", b"")) != "struct"
        ):
            raise HarnessError(f"variable {name!r} is not a struct", path)
        order = _attr(group, "MATLAB_fields", text_sequences=True)
        if order is None:
            raise HarnessError(
                f"struct {name!r} has no MATLAB_fields attribute (field order unknown)", path
            )
        field_names = [b"".join(np.asarray(chars).tolist()).decode("ascii") for chars in order]
        fields = []
        for field in field_names:
            if field not in group:
                raise HarnessError(
                    f"struct {name!r} lists field {field!r} but does not hold it", path
                )
            fields.append(_v73_field(path, handle, field, group[field]))
        return fields


def _attr(obj, name: str, default=None, *, text_sequences: bool = False):
    """A MATLAB_* attribute of ``obj``, its type checked before it is read (a malformed type
    can crash HDF5's conversion); ``default`` when absent."""
    from harness.features import read_plain_attribute

    if name not in obj.attrs:
        return default
    return read_plain_attribute(obj, name, obj.file.filename,
                                text_sequences=text_sequences)[1]


def _attr_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, np.ndarray):
        return _attr_text(value.reshape(-1)[0]) if value.size else ""
    return str(value)


def _matlab_empty(dataset) -> bool:
    return bool(np.asarray(_attr(dataset, "MATLAB_empty", 0)).reshape(-1)[0])


def _v73_field(path: Path, handle, name: str, dataset) -> _Field:
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        return _Field(name, "other", "a nested struct or group")
    cls = _attr_text(_attr(dataset, "MATLAB_class", b""))
    if dataset.id.get_type().get_class() not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT,
                                                  h5py.h5t.REFERENCE):
        # Reading converts from the file's type; a malformed one can crash HDF5.
        return _Field(name, "other", f"a dataset of an unsupported HDF5 type ({dataset.dtype})")
    if cls == "cell":
        if _matlab_empty(dataset):
            return _Field(name, "cell", [])
        if dataset.dtype != h5py.ref_dtype:
            return _Field(name, "other", f"a cell dataset of dtype {dataset.dtype}")
        return _Field(name, "cell", _read_v73_strings(path, handle, dataset))
    if cls == "char":
        if _matlab_empty(dataset):
            return _Field(name, "char", "")
        return _Field(name, "char", _decode_utf16(dataset[()]))
    if cls in (
        "double",
        "single",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "logical",
    ):
        if _matlab_empty(dataset):
            dims = tuple(int(d) for d in dataset[()].reshape(-1))
            return _Field(name, "numeric", np.zeros(dims, dtype=np.float64))
        return _Field(name, "numeric", np.asarray(dataset[()], dtype=np.float64).T)
    return _Field(name, "other", f"a MATLAB {cls or 'unknown'} value")


def _decode_utf16(codes: np.ndarray) -> str:
    return np.ascontiguousarray(codes, dtype="<u2").reshape(-1).tobytes().decode("utf-16-le")


def _read_v73_strings(path: Path, handle, dataset) -> list[str]:
    """Decode a cell array of char arrays given as object references.

    Dereferencing with h5py costs ~130 microseconds per element (13 minutes for 6.4M names),
    so :class:`_CharCellReader` reads the referenced objects' headers and data straight from
    the file, vectorised over blocks of references; whatever it does not recognise goes
    through h5py, one element at a time.
    """
    reader = _CharCellReader(path, handle)
    try:
        texts = reader.read(dataset)
    finally:
        reader.close()
    if reader.fallbacks:
        logger.debug("%s: %d of %d names read through h5py", path, reader.fallbacks, len(texts))
    return texts


_OHDR = np.frombuffer(b"OHDR", dtype=np.uint8)
_NAME_CLASS = np.frombuffer(b"MATLAB_class\0", dtype=np.uint8)
_NAME_EMPTY = np.frombuffer(b"MATLAB_empty\0", dtype=np.uint8)
_CHAR = np.frombuffer(b"char", dtype=np.uint8)


class _CharCellReader:
    """Read the small ``uint16`` char datasets a MATLAB cell array references, in bulk.

    An HDF5 object reference *is* the address of the object's header (relative to the
    superblock, i.e. after MATLAB's 512-byte userblock). Each header's messages are walked
    for all references of a block at once with numpy: the dataspace gives the length, the
    datatype must be 2-byte unsigned little-endian, the layout gives where the bytes are
    (contiguous or compact), and the ``MATLAB_class`` attribute must be ``char``. Object
    header versions 1 and 2 are understood. Continuation blocks, filters, chunked layouts,
    ``MATLAB_empty`` elements and anything unexpected are left to h5py (``fallbacks``
    counts them). All strings of a block are then gathered and decoded in one call.
    """

    BLOCK = 1 << 16
    MAX_MESSAGES = 64

    def __init__(self, path: Path, handle):
        self.handle = handle
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        self.raw = self._map.view(np.ndarray)  # plain view: no memmap subclass overhead per gather
        self.size = int(self.raw.size)
        self.base = int(handle.userblock_size)
        self.fallbacks = 0
        self._views = None

    def close(self) -> None:
        mapping = getattr(self._map, "_mmap", None)
        del self.raw, self._map, self._views
        if mapping is not None:
            mapping.close()

    # -- raw access, vectorised over positions. Positions outside the file are clamped to it:
    # whatever garbage that yields fails the structural checks, and data bounds are checked.

    def _bytes(self, positions: np.ndarray, count: int) -> np.ndarray:
        start = np.clip(positions, 0, max(self.size - count, 0))
        return self.raw[start[:, None] + np.arange(count, dtype=np.int64)]

    def _uint64(self, positions: np.ndarray) -> np.ndarray:
        return self._bytes(positions, 8).view("<u8")[:, 0]

    def _units(self, byte_positions: np.ndarray) -> np.ndarray:
        """Little-endian uint16 values at (in-file) byte positions, read through uint16 views."""
        if self._views is None:
            self._views = [
                self.raw[parity : parity + (self.size - parity) // 2 * 2].view("<u2")
                for parity in (0, 1)
            ]
        odd = (byte_positions & 1).astype(bool)
        units = np.empty(byte_positions.size, dtype=np.uint16)
        units[~odd] = self._views[0][byte_positions[~odd] >> 1]
        if odd.any():
            units[odd] = self._views[1][byte_positions[odd] >> 1]
        return units

    def _byte(self, positions: np.ndarray) -> np.ndarray:
        return self.raw[np.clip(positions, 0, self.size - 1)]

    # -- the public entry point

    def read(self, dataset) -> list[str]:
        addresses = _reference_addresses(dataset)
        references = None  # h5py Reference objects, read only if some element needs them
        texts: list[str] = []
        for start in range(0, addresses.size, self.BLOCK):
            block = addresses[start : start + self.BLOCK]
            found, data_at, units = self._locate(block)
            part, found = self._gather(found, data_at, units)
            for i in np.flatnonzero(~found).tolist():
                if references is None:
                    references = dataset[()].reshape(-1)
                part[i] = self._read_h5py(references[start + i])
            texts.extend(part)
        return texts

    def _read_h5py(self, reference) -> str:
        """One element through h5py's low-level API (~2.5x faster than ``handle[reference]``)."""
        import h5py

        self.fallbacks += 1
        element = h5py.h5r.dereference(reference, self.handle.id)
        if not isinstance(element, h5py.h5d.DatasetID):
            raise HarnessError("a cell element is not a dataset")
        cls = ""
        if h5py.h5a.exists(element, b"MATLAB_class"):
            attribute = h5py.h5a.open(element, b"MATLAB_class")
            if attribute.get_type().get_class() == h5py.h5t.STRING:  # others may crash HDF5
                value = np.empty(attribute.shape, dtype=attribute.dtype)
                attribute.read(value)
                cls = _attr_text(value.reshape(-1)[0] if value.size else b"")
            else:
                cls = "unreadable"
        if cls == "char" and element.get_type().get_class() != h5py.h5t.INTEGER:
            cls = f"char of HDF5 type class {element.get_type().get_class()}"
        if cls != "char":
            name = h5py.h5i.get_name(element).decode("utf-8", "replace")
            raise HarnessError(
                f"cell element {name} is a MATLAB {cls or 'unknown'} value, not a string"
            )
        if h5py.h5a.exists(element, b"MATLAB_empty"):
            return ""
        codes = np.empty(element.shape, dtype="<u2")
        element.read(h5py.h5s.ALL, h5py.h5s.ALL, codes)
        return _decode_utf16(codes)

    # -- header walking

    def _locate(self, addresses: np.ndarray):
        """Per reference: whether the fast path applies, data position, length in code units."""
        count = addresses.size
        position = addresses.astype(np.int64) + self.base
        in_file = (addresses < np.uint64(self.size)) & (position + 16 <= self.size)
        position = np.where(in_file, position, 0)
        head = self._bytes(position, 6)
        version2 = in_file & (head[:, :4] == _OHDR).all(axis=1) & (head[:, 4] == 2)
        version1 = in_file & ~version2 & (head[:, 0] == 1) & (head[:, 1] == 0)
        state = {
            "space": np.full(count, -1, dtype=np.int64),
            "type": np.full(count, -1, dtype=np.int64),
            "layout": np.full(count, -1, dtype=np.int64),
            "is_char": np.zeros(count, dtype=bool),
            "bad": ~(version1 | version2),
        }
        rows = np.flatnonzero(version1)
        if rows.size:
            self._walk_v1(rows, position[rows], state)
        rows = np.flatnonzero(version2)
        if rows.size:
            self._walk_v2(rows, position[rows], state)
        found = ~state["bad"] & state["is_char"]
        found &= (state["space"] >= 0) & (state["type"] >= 0) & (state["layout"] >= 0)
        data_at = np.zeros(count, dtype=np.int64)
        units = np.zeros(count, dtype=np.int64)
        rows = np.flatnonzero(found)
        if rows.size:
            ok, data_at[rows], units[rows] = self._describe(
                state["space"][rows], state["type"][rows], state["layout"][rows]
            )
            found[rows] = ok
        return found, data_at, units

    def _walk_v1(self, rows, position, state) -> None:
        prefix = self._bytes(position, 12)
        expected = prefix[:, 2:4].copy().view("<u2")[:, 0].astype(np.int64)
        end = position + 16 + prefix[:, 8:12].copy().view("<u4")[:, 0].astype(np.int64)
        cursor = position + 16  # 12-byte prefix, padded to 8
        seen = np.zeros(rows.size, dtype=np.int64)
        active = (seen < expected) & (cursor + 8 <= end)
        for _ in range(self.MAX_MESSAGES):
            live = np.flatnonzero(active)
            if not live.size:
                break
            at = cursor[live]
            head = self._bytes(at, 4).view("<u2")  # type, size
            length = head[:, 1].astype(np.int64)
            self._record(rows[live], head[:, 0], at + 8, state)
            cursor[live] = at + 8 + length
            seen[live] += 1
            active = (seen < expected) & (cursor + 8 <= end)
        # Fewer messages than announced: the rest sit in a continuation block.
        state["bad"][rows[seen < expected]] = True

    def _walk_v2(self, rows, position, state) -> None:
        flags = self._byte(position + 5).astype(np.int64)
        cursor = position + 6 + np.where(flags & 0x20, 16, 0) + np.where(flags & 0x10, 4, 0)
        width = np.left_shift(1, flags & 0x03)
        chunk = self._bytes(cursor, 8)
        chunk[np.arange(8) >= width[:, None]] = 0  # the size field is 1, 2, 4 or 8 bytes
        end = cursor + width + chunk.view("<u8")[:, 0].astype(np.int64)
        cursor = cursor + width
        header = 4 + np.where(flags & 0x04, 2, 0)  # type, size, flags (+ creation order)
        active = cursor + header <= end
        for _ in range(self.MAX_MESSAGES):
            live = np.flatnonzero(active)
            if not live.size:
                break
            at = cursor[live]
            head = self._bytes(at, 3)
            length = head[:, 1:3].copy().view("<u2")[:, 0].astype(np.int64)
            self._record(rows[live], head[:, 0], at + header[live], state)
            cursor[live] = at + header[live] + length
            active = cursor + header <= end
        state["bad"][rows[active]] = True  # more messages than MAX_MESSAGES

    def _record(self, rows, kind, body, state) -> None:
        for code, key in ((0x0001, "space"), (0x0003, "type"), (0x0008, "layout")):
            hit = kind == code
            state[key][rows[hit]] = body[hit]
        # Filter pipeline or continuation block: not for us. (Attributes stored densely,
        # outside the header, simply leave MATLAB_class unseen, which also means h5py.)
        state["bad"][rows[(kind == 0x000B) | (kind == 0x0010)]] = True
        attribute = np.flatnonzero(kind == 0x000C)
        if attribute.size:
            self._attributes(rows[attribute], body[attribute], state)

    def _attributes(self, rows, body, state) -> None:
        head = self._bytes(body, 8)
        version = head[:, 0].astype(np.int64)
        sizes = head.view("<u2")[:, 1:4].astype(np.int64)  # name, datatype, dataspace sizes
        padded = (version == 1)[:, None]
        sizes = np.where(padded, (sizes + 7) // 8 * 8, sizes)
        name_at = body + np.where(version == 3, 9, 8)
        type_at = name_at + sizes[:, 0]
        data_at = type_at + sizes[:, 1] + sizes[:, 2]
        name = self._bytes(name_at, 13)
        named13 = head.view("<u2")[:, 1] == 13
        is_class = named13 & (name == _NAME_CLASS).all(axis=1)
        is_empty = named13 & (name == _NAME_EMPTY).all(axis=1)
        datatype = self._bytes(type_at, 8)
        string_of_4 = ((datatype[:, 0] & 0x0F) == 3) & (
            datatype[:, 4:8].copy().view("<u4")[:, 0] == 4
        )
        says_char = (self._bytes(data_at, 4) == _CHAR).all(axis=1)
        state["is_char"][rows[is_class & string_of_4 & says_char]] = True
        state["bad"][rows[is_empty | (version < 1) | (version > 3)]] = True

    def _describe(self, space, dtype, layout):
        """Validate dataspace/datatype/layout messages; return (ok, data position, units)."""
        space_head = self._bytes(space, 4)
        space_version = space_head[:, 0]
        rank = space_head[:, 1].astype(np.int64)
        dims_at = space + np.where(space_version == 1, 8, 4)
        simple = (space_version == 1) | ((space_version == 2) & (space_head[:, 3] == 1))
        ok = simple & (rank >= 1) & (rank <= 32)
        units = np.ones(space.size, dtype=np.int64)
        for axis in range(int(np.where(ok, rank, 0).max(initial=0))):
            extent = self._uint64(dims_at + 8 * axis)
            ok &= (axis >= rank) | (extent < np.uint64(1 << 40))
            units = np.where(axis < rank, units * extent.astype(np.int64), units)

        datatype = self._bytes(dtype, 8)
        ok &= (datatype[:, 0] & 0x0F) == 0  # fixed-point
        ok &= (datatype[:, 1] & 0x09) == 0  # little-endian, unsigned
        ok &= datatype[:, 4:8].copy().view("<u4")[:, 0] == 2

        head = self._bytes(layout, 18)
        ok &= (head[:, 0] == 3) | (head[:, 0] == 4)
        compact = head[:, 1] == 0
        contiguous = head[:, 1] == 1
        ok &= compact | contiguous
        address = head[:, 2:10].copy().view("<u8")[:, 0]
        ok &= ~contiguous | (address < np.uint64(self.size))
        stored = np.where(
            compact,
            head[:, 2:4].copy().view("<u2")[:, 0].astype(np.int64),
            np.minimum(head[:, 10:18].copy().view("<u8")[:, 0], np.uint64(self.size)).astype(
                np.int64
            ),
        )
        data_at = np.where(
            compact, layout + 4, np.where(ok, address, 0).astype(np.int64) + self.base
        )
        ok &= (units >= 0) & (2 * units <= stored) & (data_at + 2 * units <= self.size)
        return ok, np.where(ok, data_at, 0), np.where(ok, units, 0)

    # -- gathering and decoding

    def _gather(self, found, data_at, units):
        """Strings for the ``found`` elements (None elsewhere); elements holding NUL are dropped."""
        texts: list[str | None] = [None] * found.size
        rows = np.flatnonzero(found)
        if not rows.size:
            return texts, found
        lengths = units[rows]
        total = int(lengths.sum())
        first_unit = np.zeros(rows.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=first_unit[1:])
        # byte offset of every code unit, then the units themselves (little-endian uint16)
        unit_at = np.repeat(data_at[rows] - 2 * first_unit, lengths) + 2 * np.arange(
            total, dtype=np.int64
        )
        code_units = self._units(unit_at)
        owner = np.repeat(np.arange(rows.size), lengths)
        holds_nul = np.zeros(rows.size, dtype=bool)
        holds_nul[owner[code_units == 0]] = True
        if holds_nul.any():  # NUL is our separator; leave such (odd) names to h5py
            found = found.copy()
            found[rows[holds_nul]] = False
            return self._gather(found, data_at, units)
        # One buffer with a NUL after every string, decoded once and split.
        joined = np.zeros(total + rows.size, dtype="<u2")
        joined[np.arange(total, dtype=np.int64) + owner] = code_units
        try:
            pieces = joined.tobytes().decode("utf-16-le").split("\0")
        except UnicodeDecodeError:
            pieces = None
        if pieces is None or len(pieces) != rows.size + 1:
            found = found.copy()
            found[rows] = False  # e.g. unpaired surrogates: h5py reports the element
            return texts, found
        for row, text in zip(rows.tolist(), pieces):
            texts[row] = text
        return texts, found


def _reference_addresses(dataset) -> np.ndarray:
    """The raw object references of ``dataset``: 8-byte object header addresses."""
    import h5py

    addresses = np.empty(dataset.shape, dtype=np.uint64)
    dataset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, addresses, mtype=h5py.h5t.STD_REF_OBJ)
    return addresses.reshape(-1)


# ---- shared


def _build(path: Path, fields: list[_Field], version: str) -> DbStruct:
    if len(fields) < 8:
        raise HarnessError(
            f"dbStruct has {len(fields)} fields; a NetVLAD dbStruct has at least 8 "
            "(whichSet, dbImage, utmDb, qImage, utmQ, numDb, numQ, posDistThr)",
            path,
        )
    if fields[3].kind == "cell":
        variant = "standard"
    elif fields[3].kind == "numeric" and len(fields) > 4 and fields[4].kind == "cell":
        variant = "timestamp"
    else:
        raise HarnessError(
            f"dbStruct field 3 ({fields[3].name!r}) is neither the query image list "
            f"nor database timestamps; not a NetVLAD dbStruct",
            path,
        )
    layout = _LAYOUT[variant]
    required = layout["pos_dist_thr"] + 1
    if len(fields) < required:
        raise HarnessError(
            f"dbStruct ({variant} variant) has {len(fields)} fields, needs at least {required}",
            path,
        )

    def field(key: str, kind: str) -> _Field:
        item = fields[layout[key]]
        if item.kind != kind:
            shown = item.value if item.kind == "other" else f"a {item.kind} value"
            raise HarnessError(
                f"dbStruct field {layout[key]} ({item.name!r}) should be a {kind} value, "
                f"is {shown}",
                path,
            )
        return item

    def scalar(key: str) -> float:
        item = field(key, "numeric")
        if item.value.size != 1:
            raise HarnessError(
                f"dbStruct field {layout[key]} ({item.name!r}) should be a scalar, "
                f"has shape {item.value.shape}",
                path,
            )
        return float(item.value.reshape(-1)[0])

    which_set = field("which_set", "char").value
    db_images = tuple(field("db_images", "cell").value)
    q_images = tuple(field("q_images", "cell").value)
    utm_db = _utm(path, field("utm_db", "numeric"), len(db_images), "database")
    utm_q = _utm(path, field("utm_q", "numeric"), len(q_images), "query")
    num_db, num_q = scalar("num_db"), scalar("num_q")
    if num_db != len(db_images):
        raise HarnessError(f"numDb is {num_db:g} but dbImage holds {len(db_images)} names", path)
    if num_q != len(q_images):
        raise HarnessError(f"numQ is {num_q:g} but qImage holds {len(q_images)} names", path)
    pos_dist_thr = scalar("pos_dist_thr")
    optional = {}
    for key in ("pos_dist_sq_thr", "non_triv_pos_dist_sq_thr"):
        optional[key] = (
            scalar(key)
            if layout[key] < len(fields) and fields[layout[key]].kind == "numeric"
            else None
        )
    timestamps = {}
    if variant == "timestamp":
        for key, count in (("db_timestamps", len(db_images)), ("q_timestamps", len(q_images))):
            values = field(key, "numeric").value.reshape(-1)
            if values.size != count:
                raise HarnessError(
                    f"dbStruct field {layout[key]} holds {values.size} timestamps "
                    f"for {count} images",
                    path,
                )
            timestamps[key] = values
    return DbStruct(
        path=path,
        which_set=which_set,
        db_images=db_images,
        utm_db=utm_db,
        q_images=q_images,
        utm_q=utm_q,
        pos_dist_thr=pos_dist_thr,
        variant=variant,
        mat_version=version,
        **optional,
        **timestamps,
    )


def _utm(path: Path, item: _Field, count: int, part: str) -> np.ndarray:
    value = item.value
    if value.ndim != 2 or value.shape[0] != 2 or value.shape[1] != count:
        raise HarnessError(
            f"{item.name} should be 2 x {count} (easting; northing per {part} image), "
            f"has shape {' x '.join(map(str, value.shape))}",
            path,
        )
    utm = np.ascontiguousarray(value.T, dtype=np.float64)
    if not np.all(np.isfinite(utm)):
        raise HarnessError(f"{item.name} holds non-finite positions", path)
    return utm
