"""The search backend interface, its registry, and the tie-repairing list backends' base.

A backend scores one database block against all queries and folds it into a
:class:`~harness.search.topk.RunningTopK`. Backends register under a name with
:func:`register_backend`; :func:`harness.search.choice.resolve_backend` picks one for this
machine.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError
from harness.registry import Registry
from harness.search.topk import INDEX_PAD, RunningTopK, TopK, merge_topk

logger = logging.getLogger(__name__)

#: Bytes of float32 descriptors per database block when ``block_rows`` is not given.
DEFAULT_BLOCK_BYTES = 128 << 20
#: Bytes of the (query batch x block) float32 score buffer.
DEFAULT_SCORE_BYTES = 96 << 20


@dataclass
class SearchStats:
    """Filled in by :func:`search_blocks`: where the time went."""

    backend: str = ""
    blocks: int = 0
    database_rows: int = 0
    wait_s: float = 0.0  # waiting for the next block (I/O not hidden by prefetching)
    compute_s: float = 0.0  # scoring and selection
    total_s: float = 0.0


class SearchBackend:
    """Scores one database block against all queries and folds it into a RunningTopK."""

    name = "base"
    #: float32 bytes per streamed block that suit this backend (see :func:`default_block_rows`).
    block_bytes = DEFAULT_BLOCK_BYTES
    #: Takes float16 blocks as stored and widens them itself (on its device): half the bytes
    #: to move, no CPU pass. Other backends get float32 blocks.
    accepts_float16 = False

    def prepare(self, queries: np.ndarray, k: int) -> None:
        """Called once before the first block (upload queries, allocate buffers)."""

    def finish(self) -> None:
        """Called once after the last block, also on errors (release device state)."""

    def add_block(self, state: RunningTopK, queries: np.ndarray, block: np.ndarray,
                  rows: np.ndarray) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name



BACKENDS: Registry = Registry("search backend")


def register_backend(name: str):
    """Class decorator: make a backend available to :func:`get_backend` under ``name``."""

    def decorator(factory):
        factory.name = name
        return BACKENDS.register(name, factory)

    return decorator


def list_backends() -> list[str]:
    """Names of every registered backend, sorted."""
    return BACKENDS.names()


def get_backend(name: str, **options) -> SearchBackend:
    """Instantiate a registered backend; unknown names suggest close matches."""
    return BACKENDS.get(name)(**options)


def score_batch_rows(block_rows: int, score_bytes: int = DEFAULT_SCORE_BYTES) -> int:
    """Queries per GEMM so that a (queries x ``block_rows``) float32 score buffer fits."""
    return max(1, score_bytes // (4 * max(1, block_rows)))


class ListBackend(SearchBackend):
    """faiss k-NN per block; a deeper list plus exact tie repair keeps ties deterministic.

    faiss returns tied scores in heap order, so it is asked for ``k + margin`` results; rows
    whose last returned score still equals their K-th are re-scored exactly with numpy.
    """

    margin = 16

    def _repair_ties(self, state, queries, block, rows, part: TopK, k: int, depth: int):
        if depth >= block.shape[0]:
            return part
        at_k = part.scores[:, k - 1]
        suspect = np.flatnonzero(np.isfinite(at_k) & (part.scores[:, depth - 1] == at_k))
        if suspect.size:
            logger.debug("re-scoring %d queries with ties beyond the list", suspect.size)
            exact = RunningTopK(suspect.size, depth)
            exact.add_scores(
                slice(0, suspect.size),
                queries[suspect] @ block.astype(np.float32, copy=False).T,
                rows,
            )
            scores, indices = part.scores.copy(), part.indices.copy()
            scores[suspect], indices[suspect] = exact.scores, exact.indices
            part = TopK(scores, indices)
        return part

    @staticmethod
    def _to_topk(distances, labels, rows) -> TopK:
        labels = np.asarray(labels, dtype=np.int64)
        valid = labels >= 0
        indices = np.where(valid, rows[np.where(valid, labels, 0)], INDEX_PAD)
        scores = np.where(valid, distances, -np.inf).astype(np.float32)
        return TopK(scores, indices)



class MultiGpuBackend(ListBackend):
    """Splits each block across the selected GPUs (one thread each) and merges exactly."""

    devices: list[int] = []
    block_bytes = 512 << 20

    def describe(self) -> str:
        return f"{self.name} x{len(self.devices)}"

    def _search_device(self, slot: int, sub_block: np.ndarray, depth: int):
        """(scores, labels) of the top ``depth`` of ``sub_block`` on device ``slot``."""
        raise NotImplementedError

    def add_block(self, state, queries, block, rows):
        k = state.k
        if k + self.margin > self.max_k:
            raise HarnessError(
                f"{self.name} k-selection supports k <= {self.max_k - self.margin}, asked for "
                f"{k}; use ngpu=0 (CPU) for this protocol"
            )
        bounds = np.linspace(0, block.shape[0], len(self.devices) + 1).astype(int)

        def run(slot: int) -> TopK | None:
            first, last = bounds[slot], bounds[slot + 1]
            if last <= first:
                return None
            sub_block, sub_rows = block[first:last], rows[first:last]
            depth = min(sub_block.shape[0], k + self.margin)
            distances, labels = self._search_device(slot, sub_block, depth)
            part = self._to_topk(distances, labels, sub_rows)
            return self._repair_ties(state, queries, sub_block, sub_rows, part, k, depth)

        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self.devices))
        parts = [p for p in self._pool.map(run, range(len(self.devices))) if p is not None]
        state.add_topk(
            slice(0, queries.shape[0]), merge_topk(parts, k) if len(parts) > 1 else parts[0]
        )
