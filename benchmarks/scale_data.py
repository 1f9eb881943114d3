"""Synthetic databases for ``benchmarks/scale.py``: deterministic unit-norm rows made with
integer bit operations, written in streamed HDF5 shards (the harness feature layout) by a
writer thread, with a disk-space check first and the shards dropped from the page cache
after (cold reads).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np

#: Sign patterns of the synthetic rows (row r: rotation r // SIGN_PATTERNS, pattern r % ...).
SIGN_PATTERNS = 4096
#: Square metres of city per database image (Outdoor-Ams: ~6.4M images over ~200 km^2).
AREA_PER_IMAGE_M2 = 31.0
RADIUS_M = 25.0
GENERATE_ROWS = 8192


class SyntheticRows:
    """Deterministic unit-norm descriptors, generated with integer bit operations.

    Row ``r`` is one random unit vector ``v`` (rounded to the storage dtype) rotated by
    ``r // SIGN_PATTERNS`` positions with sign pattern ``r % SIGN_PATTERNS`` applied: every
    row has exactly the norm of ``v``, distinct rows for ``r < dim * SIGN_PATTERNS``, and a
    block costs two memory copies and one XOR (no float arithmetic, no casts).
    """

    def __init__(self, dim: int, dtype: str, seed: int):
        from numpy.lib.stride_tricks import sliding_window_view

        self.dim = dim
        self.dtype = np.dtype(dtype)
        unsigned = {2: np.uint16, 4: np.uint32}[self.dtype.itemsize]
        rng = np.random.default_rng(seed)
        vector = rng.standard_normal(dim).astype(np.float32)
        vector /= np.linalg.norm(vector)
        bits = vector.astype(self.dtype).view(unsigned)
        self._windows = sliding_window_view(np.concatenate([bits, bits]), dim)  # rotations
        sign_bit = unsigned(1 << (8 * self.dtype.itemsize - 1))
        self._signs = rng.integers(0, 2, (SIGN_PATTERNS, dim), dtype=unsigned) * sign_bit
        if dim * SIGN_PATTERNS < 1:
            raise ValueError("dim must be >= 1")

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Descriptors (len(rows), dim) in the storage dtype."""
        rows = np.asarray(rows, dtype=np.int64)
        out = self._windows[(rows // SIGN_PATTERNS) % self.dim]  # a copy
        np.bitwise_xor(out, self._signs[rows % SIGN_PATTERNS], out=out)
        return out.view(self.dtype)


def needed_bytes(rows: int, dim: int, itemsize: int, queries: int) -> int:
    """Disk bytes of the generated files (descriptors, names, HDF5 overhead, queries)."""
    return rows * (dim * itemsize + 40) + queries * (dim * 4 + 40) + (64 << 20)


def check_disk(folder: Path, needed: int) -> None:
    """Exit with a one-line error when ``folder``'s disk cannot hold ``needed`` bytes + 2 GB."""
    free = shutil.disk_usage(folder).free
    margin = 2 << 30
    if free < needed + margin:
        raise SystemExit(
            f"error: {folder}: not enough free disk: this run writes {needed / 1e9:.1f} GB and "
            f"keeps {margin / 1e9:.1f} GB spare, the disk has {free / 1e9:.1f} GB free "
            f"(use --rows for a smaller run, or --dir on a larger disk)"
        )


class _RawWriter:
    """Writes descriptor blocks with ``os.pwrite`` in a thread (the GIL is released), so that
    generating the next block and writing this one overlap. Items run in order: a callable
    queued after a file's blocks runs once they are written (to close the file)."""

    def __init__(self):
        import queue

        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                if callable(item):
                    item()
                    continue
                fd, offset, data = item
                view = memoryview(data.reshape(-1).view(np.uint8))
                done = 0
                while done < view.nbytes:
                    done += os.pwrite(fd, view[done:], offset + done)
            except BaseException as exc:  # reported by put()/close()
                self._error = exc

    def put(self, item) -> None:
        """``(fd, offset, array)`` to write, or a callable to run after what came before."""
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _create_shard(path: Path, *, split: str, names, dim: int, dtype: np.dtype) -> int:
    """An HDF5 feature file (the harness layout) whose contiguous ``/database/descriptors``
    is allocated but not written; returns the file offset of its first byte."""
    import h5py

    from harness.features import FEATURE_FORMAT_VERSION

    with h5py.File(path, "w", libver="latest") as handle:
        handle.attrs["format_version"] = FEATURE_FORMAT_VERSION
        handle.attrs["split"] = split
        handle.attrs["method"] = "synthetic"
        group = handle.create_group("database")
        group.create_dataset(
            "names", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8")
        )
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.CONTIGUOUS)
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # no 52 GB of zeros first
        file_type = h5py.h5t.IEEE_F16LE if dtype == np.float16 else h5py.h5t.IEEE_F32LE
        space = h5py.h5s.create_simple((len(names), dim))
        dataset = h5py.h5d.create(group.id, b"descriptors", file_type, space, dcpl=plist)
        return int(dataset.get_offset())


def evict(path: Path) -> None:
    """Flush a file and drop it from the page cache (its own pages only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def generate(folder: Path, *, rows: int, queries: int, dim: int, dtype: str, shard_rows: int,
             seed: int, cold: bool) -> dict:
    """Register a split ``scale`` and write its query file and database shards under ``folder``."""
    from tqdm import tqdm

    from harness.features import write_features
    from harness.splits import Split, register_split

    rng = np.random.default_rng(seed + 1)
    synthetic = SyntheticRows(dim, dtype, seed)
    side = float(np.sqrt(rows * AREA_PER_IMAGE_M2))
    database_utm = rng.uniform(0, side, (rows, 2))
    # Each query is a noisy view of one database image, placed within 15 m of it, so that
    # Recall@N is a real number (the same for every backend).
    sources = np.sort(rng.choice(rows, size=queries, replace=False))
    query_utm = database_utm[sources] + rng.uniform(-15, 15, (queries, 2))
    database_names = tuple(f"db/{i:08d}.jpg" for i in range(rows))
    query_names = tuple(f"q/{i:06d}.jpg" for i in range(queries))
    data_root = folder / "data"
    register_split(Split(name="scale", query_names=query_names, database_names=database_names,
                         query_utm=query_utm, database_utm=database_utm, radius_m=RADIUS_M,
                         recall_ns=(1, 5, 10, 20, 50, 100),
                         description="benchmarks/scale.py synthetic database"), data_root)
    features = folder / "features"
    features.mkdir(parents=True, exist_ok=True)
    noise = rng.standard_normal((queries, dim), dtype=np.float32)
    query_descriptors = synthetic.rows(sources).astype(np.float32)
    query_descriptors += noise / np.linalg.norm(noise, axis=1, keepdims=True) * (np.sqrt(dim) / 5)
    query_descriptors /= np.linalg.norm(query_descriptors, axis=1, keepdims=True)
    query_path = write_features(features / "query.h5", split="scale", method="synthetic",
                                query=(list(query_names), query_descriptors.astype(dtype)))
    shards = []
    writer = _RawWriter()
    row_bytes = dim * np.dtype(dtype).itemsize
    try:
        with tqdm(total=rows, unit="rows", unit_scale=True, desc="writing shards") as bar:
            for number, start in enumerate(range(0, rows, shard_rows)):
                stop = min(rows, start + shard_rows)
                path = features / f"database-{number:03d}.h5"
                offset = _create_shard(path, split="scale", names=database_names[start:stop],
                                       dim=dim, dtype=np.dtype(dtype))
                fd = os.open(path, os.O_WRONLY)
                shards.append(path)
                for first in range(start, stop, GENERATE_ROWS):
                    last = min(stop, first + GENERATE_ROWS)
                    writer.put((fd, offset + (first - start) * row_bytes,
                                synthetic.rows(np.arange(first, last))))
                    bar.update(last - first)
                writer.put(lambda fd=fd, path=path: _finish_shard(path, fd, cold))
    finally:
        writer.close()
    return {"data_root": str(data_root), "split": "scale", "query": str(query_path),
            "shards": [str(path) for path in shards]}


def _finish_shard(path: Path, fd: int, cold: bool) -> None:
    os.close(fd)
    if cold:
        evict(path)
