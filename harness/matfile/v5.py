"""MATLAB v5 ``.mat`` reading: a byte-level pre-check (scipy must never see a malformed file:
it can hang or exhaust memory on one), then scipy.io."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io

from harness.errors import HarnessError
from harness.matfile.layout import Field, choose_variable

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


def read_v5_fields(path: Path) -> list[Field]:
    _V5Checker(path).check()
    try:
        variables = scipy.io.whosmat(path)
    except Exception as exc:
        raise HarnessError(
            f"unreadable MATLAB v5 file ({type(exc).__name__}: {exc})", path
        ) from None
    name = choose_variable(path, [(v[0], v[2]) for v in variables])
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


def _v5_field(name: str, value) -> Field:
    if isinstance(value, str):
        return Field(name, "char", value)
    value = np.asarray(value)
    if value.dtype.kind == "U":
        return Field(name, "char", "".join(value.reshape(-1).tolist()))
    if value.dtype == object:
        texts = []
        for element in value.reshape(-1, order="F"):
            if isinstance(element, str):
                texts.append(element)
                continue
            element = np.asarray(element)
            if element.dtype.kind != "U" or element.size > 1:
                return Field(name, "other", f"a cell array holding {element.dtype} values")
            texts.append(str(element.reshape(-1)[0]) if element.size else "")
        return Field(name, "cell", texts)
    if value.dtype.kind in "biuf":
        return Field(name, "numeric", value.astype(np.float64))
    return Field(name, "other", f"a value of type {value.dtype}")

