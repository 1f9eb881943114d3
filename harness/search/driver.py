"""The search driver: stream database blocks through a backend into an exact running top-K."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from harness.search.backend import DEFAULT_BLOCK_BYTES, SearchBackend, SearchStats
from harness.search.choice import resolve_backend
from harness.search.topk import RunningTopK, TopK
from harness.search.widen import widen_to_float32

Block = tuple[np.ndarray, np.ndarray]


def _check_queries(queries: np.ndarray) -> np.ndarray:
    queries = np.asarray(queries)
    if queries.ndim != 2:
        raise ValueError(f"queries must be (Q, D), got shape {queries.shape}")
    return np.ascontiguousarray(queries, dtype=np.float32)


def search_blocks(
    queries: np.ndarray,
    blocks: Iterable[Block],
    k: int,
    *,
    ngpu: int = -1,
    cpu_backend: str = "auto",
    backend: SearchBackend | None = None,
    query_batch_rows: int | None = None,
    total_rows: int | None = None,
    progress: bool = False,
    stats: SearchStats | None = None,
) -> TopK:
    """Exact top-``k`` by inner product of ``queries`` against a streamed database.

    Args:
        queries: (Q, D) descriptors (float32; other dtypes are converted).
        blocks: iterable of ``(database_rows (b,) int64, descriptors (b, D))``; rows are the
            split's database indices and may come in any order, but must not repeat.
        k: ranks to keep per query.
        ngpu: -1 every GPU faiss sees, 0 CPU only, n at most n GPUs (CPU fallback).
        cpu_backend: ``auto``, ``numpy``, ``faiss`` or ``bf16`` (see :func:`cpu_backend_choice`
            and :class:`Bf16ShortlistBackend`).
        backend: an already built backend (overrides ``ngpu``/``cpu_backend``).
        query_batch_rows: queries scored per GEMM (default: fits a ~96 MB score buffer).
        total_rows: database size, for the progress bar and ``cpu_backend="auto"``.
        progress: show a tqdm progress bar over database rows.
        stats: if given, filled with timings and the backend's name.

    Returns:
        A :class:`TopK` of shape (Q, k); ranks beyond the database size are padded.
    """
    queries = _check_queries(queries)
    if k < 1:
        raise ValueError("k must be >= 1")
    if backend is None:
        backend = resolve_backend(ngpu, cpu_backend, query_batch_rows, database_rows=total_rows,
                                  num_queries=queries.shape[0])
    backend.prepare(queries, k)
    state = RunningTopK(queries.shape[0], k)
    stats = stats if stats is not None else SearchStats()
    stats.backend = backend.describe()
    bar = None
    if progress:
        bar = tqdm(total=total_rows, unit="rows", unit_scale=True, desc="search", leave=False)
    started = time.perf_counter()
    iterator = iter(blocks)
    try:
        while True:
            waited = time.perf_counter()
            try:
                rows, block = next(iterator)
            except StopIteration:
                break
            computing = time.perf_counter()
            stats.wait_s += computing - waited
            rows = np.asarray(rows, dtype=np.int64)
            if (
                block.ndim != 2
                or block.shape[1] != queries.shape[1]
                or rows.shape != (block.shape[0],)
            ):
                raise ValueError(
                    f"block of shape {block.shape} with {rows.shape} rows does not match "
                    f"queries of dim {queries.shape[1]}"
                )
            if block.dtype != np.float32 and not (
                block.dtype == np.float16 and backend.accepts_float16
            ):
                block = widen_to_float32(block)
            if block.shape[0]:
                backend.add_block(state, queries, block, rows)
            stats.compute_s += time.perf_counter() - computing
            stats.blocks += 1
            stats.database_rows += block.shape[0]
            if bar is not None:
                bar.update(block.shape[0])
    finally:
        backend.finish()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        if bar is not None:
            bar.close()
    stats.total_s = time.perf_counter() - started
    return state.result()


def default_block_rows(dim: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that one float32 block takes about ``block_bytes``."""
    return max(1, block_bytes // (4 * max(1, dim)))


def iter_array_blocks(
    database: np.ndarray, block_rows: int, rows: np.ndarray | None = None
) -> Iterator[Block]:
    """Blocks of an in-memory (N, D) array; ``rows`` maps its rows to database indices."""
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    total = database.shape[0]
    rows = np.arange(total, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if rows.shape != (total,):
        raise ValueError(f"rows has shape {rows.shape}, expected ({total},)")
    for start in range(0, total, block_rows):
        stop = min(total, start + block_rows)
        yield rows[start:stop], database[start:stop]


def search(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    block_rows: int | None = None,
    rows: np.ndarray | None = None,
    **options,
) -> TopK:
    """Exact top-``k`` against an in-memory database (streamed in blocks all the same)."""
    database = np.asarray(database)
    if database.ndim != 2:
        raise ValueError(f"database must be (N, D), got shape {database.shape}")
    block_rows = block_rows or default_block_rows(database.shape[1])
    options.setdefault("total_rows", database.shape[0])
    return search_blocks(queries, iter_array_blocks(database, block_rows, rows), k, **options)


