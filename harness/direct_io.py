"""Reading past the page cache: ``O_DIRECT`` reads into reused aligned buffers, and asking how
much of a file range is cached (``mincore``).

A database read once and larger than the page cache gains nothing from the cache, and filling
it costs CPU that the search needs: the copy into the cache, a mapping's page faults and the
reclaim of pages read once. Measured on a 2-core AMD EPYC, 3.3 GB read cold: 1.0-1.3 CPU-s
mapped, 0.15-0.23 CPU-s with ``O_DIRECT`` (same wall time, the disk's 1.6 GB/s).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import weakref
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

#: Offset, length and address alignment of ``O_DIRECT`` reads: the largest logical block size
#: in common use (512 suffices on most disks; anonymous mappings are page-aligned anyway).
DIRECT_ALIGN = 4096


class AlignedBuffers:
    """Page-aligned buffers for ``O_DIRECT`` reads, reused once no array uses them.

    A fresh buffer per block costs its page faults and the kernel's zeroing again (8 CPU-s per
    8 GB on a 2-core AMD EPYC); a buffer lent with an array comes back when that array and every
    view of it are gone (a hashing thread may still hold a block). At most ``keep`` free ones
    are kept.
    """

    def __init__(self, keep: int = 4):
        self._free: list[mmap.mmap] = []
        self._lent: list[tuple[mmap.mmap, weakref.ref]] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes, page-aligned and writable."""
        with self._lock:
            returned = [buffer for buffer, user in self._lent if user() is None]
            self._lent = [(buffer, user) for buffer, user in self._lent if user() is not None]
            self._free = (self._free + returned)[-self._keep:]
            for index, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(index)
        return mmap.mmap(-1, size)

    def lend(self, buffer: mmap.mmap, user: np.ndarray) -> None:
        """``buffer`` is free again once ``user`` is garbage (keep every view based on it)."""
        with self._lock:
            self._lent.append((buffer, weakref.ref(user)))

    @property
    def lent(self) -> int:
        """Buffers still in use."""
        with self._lock:
            return sum(user() is not None for _, user in self._lent)


class UncachedFile:
    """A file opened with ``O_DIRECT`` on first use; ``read`` returns None (and keeps returning
    None) where the platform or filesystem refuses it (tmpfs, some network filesystems)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.refused = not hasattr(os, "O_DIRECT")
        self.closed = False

    def read(self, begin: int, end: int, buffers: AlignedBuffers) -> tuple[mmap.mmap, int] | None:
        """Bytes ``begin:end`` of the file: ``(buffer, offset of begin in it)``, or None."""
        if self.refused or self.closed:
            return None
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            except OSError as exc:
                logger.debug("no O_DIRECT for %s (%s): mapping it", self.path, exc)
                self.refused = True
                return None
        first = begin - begin % DIRECT_ALIGN
        last = -(-end // DIRECT_ALIGN) * DIRECT_ALIGN
        buffer = buffers.take(last - first)
        view = memoryview(buffer)
        done, needed = 0, end - first
        try:
            while done < needed:
                # Every request stays aligned: a short read happens only at the end of the file.
                count = os.preadv(self._fd, [view[done:last - first]], first + done)
                if count <= 0:
                    raise HarnessError(
                        f"unexpected end of file reading bytes {begin}:{end} (truncated file?)",
                        self.path,
                    )
                done += count
        except OSError as exc:  # EINVAL: the filesystem refuses O_DIRECT after all
            logger.debug("O_DIRECT read of %s failed (%s): mapping it", self.path, exc)
            self.refused = True
            return None
        finally:
            view.release()
        return buffer, begin - first

    def close(self) -> None:
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def resident_share(fd: int, begin: int, end: int) -> float | None:
    """The share of the pages of bytes ``begin:end`` of open file ``fd`` in the page cache
    (``mincore(2)`` on a mapping that is never touched), or None where that cannot be asked."""
    libc = _libc()
    if libc is None or end <= begin:
        return None
    aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
    length = end - aligned
    try:
        mapping = mmap.mmap(fd, length, offset=aligned, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        pages = -(-length // mmap.PAGESIZE)
        vector = np.zeros(pages, dtype=np.uint8)
        address = np.frombuffer(mapping, dtype=np.uint8)  # for its address: nothing is read
        result = libc.mincore(ctypes.c_void_p(address.ctypes.data), ctypes.c_size_t(length),
                              ctypes.c_void_p(vector.ctypes.data))
        del address
        if result != 0:
            return None
        return float(np.count_nonzero(vector & 1)) / pages
    finally:
        mapping.close()


_LIBC: list = []


def _libc():
    """The C library with ``mincore``, or None (not a POSIX system)."""
    if not _LIBC:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mincore.restype = ctypes.c_int
        except (OSError, AttributeError):
            libc = None
        _LIBC.append(libc)
    return _LIBC[0]
