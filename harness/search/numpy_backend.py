"""The ``numpy`` backend (the CPU default): float32 GEMM through numpy's BLAS, exact selection."""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from harness.hardware import usable_cores
from harness.search.backend import SearchBackend, register_backend, score_batch_rows
from harness.search.topk import RunningTopK, merge_topk

#: Cores from which the numpy backend overlaps selection with the next GEMM by default.
OVERLAP_MIN_CORES = 8
#: Database rows per task of the column workers: a 1,000-query float32 score buffer of
#: 2 MB, selected while it is still in the CPU's caches (L2 and L3).
WORKER_SUB_BLOCK_ROWS = 512


def blas_threads() -> int:
    """Threads numpy's BLAS runs with now (what the user or the scheduler allowed)."""
    from threadpoolctl import threadpool_info

    # Read now, not from a cache: a caller may have limited the threads since.
    threads = [info.get("num_threads") for info in threadpool_info()
               if info.get("user_api") == "blas" and "faiss" not in str(info.get("filepath"))]
    try:
        return max(1, int(threads[0])) if threads else 1
    except (TypeError, ValueError):
        return 1


def default_workers() -> int:
    """Column workers of the numpy backend: one per BLAS thread on fewer than
    :data:`OVERLAP_MIN_CORES` cores, else 1 (one multi-threaded GEMM per score batch)."""
    threads = min(blas_threads(), usable_cores())
    return threads if 2 <= threads < OVERLAP_MIN_CORES else 1


@register_backend("numpy")
class NumpyBackend(SearchBackend):
    """float32 GEMM through numpy's BLAS, then exact threshold/partition selection.

    Three ways to use the cores, all with the same bits (a score depends only on its query and
    database row; selection is exact with index-ordered ties):

    * ``workers`` > 1 (default on 2 to 7 BLAS threads): that many threads each take database
      sub-blocks of :data:`WORKER_SUB_BLOCK_ROWS` rows from the block, run a single-threaded
      GEMM on them and fold the scores into their own running top-K while they are in cache;
      the partial top-Ks are merged at the end. The evaluator's sha256 thread then slows one
      worker at a time, where a multi-threaded BLAS call waits for its slowest thread (2-core
      AMD EPYC, ``benchmarks/end_to_end.py`` at 300k x 4096 float32 with every file hashed:
      16.03 s end to end against 17.29 s with one 2-thread GEMM per block). 512 rows measured
      best within noise (13.53 s of search against 14.10 s for 256, 13.62 s for 1024). The
      workers share a per-query floor (the best K-th score any of them holds) so each drops
      what cannot reach the merged top-K: 13.17 s of search against 13.37-13.46 s without.
    * ``overlap`` (default on :data:`OVERLAP_MIN_CORES` cores or more): one multi-threaded GEMM
      per score batch; its selection runs in a background thread while the next GEMM runs.
    * neither: GEMM, then selection split over ``selection_threads`` by query rows.
    """

    def __init__(self, query_batch_rows: int | None = None, selection_threads: int | None = None,
                 overlap: bool | None = None, workers: int | None = None,
                 sub_block_rows: int = WORKER_SUB_BLOCK_ROWS):
        self.query_batch_rows = query_batch_rows
        self._buffers = [np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)]
        self._turn = 0
        # Selection is a few single-threaded numpy passes over the scores; with the BLAS
        # threads idle meanwhile, splitting the query rows over threads recovers that time.
        self.selection_threads = selection_threads or min(16, usable_cores())
        if workers is None:
            workers = 1 if overlap else default_workers()
        self.workers = max(1, int(workers))
        if self.workers > 1 and overlap:
            raise ValueError("overlap and workers > 1 are two different ways to use the cores")
        self.overlap = (self.workers == 1 and usable_cores() >= OVERLAP_MIN_CORES
                        if overlap is None else bool(overlap))
        if sub_block_rows < 1:
            raise ValueError("sub_block_rows must be >= 1")
        self.sub_block_rows = int(sub_block_rows)
        self._pool = None
        self._selector = None
        self._pending = None
        self._state = None
        self._worker_states: list[RunningTopK] = []
        self._worker_buffers: list[np.ndarray] = []
        self._floor = np.empty(0, dtype=np.float32)
        self._blas_limit = None

    def describe(self) -> str:
        if self.workers > 1:
            return f"{self.name} ({self.workers} column workers)"
        return self.name + (" (overlapped selection)" if self.overlap else "")

    def prepare(self, queries, k):
        if self.workers > 1:
            from threadpoolctl import threadpool_limits

            # Each worker runs its own single-threaded GEMM: BLAS threads would oversubscribe.
            self._blas_limit = threadpool_limits(limits=1, user_api="blas")

    def _select(self, state, start: int, scores: np.ndarray, rows: np.ndarray) -> None:
        q = scores.shape[0]
        threads = min(self.selection_threads, max(1, q // 64))
        if threads <= 1:
            state.add_scores(slice(start, start + q), scores, rows)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.selection_threads, thread_name_prefix="harness-select"
            )
        bounds = np.linspace(0, q, threads + 1).astype(int)
        futures = [
            self._pool.submit(state.add_scores, slice(start + a, start + b), scores[a:b], rows)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        for future in futures:
            future.result()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def add_block(self, state, queries, block, rows):
        num_queries, b = queries.shape[0], block.shape[0]
        if num_queries == 0:
            return
        if self.workers > 1:
            self._add_block_workers(state, queries, block, rows)
            return
        batch = self.query_batch_rows or score_batch_rows(b)
        batch = min(batch, num_queries)
        for start in range(0, num_queries, batch):
            stop = min(num_queries, start + batch)
            # The other buffer may still be read by the pending selection; this one is free.
            slot = self._turn % 2 if self.overlap else 0
            if self._buffers[slot].size < batch * b:
                self._buffers[slot] = np.empty(batch * b, dtype=np.float32)
            scores = self._buffers[slot][: (stop - start) * b].reshape(stop - start, b)
            np.matmul(queries[start:stop], block.T, out=scores)
            if self.overlap:
                self._wait()  # selections update the same state: strictly one after another
                if self._selector is None:
                    self._selector = ThreadPoolExecutor(1, thread_name_prefix="harness-selector")
                self._pending = self._selector.submit(self._select, state, start, scores, rows)
                self._turn += 1
            else:
                self._select(state, start, scores, rows)

    # -- column workers ------------------------------------------------------------------------

    def _add_block_workers(self, state, queries, block, rows) -> None:
        """Score ``block`` in sub-blocks on the workers; returns when all are done (the caller
        may reuse the block's buffer afterwards)."""
        if self._state is None:
            self._state = state
            self._worker_states = [RunningTopK(queries.shape[0], state.k)
                                   for _ in range(self.workers)]
            self._worker_buffers = [np.empty(0, dtype=np.float32) for _ in range(self.workers)]
            # Per query, the best K-th score any worker holds: no entry below it can reach
            # the merged top-K, so every worker drops those (exact; K-th scores only rise, so
            # a racy, stale value is merely a lower floor).
            self._floor = np.full(queries.shape[0], -np.inf, dtype=np.float32)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="harness-gemm")
        elif state is not self._state:
            raise ValueError("a numpy backend with workers serves one search at a time")
        tasks: queue.SimpleQueue = queue.SimpleQueue()
        for first in range(0, block.shape[0], self.sub_block_rows):
            tasks.put(first)
        futures = [self._pool.submit(self._work, worker, tasks, queries, block, rows)
                   for worker in range(self.workers)]
        for future in futures:
            future.result()

    def _work(self, worker: int, tasks: queue.SimpleQueue, queries, block, rows) -> None:
        """One worker: take sub-blocks until none is left (a worker slowed by another thread
        simply takes fewer)."""
        own = self._worker_states[worker]
        num_queries = queries.shape[0]
        while True:
            try:
                first = tasks.get_nowait()
            except queue.Empty:
                return
            last = min(block.shape[0], first + self.sub_block_rows)
            width = last - first
            batch = min(num_queries, self.query_batch_rows or score_batch_rows(width))
            if self._worker_buffers[worker].size < batch * width:
                self._worker_buffers[worker] = np.empty(batch * width, dtype=np.float32)
            for start in range(0, num_queries, batch):
                stop = min(num_queries, start + batch)
                scores = self._worker_buffers[worker][: (stop - start) * width].reshape(
                    stop - start, width)
                np.matmul(queries[start:stop], block[first:last].T, out=scores)
                floor = self._floor[start:stop]
                own.add_scores(slice(start, stop), scores, rows[first:last], floor=floor.copy())
                np.maximum(floor, own.scores[start:stop, own.k - 1], out=floor)

    def _merge_workers(self) -> None:
        state, self._state = self._state, None
        parts, self._worker_states = self._worker_states, []
        self._worker_buffers = []
        if state is not None and parts:
            state.add_topk(slice(0, state.scores.shape[0]),
                           merge_topk([part.result() for part in parts], state.k))

    def finish(self):
        try:
            self._wait()
            self._merge_workers()
        finally:
            if self._blas_limit is not None:
                self._blas_limit.restore_original_limits()
                self._blas_limit = None
            for pool in (self._selector, self._pool):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._selector = self._pool = None
