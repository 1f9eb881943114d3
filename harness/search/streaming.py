"""Streaming database blocks from feature files (read one block ahead, in pieces, in threads)."""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from harness.direct_io import AlignedBuffers
from harness.errors import HarnessError
from harness.hardware import available_memory_bytes, usable_cores
from harness.hdf5 import DatasetReader
from harness.search.driver import Block
from harness.search.widen import float16_converter

#: Bytes read, widened and checked at a time inside a block (stays in the CPU caches).
PIECE_BYTES = 4 << 20
#: How blocks of plain datasets are read: ``auto`` reads a block past the page cache
#: (``O_DIRECT``) when the page cache could not keep the whole stream (its bytes exceed the
#: memory available) and the block's pages are mostly not cached; otherwise it maps the block.
#: ``on`` always reads past the cache, ``off`` always maps (the environment variable overrides
#: ``auto``, e.g. for benchmarks).
DIRECT_IO_CHOICES = ("auto", "on", "off")
DIRECT_IO_ENV = "HARNESS_DIRECT_IO"
#: ``auto`` maps a block when at least this share of its pages is cached.
RESIDENT_ENOUGH = 0.5

_END = object()

logger = logging.getLogger(__name__)


def prefetch(iterable: Iterable, depth: int = 1) -> Iterator:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead of the consumer.

    Exceptions in the producer are re-raised in the consumer; closing the returned generator
    (or abandoning it) stops the producer after its current item.
    """
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce():
        try:
            source = iter(iterable)
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            if stop.is_set() and hasattr(source, "close"):
                source.close()  # runs the producer's cleanup in its own thread
        except BaseException as exc:  # handed to the consumer
            items.put((_END, exc))
            return
        items.put((_END, None))

    thread = threading.Thread(target=produce, name="harness-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


@dataclass(frozen=True, eq=False)
class BlockSource:
    """One feature file's ``part`` and the split row of each of its rows.

    ``rows`` (n,) int64: file row ``first_row + i`` holds split database row ``rows[i]``; the
    file holds ``stored_rows`` rows in all (``None``: exactly ``n``, the whole file is read).
    ``handle``: the file already open as an ``h5py.File`` (shared with validation; left open),
    or None.
    """

    path: Path
    rows: np.ndarray
    part: str = "database"
    first_row: int = 0
    stored_rows: int | None = None
    handle: object = None



def streams_from_mapping(path: str | os.PathLike, part: str = "database",
                         handle=None) -> bool:
    """Whether :func:`iter_feature_blocks` reads ``/part/descriptors`` of ``path`` through a
    file mapping (a plain contiguous dataset, on a platform with mmap): then its
    ``on_stored_block`` hook sees every block's stored bytes (unless mapping fails later)."""
    try:
        reader = DatasetReader(Path(path), part, handle)
    except Exception:  # a missing part or a damaged file: validation reports it properly
        return False
    try:
        return bool(reader.mappable)
    finally:
        reader.close()


def touch_pages(array: np.ndarray) -> None:
    """Fault every page of a mapped array in now (in the reading thread, not in the GEMM)."""
    flat = array.reshape(-1).view(np.uint8)
    int(flat[::4096].sum())


def direct_io_choice(choice: str = "auto") -> str:
    """``choice`` checked, with ``auto`` overridden by ``$HARNESS_DIRECT_IO``."""
    if choice == "auto":
        choice = os.environ.get(DIRECT_IO_ENV, "auto") or "auto"
    if choice not in DIRECT_IO_CHOICES:
        raise HarnessError(
            f"unknown direct_io {choice!r} (${DIRECT_IO_ENV}); "
            f"valid: {', '.join(DIRECT_IO_CHOICES)}"
        )
    return choice


def default_reader_threads() -> int:
    """Threads that read (widen, check) each block: one per 4 cores, at most 8."""
    return max(1, min(8, usable_cores() // 4))


def iter_feature_blocks(
    sources: Sequence[BlockSource],
    block_rows: int,
    *,
    prefetch_blocks: bool = True,
    on_block: Callable[[BlockSource, int, np.ndarray], None] | None = None,
    reader_threads: int | None = None,
    as_stored: bool = False,
    on_stored_block: Callable[[BlockSource, int, np.ndarray], None] | None = None,
    fp16_converter: str = "auto",
    direct_io: str = "auto",
) -> Iterator[Block]:
    """Stream ``(database_rows, descriptors)`` blocks from feature files.

    Files are read in order, ``block_rows`` rows at a time, by a prefetch thread that reads
    (and widens float16 to float32) the next block while the current one is searched. Memory
    stays at about three blocks. float32 blocks of plain contiguous datasets are read-only
    views of a file mapping (no copy); float16 blocks are widened into reused buffers (with
    :func:`float16_converter`). Either way a yielded array is valid only until the next block
    is requested (copy it to keep it).

    Args:
        sources: the files, each with the split row of every stored row.
        block_rows: rows per block.
        prefetch_blocks: read one block ahead in a background thread.
        on_block: ``on_block(source, start_row, descriptors)`` runs on every piece of a block
            (a few MB, while it is in cache): value checks cost no extra pass over memory.
            With ``reader_threads`` > 1 pieces are read in parallel, so it must be thread-safe.
        reader_threads: threads reading the pieces of a block (default: one per 4 cores).
        as_stored: yield blocks in their stored dtype (float16 not widened: for a backend that
            widens on its device) as writable private mappings where possible.
        on_stored_block: ``on_stored_block(source, file_offset, stored)`` runs once per block
            read through a file mapping, in file order, with the block's bytes as stored
            (``file_offset`` is where they start in the file). It may keep ``stored`` (e.g. to
            hash it in another thread): the mapping stays valid while referenced.
        fp16_converter: ``auto``, ``numpy`` or ``torch`` (see :func:`float16_converter`).
        direct_io: ``auto``, ``on`` or ``off`` (:data:`DIRECT_IO_CHOICES`): read blocks that are
            not in the page cache with ``O_DIRECT`` (``auto``: only when the stream is larger
            than the memory available, so that the cache could not keep it for the next
            evaluation). Such a database gains nothing from the cache, and filling it costs CPU
            the search needs (2-core AMD EPYC, bf16 backend, ``benchmarks/scale.py --direct-io
            on,off``): 6.4M x 4096 float16 read cold and hashed took 208.4 s direct against
            223.7 s mapped; 1M without hashing 39.7 s against 45.1 s (38.5-41.1 s with the
            file in the page cache).
    """
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    reader = _FeatureBlockReader(
        list(sources), block_rows, ring=3 if prefetch_blocks else 1, on_block=on_block,
        reader_threads=default_reader_threads() if reader_threads is None
        else max(1, int(reader_threads)),
        as_stored=as_stored, on_stored_block=on_stored_block, fp16_converter=fp16_converter,
        direct_io=direct_io_choice(direct_io),
    )
    if prefetch_blocks:
        yield from prefetch(reader.blocks(), depth=1)
    else:
        yield from reader.blocks()


class _FeatureBlockReader:
    """The state of one :func:`iter_feature_blocks` stream: reused buffers, reader threads."""

    def __init__(self, sources: list[BlockSource], block_rows: int, *, ring: int, on_block,
                 reader_threads: int, as_stored: bool, on_stored_block, fp16_converter: str,
                 direct_io: str = "auto"):
        self.sources = sources
        self.block_rows = block_rows
        self.ring = ring
        self.on_block = on_block
        self.reader_threads = reader_threads
        self.as_stored = as_stored
        self.on_stored_block = on_stored_block
        self.fp16_converter = fp16_converter
        self.total_rows = sum(int(source.rows.size) for source in sources)
        self.buffers: list[np.ndarray | None] = [None] * ring
        self.turn = 0
        self.widen = None
        self.local = threading.local()  # per reading thread: a float16 staging buffer
        self.direct_io = direct_io
        self.aligned = AlignedBuffers()  # O_DIRECT buffers, shared by the files' readers
        self.direct_blocks = 0
        self.too_large_to_cache: bool | None = None  # decided on the first block

    def blocks(self) -> Iterator[Block]:
        """Every source's blocks in order (runs in the prefetch thread)."""
        pool = (ThreadPoolExecutor(self.reader_threads, thread_name_prefix="harness-read")
                if self.reader_threads > 1 else None)
        try:
            for source in self.sources:
                reader = DatasetReader(source.path, source.part, source.handle,
                                       buffers=self.aligned)
                try:
                    yield from self._source_blocks(source, reader, pool)
                finally:
                    reader.close()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            if self.direct_blocks:
                logger.debug("%d of %d blocks read past the page cache (O_DIRECT)",
                             self.direct_blocks, self.turn)

    def _source_blocks(self, source: BlockSource, reader: DatasetReader,
                       pool: ThreadPoolExecutor | None) -> Iterator[Block]:
        total, dim = reader.shape
        expected = total if source.stored_rows is None else source.stored_rows
        begin, end = source.first_row, source.first_row + int(source.rows.size)
        if expected != total or not 0 <= begin <= end <= total or (
                source.stored_rows is None and source.rows.shape != (total,)):
            raise HarnessError(
                f"/{source.part} has {total} rows but {source.rows.shape[0]} row "
                f"indices were given (for rows {begin}:{end} of {expected})", source.path,
            )
        stored_dtype = reader.dtype
        out_dtype = stored_dtype if self.as_stored else np.dtype(np.float32)
        if stored_dtype == np.float16 and out_dtype == np.float32 and self.widen is None:
            self.widen = float16_converter(self.fp16_converter,
                                           stored_bytes=self.total_rows * dim * 2)
        # Private (writable) mappings for float16: torch widens from them.
        writable_maps = self.as_stored or stored_dtype != np.float32
        piece_rows = max(1, PIECE_BYTES // (4 * max(1, dim)))
        block_rows = self.block_rows
        for start in range(begin, end, block_rows):
            stop = min(end, start + block_rows)
            n = stop - start
            mapped = reader.read_rows_uncached(start, stop) if self._direct(reader, start, stop) \
                else None
            if mapped is not None:
                self.direct_blocks += 1
            else:
                mapped = reader.map_rows(start, stop, writable=writable_maps)
            if mapped is not None and mapped.dtype == out_dtype:
                out = mapped  # no copy: the consumer reads the page cache
            else:
                out = self._buffer(out_dtype, dim)[:n]
            pieces = [(first, min(n, first + piece_rows)) for first in range(0, n, piece_rows)]
            arguments = (source, reader, start, out, mapped, piece_rows)
            if pool is None:
                for first, last in pieces:
                    self._read_piece(first, last, *arguments)
            else:
                futures = [pool.submit(self._read_piece, first, last, *arguments)
                           for first, last in pieces]
                for future in futures:
                    future.result()
            if self.on_stored_block is not None and mapped is not None:
                self.on_stored_block(source, reader.data_offset + start * reader.row_bytes, mapped)
            del mapped, arguments
            self.turn += 1
            yield source.rows[start - begin:stop - begin], out
            del out

    def _direct(self, reader: DatasetReader, start: int, stop: int) -> bool:
        """Whether rows ``start:stop`` are read past the page cache."""
        if self.direct_io == "off" or not reader.mappable:
            return False
        if self.direct_io == "on":
            return True
        if self.too_large_to_cache is None:
            available = available_memory_bytes()
            self.too_large_to_cache = (available is not None
                                       and self.total_rows * reader.row_bytes > available)
        if not self.too_large_to_cache:
            return False
        resident = reader.resident_fraction(start, stop)
        return resident is not None and resident < RESIDENT_ENOUGH

    def _buffer(self, dtype: np.dtype, dim: int) -> np.ndarray:
        """The next buffer of the ring (a block is read into one while another is searched)."""
        slot = self.turn % self.ring
        buffer = self.buffers[slot]
        if (buffer is None or buffer.dtype != dtype or buffer.shape[1] != dim
                or buffer.shape[0] < self.block_rows):
            buffer = self.buffers[slot] = np.empty((self.block_rows, dim), dtype=dtype)
        return buffer

    def _read_piece(self, first: int, last: int, source: BlockSource, reader: DatasetReader,
                    start: int, out: np.ndarray, mapped: np.ndarray | None,
                    piece_rows: int) -> None:
        """One cache-sized piece: read or widen it, then check it while it is still in cache
        (or just fault its pages in)."""
        target = out[first:last]
        stored_dtype = reader.dtype
        if mapped is not None:
            if mapped is not out:
                if out.dtype == stored_dtype:
                    np.copyto(target, mapped[first:last])
                else:
                    self.widen(mapped[first:last], target)
        elif out.dtype == stored_dtype:
            reader.read(start + first, start + last, target)
        else:
            dim = reader.shape[1]
            staging = getattr(self.local, "staging", None)
            if (staging is None or staging.dtype != stored_dtype
                    or staging.shape != (piece_rows, dim)):
                staging = self.local.staging = np.empty((piece_rows, dim), dtype=stored_dtype)
            piece = staging[: last - first]
            reader.read(start + first, start + last, piece)
            self.widen(piece, target)
        if self.on_block is not None:
            self.on_block(source, start + first, target)
        elif mapped is out:
            touch_pages(target)
