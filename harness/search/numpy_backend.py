"""The ``numpy`` backend (the CPU default): float32 GEMM through numpy's BLAS, exact selection."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from harness.hardware import usable_cores
from harness.search.backend import SearchBackend, register_backend, score_batch_rows

#: Cores from which the numpy backend overlaps selection with the next GEMM by default.
OVERLAP_MIN_CORES = 8


@register_backend("numpy")
class NumpyBackend(SearchBackend):
    """float32 GEMM through numpy's BLAS, then exact threshold/partition selection.

    With ``overlap`` (default on machines with at least :data:`OVERLAP_MIN_CORES` cores) the
    selection of one score batch runs in a background thread while the next GEMM runs, on two
    alternating score buffers: on many cores the selection's serial parts otherwise leave the
    BLAS threads idle. On a few cores the two would only take turns on the same cores.
    """

    def __init__(self, query_batch_rows: int | None = None, selection_threads: int | None = None,
                 overlap: bool | None = None):
        self.query_batch_rows = query_batch_rows
        self._buffers = [np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)]
        self._turn = 0
        # Selection is a few single-threaded numpy passes over the scores; with the BLAS
        # threads idle meanwhile, splitting the query rows over threads recovers that time.
        self.selection_threads = selection_threads or min(16, usable_cores())
        self.overlap = usable_cores() >= OVERLAP_MIN_CORES if overlap is None else bool(overlap)
        self._pool = None
        self._selector = None
        self._pending = None

    def describe(self) -> str:
        return self.name + (" (overlapped selection)" if self.overlap else "")

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

    def finish(self):
        try:
            self._wait()
        finally:
            for pool in (self._selector, self._pool):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._selector = self._pool = None


