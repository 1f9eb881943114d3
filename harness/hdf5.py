"""Low-level HDF5 access: where a dataset's bytes lie in the file, and reading them directly.

Used by the feature-file reader (global-heap checks), the ``.mat`` reader (v7.3 char cells
decoded from their object headers) and the search (descriptor blocks mapped or read with
``os.preadv``), so that raw HDF5 byte handling lives in one place.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from harness.direct_io import AlignedBuffers, UncachedFile, resident_share
from harness.errors import HarnessError

logger = logging.getLogger(__name__)

_OHDR = np.frombuffer(b"OHDR", dtype=np.uint8)

#: What h5py raises for a damaged HDF5 file: its error stack mapped to KeyError for a bad
#: object header, OSError for unreadable data, ValueError/TypeError for odd types...
HDF5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)
#: Attributes larger than this are refused before they are read.
ATTR_MAX_BYTES = 1 << 16

_GCOL = b"GCOL\x01"
_SUPERBLOCK = b"\x89HDF\r\n\x1a\n"
_HEAP_SCAN_MAX_RANGES = 1 << 16
_HEAPS_CHECKED: set = set()  # files (path, inode, size, mtime) already found sound


def dataset_extents(handle, dataset_paths) -> list[tuple[int, int]]:
    """File byte ranges holding the values of the datasets at ``dataset_paths`` (those that
    exist), sorted; [] if there are too many chunks to list."""
    extents = []
    for name in dataset_paths:
        parent = name.rsplit("/", 1)[0]
        dataset = handle.get(name) if not parent or isinstance(handle.get(parent), h5py.Group) \
            else None
        if not isinstance(dataset, h5py.Dataset):
            continue
        offset = dataset.id.get_offset()
        if offset is not None:
            extents.append((int(offset), int(offset) + int(dataset.id.get_storage_size())))
        elif dataset.chunks is not None:
            chunks = dataset.id.get_num_chunks()
            if chunks > _HEAP_SCAN_MAX_RANGES:
                return []
            for index in range(chunks):
                info = dataset.id.get_chunk_info(index)
                if info.byte_offset is not None:
                    extents.append((int(info.byte_offset), int(info.byte_offset) + int(info.size)))
    return sorted(extents)


def check_global_heaps(path, base: int = 0, skip: Sequence[tuple[int, int]] = ()) -> None:
    """Refuse a file whose HDF5 global heap collections are malformed.

    Variable-length data (every string attribute and name h5py writes) lives in global heap
    collections. The HDF5 library walks a collection object by object and, when an object
    says it is 0 bytes long, never advances: reading any string of such a file hangs the
    process in C, where no timeout can reach it. Every collection in the file (found by its
    ``GCOL`` signature, outside the ``skip`` byte ranges of descriptor values) is walked here
    first; objects must tile it exactly. ``base`` is the superblock's offset (the userblock).
    """
    path = Path(path)
    stat = path.stat()
    size = stat.st_size
    key = (str(path.resolve()), stat.st_ino, size, stat.st_mtime_ns, base, tuple(skip))
    if size < base + 16 or key in _HEAPS_CHECKED:
        return
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[base:base + 8] != _SUPERBLOCK:
            return  # HDF5 will refuse it on its own
        version = data[base + 8]
        length_bytes = data[base + 14] if version in (0, 1) else data[base + 10]
        if length_bytes not in (2, 4, 8):
            return
        length = struct.Struct("<" + {2: "H", 4: "I", 8: "Q"}[length_bytes])
        header = 8 + length_bytes  # GCOL, version, reserved, collection size
        entry = struct.Struct("<HHI")  # object index, reference count, reserved; then its size
        start = 0
        for stop, resume in [*skip, (size, size)]:
            # Extents come from the file's own (possibly corrupt) metadata: clamp them.
            stop, resume = min(max(stop, 0), size), min(max(resume, 0), size)
            position = data.find(_GCOL, start, max(start, stop))
            while position >= 0:
                problem = _heap_problem(data, position, size, length, header, entry)
                if problem:
                    raise HarnessError(
                        f"corrupt HDF5 file: the global heap at byte {position} {problem} (the "
                        "HDF5 library would loop forever reading its strings)", path)
                position = data.find(_GCOL, position + 1, max(start, stop))
            start = max(start, resume)
    if len(_HEAPS_CHECKED) > 4096:
        _HEAPS_CHECKED.clear()
    _HEAPS_CHECKED.add(key)


def _heap_problem(data, position: int, size: int, length, header: int, entry) -> str | None:
    collection = length.unpack_from(data, position + 8)[0] if position + header <= size else 0
    end = position + collection
    if collection <= header or end > size:
        return None  # nothing to walk, or past the end of the file: HDF5 reports an error
    cursor = position + header
    object_header = 8 + length.size
    while cursor + object_header <= end:
        index = entry.unpack_from(data, cursor)[0]
        object_size = length.unpack_from(data, cursor + 8)[0]
        need = object_size if index == 0 else object_header + (object_size + 7) // 8 * 8
        if need == 0:
            return f"holds an empty free-space object at byte {cursor}"
        if cursor + need > end:
            return f"holds object {index} of {object_size} bytes past the collection's end"
        cursor += need
    return None


def check_plain_type(type_id, what: str, path, *, text_sequences: bool = False) -> None:
    """Refuse an HDF5 datatype other than numbers, strings and booleans before it is read.

    Reading a value converts it from its file type; HDF5 and h5py crash the process
    (segmentation fault) converting some malformed variable-length or compound types, so a
    submitted file may only hold the plain types the harness writes. ``text_sequences``
    also admits a variable-length sequence of 1-byte characters (MATLAB's field lists).
    """
    kind = type_id.get_class()
    if kind in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.STRING):
        return
    if kind == h5py.h5t.ENUM and type_id.get_super().get_class() == h5py.h5t.INTEGER:
        return  # h5py's booleans
    if text_sequences and kind == h5py.h5t.VLEN:
        base = type_id.get_super()
        if base.get_class() in (h5py.h5t.STRING, h5py.h5t.INTEGER) and base.get_size() == 1:
            return
    names = {h5py.h5t.TIME: "time", h5py.h5t.BITFIELD: "bitfield", h5py.h5t.OPAQUE: "opaque",
             h5py.h5t.COMPOUND: "compound", h5py.h5t.REFERENCE: "reference",
             h5py.h5t.ENUM: "enum", h5py.h5t.VLEN: "variable-length sequence",
             h5py.h5t.ARRAY: "array"}
    raise HarnessError(f"{what} has an unsupported HDF5 type ({names.get(kind, kind)}); only "

                       "numbers and strings are read", path)


def read_plain_attribute(owner, key: str, path, *, text_sequences: bool = False):
    """``owner.attrs[key]`` after :func:`check_plain_type`; any failure is a HarnessError."""
    try:
        attribute = h5py.h5a.open(owner.id, key.encode("utf-8"))
        check_plain_type(attribute.get_type(), f"attribute {key!r}", path,
                         text_sequences=text_sequences)
        if attribute.get_storage_size() > ATTR_MAX_BYTES:
            raise HarnessError(f"attribute {key!r} is larger than {ATTR_MAX_BYTES} bytes", path)
        return attribute, owner.attrs[key]
    except HarnessError:
        raise
    except Exception as exc:  # h5py raises on attribute types it cannot map
        raise HarnessError(f"attribute {key!r} is unreadable ({exc})", path) from None


class DatasetReader:
    """Reads row ranges of a 2-D HDF5 dataset without going through HDF5 where it can.

    Contiguous, unfiltered little-endian datasets are mapped read-only (:meth:`map_rows`: no
    copy; the kernel's page cache is the buffer), read past the page cache
    (:meth:`read_rows_uncached`, ``O_DIRECT``) or read with ``os.preadv`` (the GIL released
    during the read). Anything else goes through ``h5py``'s ``read_direct``.
    """

    def __init__(self, path: Path, part: str, handle: h5py.File | None = None,
                 buffers: AlignedBuffers | None = None):
        """``handle``: the file already open (it stays open after :meth:`close`);
        ``buffers``: where :meth:`read_rows_uncached` takes its buffers (shared by readers)."""
        self.path = Path(path)
        self._owns_file = handle is None
        try:
            self._file = h5py.File(self.path, "r") if handle is None else handle
        except OSError as exc:
            raise HarnessError(f"not a readable HDF5 file ({exc})", self.path) from None
        try:
            self.dataset = self._file[part]["descriptors"]
            self.shape = tuple(self.dataset.shape)
            self.dtype = np.dtype(self.dataset.dtype)
            offset = self.dataset.id.get_offset()
            plain = (
                self.dataset.chunks is None
                and not self.dataset.compression
                and self.dtype.byteorder in ("<", "=")
                and offset is not None
            )
        except Exception:
            if self._owns_file:
                self._file.close()
            raise
        self._fd = None  # opened on the first direct read (not to ask whether rows map)
        self._fd_lock = threading.Lock()
        self._direct = False
        self._offset = None
        self._mappable = False
        self._buffers = buffers if buffers is not None else AlignedBuffers()
        self._uncached: UncachedFile | None = None
        self.row_bytes = int(self.shape[1]) * self.dtype.itemsize
        if plain and hasattr(os, "preadv"):
            self._direct = True
            self._offset = int(offset)
            size = os.stat(self.path).st_size
            if size < self._offset + self.shape[0] * self.row_bytes:
                self.close()
                raise HarnessError(
                    f"file is truncated: /{part}/descriptors needs "
                    f"{self._offset + self.shape[0] * self.row_bytes} bytes, the file has {size}",
                    self.path,
                )
            self._mappable = self.row_bytes > 0
            self._uncached = UncachedFile(self.path)

    def _descriptor(self) -> int:
        """The file descriptor for direct reads and mappings (opened once, on first use)."""
        with self._fd_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    @property
    def mappable(self) -> bool:
        """Whether :meth:`map_rows` can map rows (a plain contiguous dataset, mmap available)."""
        return self._mappable

    @property
    def data_offset(self) -> int | None:
        """File offset of row 0 (None when the dataset is read through HDF5)."""
        return self._offset if self._direct else None

    def map_rows(self, start: int, stop: int, writable: bool = False) -> np.ndarray | None:
        """Rows ``start:stop`` as an array over a file mapping, or None.

        Read-only by default; with ``writable`` the mapping is private copy-on-write (the file
        never changes; consumers such as torch that refuse read-only memory accept it). The
        mapping lives as long as the array (CPython frees it with the last reference). The
        kernel is asked to read the range ahead (``MADV_WILLNEED``).
        """
        if not self._mappable or stop <= start:
            return None
        begin = self._offset + start * self.row_bytes
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        length = (stop - start) * self.row_bytes
        try:
            mapping = mmap.mmap(self._descriptor(), length + (begin - aligned), offset=aligned,
                                access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # a filesystem without mmap: read instead
            logger.debug("cannot map %s (%s); reading it instead", self.path, exc)
            self._mappable = False
            return None
        if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            mapping.madvise(mmap.MADV_WILLNEED)
        array = np.frombuffer(mapping, dtype=self.dtype, count=(stop - start) * self.shape[1],
                              offset=begin - aligned)
        return array.reshape(stop - start, self.shape[1])

    def _byte_range(self, start: int, stop: int) -> tuple[int, int]:
        begin = self._offset + start * self.row_bytes
        return begin, begin + (stop - start) * self.row_bytes

    def resident_fraction(self, start: int, stop: int) -> float | None:
        """The share of rows ``start:stop``'s pages in the page cache, or None where that
        cannot be asked (:func:`harness.direct_io.resident_share`)."""
        if not self._mappable or stop <= start:
            return None
        return resident_share(self._descriptor(), *self._byte_range(start, stop))

    def read_rows_uncached(self, start: int, stop: int) -> np.ndarray | None:
        """Rows ``start:stop`` read past the page cache (``O_DIRECT``) into a reused aligned
        buffer (:class:`harness.direct_io.AlignedBuffers`; writable: torch widens from it), or
        None where the file or its filesystem refuses (then map or read the rows)."""
        if not self._mappable or stop <= start or self._uncached is None:
            return None
        begin, end = self._byte_range(start, stop)
        with self._fd_lock:
            loaded = self._uncached.read(begin, end, self._buffers)  # None once closed
        if loaded is None:
            return None
        buffer, offset = loaded
        flat = np.frombuffer(buffer, dtype=self.dtype, count=(stop - start) * self.shape[1],
                             offset=offset)
        self._buffers.lend(buffer, flat)  # every view of it refers to ``flat`` (numpy's base)
        return flat.reshape(stop - start, self.shape[1])

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        assert out.shape == (stop - start, self.shape[1]) and out.dtype == self.dtype
        if not self._direct:
            self.dataset.read_direct(out, np.s_[start:stop])
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        position = self._offset + start * self.row_bytes
        done = 0
        while done < view.nbytes:
            count = os.preadv(self._descriptor(), [view[done:]], position + done)
            if count <= 0:
                raise HarnessError(
                    f"unexpected end of file reading rows {start}:{stop} (truncated file?)",
                    self.path,
                )
            done += count

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # existing mappings stay valid
            self._fd = None
        if self._uncached is not None:
            with self._fd_lock:
                self._uncached.close()
        if self._owns_file:
            self._file.close()


class ObjectHeaderScanner:
    """Find small 2-byte-unit datasets from their object references, in bulk, without h5py.

    An HDF5 object reference *is* the address of the object's header (relative to the
    superblock, i.e. after a userblock such as MATLAB's 512 bytes). Each header's messages are
    walked for all references of a block at once with numpy: the dataspace gives the length,
    the datatype must be 2-byte unsigned little-endian, the layout gives where the bytes are
    (contiguous or compact), and a string attribute ``marker_name`` must hold ``marker_value``
    (MATLAB: ``MATLAB_class`` = ``char``); an element carrying ``skip_name`` (``MATLAB_empty``)
    is left to the caller. Object header versions 1 and 2 are understood. Continuation blocks,
    filters, chunked layouts and anything unexpected are reported as not found.
    """

    MAX_MESSAGES = 64

    def __init__(self, path: Path, handle, *, marker_name: bytes = b"MATLAB_class",
                 marker_value: bytes = b"char", skip_name: bytes = b"MATLAB_empty"):
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        self.raw = self._map.view(np.ndarray)  # plain view: no memmap subclass overhead per gather
        self.size = int(self.raw.size)
        self.base = int(handle.userblock_size)
        self._views = None
        self._marker_name = np.frombuffer(marker_name + b"\0", dtype=np.uint8)
        self._marker_value = np.frombuffer(marker_value, dtype=np.uint8)
        self._skip_name = np.frombuffer(skip_name + b"\0", dtype=np.uint8)

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

    def units(self, byte_positions: np.ndarray) -> np.ndarray:
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

    # -- header walking

    def locate(self, addresses: np.ndarray):
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
            "marked": np.zeros(count, dtype=bool),
            "bad": ~(version1 | version2),
        }
        rows = np.flatnonzero(version1)
        if rows.size:
            self._walk_v1(rows, position[rows], state)
        rows = np.flatnonzero(version2)
        if rows.size:
            self._walk_v2(rows, position[rows], state)
        found = ~state["bad"] & state["marked"]
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
        name_size = head.view("<u2")[:, 1]
        marker, skip, value = self._marker_name, self._skip_name, self._marker_value
        is_marker = (name_size == marker.size) & (self._bytes(name_at, marker.size) == marker).all(
            axis=1
        )
        is_skip = (name_size == skip.size) & (self._bytes(name_at, skip.size) == skip).all(axis=1)
        datatype = self._bytes(type_at, 8)
        string_of_value = ((datatype[:, 0] & 0x0F) == 3) & (
            datatype[:, 4:8].copy().view("<u4")[:, 0] == value.size
        )
        says_value = (self._bytes(data_at, value.size) == value).all(axis=1)
        state["marked"][rows[is_marker & string_of_value & says_value]] = True
        state["bad"][rows[is_skip | (version < 1) | (version > 3)]] = True

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


def reference_addresses(dataset) -> np.ndarray:
    """The raw object references of ``dataset``: 8-byte object header addresses."""
    addresses = np.empty(dataset.shape, dtype=np.uint64)
    dataset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, addresses, mtype=h5py.h5t.STD_REF_OBJ)
    return addresses.reshape(-1)
