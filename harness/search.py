"""Exact streaming top-K search by inner product, with a memory bound set by the block size.

The database arrives as an iterator of ``(database_rows, descriptors)`` blocks (rows are split
database indices, int64; descriptors float32 or float16, computed in float32). Each block is
scored against every query (``queries @ block.T``, never more than query-batch x block rows at
once) and folded into a running, exact top-K. Ties are deterministic everywhere: at equal score
the lower database index ranks first, whatever order the blocks (or shards) arrive in, so
the result does not depend on block size, shard order or backend threading.

Public API::

    TopK(scores (Q, K) float32, indices (Q, K) int64)     # -inf / -1 pad missing ranks
    merge_topk(parts, k=None) -> TopK                       # exact merge of disjoint shards
    search_blocks(queries, blocks, k, *, ngpu=-1, cpu_backend="auto", backend=None,
                  query_batch_rows=None, total_rows=None, progress=False, stats=None) -> TopK
    search(queries, database, k, *, block_rows=None, rows=None, **search_blocks_options) -> TopK
    RunningTopK(num_queries, k)                             # the exact running state
    BlockSource(path, rows, part="database")                # a feature file + its split rows
    iter_feature_blocks(sources, block_rows, *, prefetch_blocks=True, on_block=None,
                        reader_threads=None, as_stored=False, on_stored_block=None,
                        fp16_converter="auto")              # HDF5 files, read one block ahead
    streams_from_mapping(path, part="database") -> bool    # on_stored_block sees its bytes
    float16_converter(choice="auto", stored_bytes=0)        # exact float16 -> float32 widening
    widen_to_float32(stored, converter=None) -> np.ndarray
    iter_array_blocks(database, block_rows, rows=None)
    prefetch(iterable, depth=1)                             # background producer thread
    resolve_backend(ngpu=-1, cpu_backend="auto", *, database_rows=None, num_queries=None)
    register_backend(name), get_backend(name, **options), list_backends()
    cpu_backend_choice(inspect_faiss=True, database_rows=None, num_queries=None)
                                           -> CpuBackendChoice(backend, reason, numpy_blas, faiss_blas)
    bf16_margins(queries), bf16_floor(values), rescore_pairs(queries, block, query_rows, columns)

Backends (chosen by ``ngpu``: -1 every visible GPU, 0 CPU only, n the first n GPUs; without a
usable GPU the search falls back to the CPU, with a warning when GPUs were asked for):

* ``numpy``: float32 GEMM through numpy's BLAS plus an exact threshold/partition selection.
  This is the CPU default: faiss-cpu wheels bundle an OpenBLAS that may not know the CPU
  (threadpoolctl reports ``architecture='Prescott'``) and then run a generic kernel about 5x
  below numpy's. :func:`cpu_backend_choice` makes that decision and says why.
* ``faiss-cpu``: ``faiss.knn`` per block (a deeper list, then exact tie repair).
* ``bf16`` (needs torch): a bfloat16 GEMM shortlists with a proven error bound and float32
  re-scores the shortlist: the exact float32 top-K, with OpenBLAS bit for bit the ``numpy``
  backend's; faster where bfloat16 matrix units (AMX) make the shortlist GEMM ~3.5x cheaper
  and the database is large enough for the shortlist to be short (2x at 6.4M rows). ``auto``
  takes it from 1M database rows and 100 queries on CPUs with AMX and torch installed
  (:func:`bf16_shortlist_pays`; see :class:`Bf16ShortlistBackend`).
* ``faiss-gpu``: ``faiss.knn_gpu`` on every selected GPU, each block split across the GPUs
  and merged exactly (float32 blocks: faiss needs the queries' dtype).
* ``torch-cuda``: the same with float32 ``torch.mm`` + ``torch.topk`` (TF32 off), used when
  faiss has no GPU build but torch sees CUDA GPUs (torch is imported only then). It takes
  float16 blocks as stored and widens them on the GPU (half the bytes over PCIe, no CPU pass).

float16 storage is always computed in float32: the widening is exact. On the CPU it is done
piece by piece in the reading threads (numpy, or torch's vectorised cast at scale when torch is
installed; see :func:`float16_converter`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

#: Bytes of float32 descriptors per database block when ``block_rows`` is not given.
DEFAULT_BLOCK_BYTES = 128 << 20
#: Bytes of the (query batch x block) float32 score buffer.
DEFAULT_SCORE_BYTES = 96 << 20
#: Bytes read, widened and checked at a time inside a block (stays in the CPU caches).
PIECE_BYTES = 4 << 20
#: Cores from which the numpy backend overlaps selection with the next GEMM by default.
OVERLAP_MIN_CORES = 8
#: faiss GPU k-selection handles at most this many results per query.
FAISS_GPU_MAX_K = 2048
#: OpenBLAS kernels that mean "this build did not recognise the CPU".
GENERIC_BLAS_KERNELS = ("prescott", "generic", "core2", "katmai", "coppermine", "northwood", "banias")

_INDEX_PAD = -1
_NO_INDEX_KEY = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------
# Result type and exact merging


@dataclass(frozen=True, eq=False)
class TopK:
    """The K best database rows per query, best first.

    ``scores`` (Q, K) float32 inner products, descending along each row; ``indices`` (Q, K)
    int64 split database rows. When the database holds fewer than K rows the tail of each row
    is padded with score ``-inf`` and index ``-1``. At equal score the lower index comes first.
    """

    scores: np.ndarray
    indices: np.ndarray

    def __post_init__(self):
        scores = np.ascontiguousarray(self.scores, dtype=np.float32)
        indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != indices.shape:
            raise ValueError(
                f"TopK scores {scores.shape} and indices {indices.shape} must be equal 2-D shapes"
            )
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "indices", indices)

    @property
    def num_queries(self) -> int:
        return int(self.scores.shape[0])

    @property
    def k(self) -> int:
        return int(self.scores.shape[1])

    @classmethod
    def empty(cls, num_queries: int, k: int) -> "TopK":
        """All ranks padded (score ``-inf``, index ``-1``)."""
        return cls(
            np.full((num_queries, k), -np.inf, dtype=np.float32),
            np.full((num_queries, k), _INDEX_PAD, dtype=np.int64),
        )

    def truncate(self, k: int) -> "TopK":
        """The first ``k`` ranks (``k`` <= :attr:`k`)."""
        if not 0 < k <= self.k:
            raise ValueError(f"cannot truncate a top-{self.k} to {k}")
        return TopK(self.scores[:, :k], self.indices[:, :k])

    def select_queries(self, rows: np.ndarray | slice) -> "TopK":
        return TopK(self.scores[rows], self.indices[rows])

    def same_ranking(self, other: "TopK") -> bool:
        """Identical indices and scores (bit for bit)."""
        return (
            self.scores.shape == other.scores.shape
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.scores, other.scores)
        )


def _index_key(indices: np.ndarray) -> np.ndarray:
    """Sort key that puts padding (-1) after every real index."""
    return np.where(indices < 0, _NO_INDEX_KEY, indices)


def _select_rows(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best entries of (R, W) candidates: score descending, index ascending.

    A plain (SIMD) argsort orders most rows; the rows with an exact tie inside the first
    ``k + 1`` ranks are redone with a lexicographic sort, so ties never depend on input order.
    """
    rows, width = scores.shape
    assert indices.shape == (rows, width), (indices.shape, scores.shape)
    if width < k:
        pad = k - width
        scores = np.concatenate([scores, np.full((rows, pad), -np.inf, np.float32)], axis=1)
        indices = np.concatenate([indices, np.full((rows, pad), _INDEX_PAD, np.int64)], axis=1)
        width = k
    order = np.argsort(-scores, axis=1)
    span = min(width, k + 1)
    head = np.take_along_axis(scores, order[:, :span], axis=1)
    tied = np.any((head[:, 1:] == head[:, :-1]) & np.isfinite(head[:, 1:]), axis=1)
    if tied.any():
        tied_rows = np.flatnonzero(tied)
        order[tied_rows] = np.lexsort(
            (_index_key(indices[tied_rows]), -scores[tied_rows]), axis=1
        )
    order = order[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


def merge_topk(parts: Sequence[TopK], k: int | None = None) -> TopK:
    """Exact top-``k`` of several partial results over disjoint database rows.

    Each part is the top-K of one shard of the database for the same queries. The merge equals
    a single search over the union (same ranks, same tie order: lower index first). ``k``
    defaults to the largest K among the parts. Overlapping shards (one database row in two
    parts) raise ``ValueError``: merging the same shard twice is a bookkeeping error.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    num_queries = parts[0].num_queries
    for part in parts:
        if part.num_queries != num_queries:
            raise ValueError(
                f"merge_topk: parts hold {part.num_queries} and {num_queries} queries"
            )
    k = max(p.k for p in parts) if k is None else int(k)
    if k < 1:
        raise ValueError("k must be >= 1")
    scores = np.concatenate([p.scores for p in parts], axis=1)
    indices = np.concatenate([p.indices for p in parts], axis=1)
    if len(parts) > 1:
        _check_disjoint(indices)
    merged_scores, merged_indices = _select_rows(scores, indices, k)
    return TopK(merged_scores, merged_indices)


def _check_disjoint(indices: np.ndarray) -> None:
    ordered = np.sort(indices, axis=1)
    duplicate = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if duplicate.any():
        row = int(np.flatnonzero(duplicate.any(axis=1))[0])
        value = int(ordered[row, 1:][duplicate[row]][0])
        raise ValueError(
            f"merge_topk: database row {value} appears in more than one part (query {row}); "
            "were the same shard's results merged twice?"
        )


class RunningTopK:
    """Exact running top-K of ``num_queries`` queries, fed one scored block at a time."""

    def __init__(self, num_queries: int, k: int):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)
        self.scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
        self.indices = np.full((num_queries, k), _INDEX_PAD, dtype=np.int64)
        # A row is "full" once it holds K real entries; its threshold is its K-th score.
        self._full = np.zeros(num_queries, dtype=bool)

    def result(self) -> TopK:
        return TopK(self.scores.copy(), self.indices.copy())

    def add_scores(self, query_rows: slice, scores: np.ndarray, database_rows: np.ndarray) -> None:
        """Fold ``scores`` (q, b) of queries ``query_rows`` vs ``database_rows`` (b,) in."""
        q, b = scores.shape
        assert database_rows.shape == (b,), (database_rows.shape, b)
        k = self.k
        state_scores = self.scores[query_rows]
        assert state_scores.shape[0] == q
        full = self._full[query_rows]
        threshold = np.where(full, state_scores[:, k - 1], -np.inf).astype(np.float32)
        if b <= k:
            cand_rows = np.repeat(np.arange(q), b)
            cand_cols = np.tile(np.arange(b), q)
        else:
            # Rows not yet full take the block's K-th score as a threshold: only the block's
            # top K (plus ties at K) can enter. Full rows take their own K-th score first and
            # fall back to the block's K-th only when many entries pass.
            open_rows = np.flatnonzero(~full)
            if open_rows.size:
                threshold[open_rows] = _kth_largest(scores[open_rows], k)
            # Once the running top-K has settled, most rows gain nothing from a block: a row
            # maximum (one cheap reduction) rules them out before the full comparison.
            active = np.flatnonzero(scores.max(axis=1) >= threshold)
            if active.size == 0:
                return
            if active.size > q // 2:
                cand_rows, cand_cols = np.nonzero(scores >= threshold[:, None])
            else:
                cand_rows, cand_cols = np.nonzero(scores[active] >= threshold[active, None])
                cand_rows = active[cand_rows]
            counts = np.bincount(cand_rows, minlength=q)
            crowded = np.flatnonzero(counts > 2 * k)
            if crowded.size:
                threshold[crowded] = np.maximum(threshold[crowded], _kth_largest(scores[crowded], k))
                keep = scores[cand_rows, cand_cols] >= threshold[cand_rows]
                cand_rows, cand_cols = cand_rows[keep], cand_cols[keep]
        if cand_rows.size == 0:
            return
        self.add_candidates(query_rows, cand_rows, scores[cand_rows, cand_cols], database_rows[cand_cols])

    def add_candidates(self, query_rows: slice, local_rows: np.ndarray, scores: np.ndarray,
                       database_rows: np.ndarray) -> None:
        """Fold scattered candidates in: ``scores[i]`` of query ``local_rows[i]`` (relative to
        ``query_rows``, ascending) against database row ``database_rows[i]``."""
        n = local_rows.size
        assert scores.shape == (n,) and database_rows.shape == (n,), (scores.shape, database_rows.shape)
        if n == 0:
            return
        k = self.k
        state_scores = self.scores[query_rows]
        q = state_scores.shape[0]
        counts = np.bincount(local_rows, minlength=q)
        touched = np.flatnonzero(counts)
        width = k + int(counts.max())
        merged_scores = np.full((touched.size, width), -np.inf, dtype=np.float32)
        merged_indices = np.full((touched.size, width), _INDEX_PAD, dtype=np.int64)
        merged_scores[:, :k] = state_scores[touched]
        merged_indices[:, :k] = self.indices[query_rows][touched]
        # Candidates come row-major (ascending rows), so a row's entries are contiguous.
        position_in_touched = np.cumsum(counts > 0) - 1
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = k + np.arange(n) - starts[local_rows]
        target = position_in_touched[local_rows]
        merged_scores[target, slot] = scores
        merged_indices[target, slot] = database_rows
        best_scores, best_indices = _select_rows(merged_scores, merged_indices, k)
        absolute = np.arange(self.scores.shape[0])[query_rows][touched]
        self.scores[absolute] = best_scores
        self.indices[absolute] = best_indices
        self._full[absolute] = best_indices[:, k - 1] >= 0

    def add_scores_at(self, query_index: np.ndarray, scores: np.ndarray, database_rows: np.ndarray) -> None:
        """:meth:`add_scores` for the (ascending) queries ``query_index`` of (len, b) ``scores``."""
        q, b = scores.shape
        assert query_index.shape == (q,), (query_index.shape, q)
        full = self._full[query_index]
        threshold = np.where(full, self.scores[query_index, self.k - 1], -np.inf).astype(np.float32)
        rows, cols = np.nonzero(scores >= threshold[:, None])
        if rows.size == 0:
            return
        # Whole-state candidates: rows relative to query 0, ascending since query_index is.
        self.add_candidates(slice(0, self.scores.shape[0]), query_index[rows], scores[rows, cols],
                            database_rows[cols])

    def add_topk(self, query_rows: slice, part: TopK) -> None:
        """Fold an already selected partial top-K (e.g. from faiss) in."""
        current = TopK(self.scores[query_rows], self.indices[query_rows])
        merged = merge_topk([current, part], self.k)
        absolute = np.arange(self.scores.shape[0])[query_rows]
        self.scores[absolute] = merged.scores
        self.indices[absolute] = merged.indices
        self._full[absolute] = merged.indices[:, self.k - 1] >= 0


def _kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value of each row of (r, b) ``scores`` (b > k)."""
    b = scores.shape[1]
    return np.partition(scores, b - k, axis=1)[:, b - k]


# --------------------------------------------------------------------------------------------
# Backends


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


_BACKENDS: dict[str, Callable[..., SearchBackend]] = {}


def register_backend(name: str):
    """Class decorator: make a backend available to :func:`get_backend` under ``name``."""

    def decorator(factory):
        if name in _BACKENDS:
            raise ValueError(f"search backend {name!r} is already registered")
        factory.name = name
        _BACKENDS[name] = factory
        return factory

    return decorator


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str, **options) -> SearchBackend:
    """Instantiate a registered backend; unknown names suggest close matches."""
    if name not in _BACKENDS:
        close = difflib.get_close_matches(name, list(_BACKENDS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HarnessError(f"unknown search backend {name!r}{hint} (known: {', '.join(list_backends())})")
    return _BACKENDS[name](**options)


def _score_batch_rows(block_rows: int, score_bytes: int = DEFAULT_SCORE_BYTES) -> int:
    return max(1, score_bytes // (4 * max(1, block_rows)))


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
        self.selection_threads = selection_threads or min(16, _usable_cores())
        self.overlap = _usable_cores() >= OVERLAP_MIN_CORES if overlap is None else bool(overlap)
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
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.selection_threads, thread_name_prefix="harness-select")
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
        batch = self.query_batch_rows or _score_batch_rows(b)
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
                    from concurrent.futures import ThreadPoolExecutor

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


#: bfloat16 unit roundoff (8 significant bits, round to nearest even).
_BF16_UNIT = 2.0 ** -8
_FP32_UNIT = 2.0 ** -24
#: Absolute slack for products flushed to zero (bfloat16 dot-product units flush subnormals).
_FLUSHED = 2.0 ** -100


def _fp32_sum_bound(dim: int) -> float:
    """gamma: |fl(sum of dim products) - sum| <= gamma * sum |products|, any order, with room
    for the pairwise dot-product instructions' extra rounding."""
    n = dim + 2
    return n * _FP32_UNIT / (1 - n * _FP32_UNIT)


def bf16_margins(queries: np.ndarray) -> np.ndarray:
    """Per query ``m_q`` (float64) with ``|acc(q~, d~) - fl32(q . d)| <= m_q * ||d||`` for every d.

    ``q~``, ``d~``: the vectors rounded to bfloat16; ``acc``: their products (exact in float32)
    summed in float32 in any order; ``fl32(q . d)``: the float32 inner product the exact path
    computes, in any order. From ``q . d = (q - q~) . d + q~ . (d - d~)``, Cauchy-Schwarz and
    ``||d - d~|| <= u ||d||``: ``m_q = ||q - q~|| + u ||q~|| + g (1 + u) ||q~|| + g ||q||``
    with ``u`` the bfloat16 unit roundoff and ``g`` the float32 summation bound. The query's
    own rounding error enters with its measured size (about 0.4 u ||q||), not its worst case,
    so at 4096-D ``m_q`` is ~0.006 ||q|| (0.015 with worst cases for both sides and the
    output). The output's rounding to bfloat16 costs no margin: rounding is monotone, so cuts
    are rounded down to the bfloat16 grid instead (:class:`Bf16ShortlistBackend`).
    """
    import torch

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    assert queries.ndim == 2, queries.shape
    rounded = torch.from_numpy(queries).to(torch.bfloat16).to(torch.float64).numpy()
    exact = queries.astype(np.float64)
    residual = np.linalg.norm(exact - rounded, axis=1)  # exact differences, float64 norms
    norm_rounded = np.linalg.norm(rounded, axis=1)
    norm = np.linalg.norm(exact, axis=1)
    u, g = _BF16_UNIT, _fp32_sum_bound(queries.shape[1])
    margins = residual + u * norm_rounded + g * (1 + u) * norm_rounded + g * norm
    return margins * (1 + 1e-9)  # the float64 norms' own rounding


def bf16_floor(values: np.ndarray) -> np.ndarray:
    """The largest bfloat16 value ``<= values`` (float64 or float32), as int16 bit patterns."""
    values = np.asarray(values)
    with np.errstate(over="ignore"):  # beyond the float32 range: +-inf, still a floor
        single = values.astype(np.float32)
    single = np.where(single > values, np.nextafter(single, np.float32(-np.inf)), single)
    bits = np.ascontiguousarray(single, dtype=np.float32).view(np.uint32)
    high = bits & np.uint32(0xFFFF0000)
    # Truncating the low half rounds toward zero: down for positive values, up for negative
    # ones, which then step one bfloat16 ulp away from zero (to -inf at the end of the range).
    away = ((bits >> np.uint32(31)) == 1) & ((bits & np.uint32(0xFFFF)) != 0)
    high = np.where(away, high + np.uint32(0x10000), high)
    return (high >> np.uint32(16)).astype(np.uint16).view(np.int16)


def _bf16_from_bits(bits: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(bits, dtype=np.int16)).view(torch.bfloat16)


#: Pairs per float32 GEMM tile when re-scoring: OpenBLAS computes a tile of at least 16 x 16
#: with the kernels and summation order of a large GEMM (smaller products take other paths).
_RESCORE_TILE = 16
#: Pairs gathered at a time when re-scoring (2 x 4 MB: large gathers cost more in page faults).
_RESCORE_CHUNK = 256


def rescore_pairs(queries: np.ndarray, block: np.ndarray, query_rows: np.ndarray,
                  columns: np.ndarray, *, as_gemm: bool = True) -> np.ndarray:
    """float32 scores of the pairs ``(queries[query_rows[i]], block[columns[i]])``.

    With ``as_gemm`` each score is the diagonal entry of a 16 x 16 tile product, so that a
    BLAS whose tile results do not depend on the matrix size (OpenBLAS) gives the very bits
    ``queries @ block.T`` would: the shortlist then reproduces the float32 GEMM's ranking bit
    for bit. Without it, one dot product per pair (about the same cost; last bits may differ).
    """
    n = query_rows.size
    assert columns.shape == (n,), (columns.shape, n)
    out = np.empty(n, dtype=np.float32)
    diagonal = np.arange(_RESCORE_TILE)
    for first in range(0, n, _RESCORE_CHUNK):
        last = min(n, first + _RESCORE_CHUNK)
        query_index, column_index = query_rows[first:last], columns[first:last]
        if not as_gemm:
            out[first:last] = np.einsum("ij,ij->i", queries[query_index], block[column_index])
            continue
        padded = -(-(last - first) // _RESCORE_TILE) * _RESCORE_TILE
        left = queries[np.resize(query_index, padded)].reshape(-1, _RESCORE_TILE, queries.shape[1])
        right = block[np.resize(column_index, padded)].reshape(-1, _RESCORE_TILE, block.shape[1])
        tiles = np.matmul(left, right.transpose(0, 2, 1))
        out[first:last] = tiles[:, diagonal, diagonal].reshape(-1)[: last - first]
    return out


@register_backend("bf16")
class Bf16ShortlistBackend(SearchBackend):
    """Exact top-K through a bfloat16 shortlist, re-scored in float32 (CPUs with AMX/AVX512-BF16).

    A bfloat16 GEMM (torch/oneDNN: ~3.5x the float32 GEMM rate on AMX) scores every pair.
    A database row can enter a query's top-K only if its float32 score ``s`` reaches the
    query's current K-th score ``t`` (ties: ``s == t``). Before the bfloat16 output rounding,
    the GEMM's score is within ``m_q ||d||`` of ``s`` (:func:`bf16_margins`), so it is at least
    ``t - m_q max||d||`` for such a row, and, rounding being monotone, the bfloat16 score is at
    least that value rounded down to the bfloat16 grid: the cut. Every pair at or above the
    cut is re-scored in float32; every other pair provably has ``s < t``: the result is the
    exact float32 top-K. Blocks in which a query's top-K is not yet full are searched exactly
    in float32 (the ``numpy`` backend); the first such block also checks the guarantee pair by
    pair against exact scores and falls back to float32 for the whole search if it ever fails
    (e.g. a kernel accumulating in bfloat16). Re-scored pairs get the float32 GEMM's very bits
    (:func:`rescore_pairs`; checked on a sample of that block's pairs), so the ranking equals
    the ``numpy`` backend's bit for bit; where the BLAS does not allow it, they get plain dot
    products and the ranking is exact up to float32 rounding (as between any two BLAS).
    Needs torch; ``cpu_backend="bf16"``, or ``auto`` on large searches (:func:`bf16_shortlist_pays`).
    """

    #: Share of candidate pairs above which a block is re-scored by a float32 GEMM. Gathering
    #: a row to re-score one pair costs ~50x that pair's share of a GEMM (memory-bound), so a
    #: shortlist pays only well below 2%. With random 4096-D descriptors and K = 100 the
    #: window (~0.4 standard deviations of the scores) holds ~0.01% of the pairs at 6.4M rows,
    #: but ~1% at 100k rows: the shortlist helps on large databases; on small ones blocks
    #: back off to float32, at a cost of a few percent.
    dense_fraction = 0.0025
    #: After a loose shortlist, blocks searched in float32 only, before the shortlist is tried
    #: again (top-K thresholds rise as the search goes on, and shortlists tighten).
    dense_backoff_blocks = 8

    def __init__(self, query_batch_rows: int | None = None, selection_threads: int | None = None):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise HarnessError("cpu_backend 'bf16' needs torch (pip install torch)") from None
        self._exact = NumpyBackend(query_batch_rows, selection_threads, overlap=False)
        self.fallback = False
        self.checked = False
        #: Re-scored pairs carry the float32 GEMM's bits (decided by the check).
        self.bitwise = True
        self.candidates = 0
        self.shortlisted_pairs = 0
        self.shortlisted_blocks = 0
        self.exact_blocks = 0
        self._backoff = 0
        self._block_buffer = None
        self._score_buffer = None

    def describe(self) -> str:
        return "bf16 shortlist + float32 re-scoring" + (" (fell back to float32)" if self.fallback else "")

    def prepare(self, queries, k):
        import torch

        self._queries_bf16 = torch.from_numpy(np.ascontiguousarray(queries)).to(torch.bfloat16)
        self._margins = bf16_margins(queries)
        self._block_buffer = self._score_buffer = None  # sized for this search's queries

    def finish(self):
        self._exact.finish()
        self._block_buffer = self._score_buffer = None
        if self.shortlisted_blocks:
            logger.info("bf16 shortlist: %d blocks shortlisted, %d in float32; %d pairs re-scored "
                        "(%.4f%% of the shortlisted pairs)", self.shortlisted_blocks, self.exact_blocks,
                        self.candidates, 100.0 * self.candidates / max(1, self.shortlisted_pairs))

    def _approximate(self, block: np.ndarray):
        """bfloat16 scores (Q, b) of every query against ``block`` (a torch tensor)."""
        import warnings

        import torch

        with warnings.catch_warnings():  # a read-only file mapping: only read here
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(block)
        b = block.shape[0]
        # Reused buffers: a fresh 64 MB tensor per block costs more in page faults than the copy.
        if self._block_buffer is None or self._block_buffer.shape[0] < b:
            self._block_buffer = torch.empty(block.shape, dtype=torch.bfloat16)
            self._score_buffer = torch.empty((self._queries_bf16.shape[0], b), dtype=torch.bfloat16)
        rounded = self._block_buffer[:b]
        rounded.copy_(source)
        scores = self._score_buffer[:, :b] if b == self._score_buffer.shape[1] else None
        if scores is None:
            return torch.mm(self._queries_bf16, rounded.T)
        return torch.mm(self._queries_bf16, rounded.T, out=scores)

    @staticmethod
    def _max_norm(block: np.ndarray) -> float:
        """An upper bound of the largest row norm of ``block``."""
        import torch

        norms = torch.linalg.vector_norm(torch.from_numpy(block), dim=1)
        # float32 sums of squares and the square root: a relative error well below 1e-3.
        return float(norms.max()) * (1 + 4 * _fp32_sum_bound(block.shape[1])) + _FLUSHED

    def _check_bound(self, queries, block) -> None:
        """Check the cut's guarantee pair by pair on one block against float32 scores."""
        self.checked = True
        approximate = self._approximate(block)
        norms = np.linalg.norm(block.astype(np.float64), axis=1)
        worst = 0.0
        sample = np.random.default_rng(0)
        for first in range(0, queries.shape[0], 64):  # float64 temporaries of 64 queries at a time
            last = min(queries.shape[0], first + 64)
            found = approximate[first:last].double().numpy()
            exact = queries[first:last] @ block.T
            if self.bitwise:
                local = np.sort(sample.integers(0, last - first, 32))
                columns = sample.integers(0, block.shape[0], 32)
                rescored = rescore_pairs(queries, block, first + local, columns)
                if not np.array_equal(rescored, exact[local, columns]):
                    self.bitwise = False
                    logger.info("this BLAS's small products differ from its large ones in the last "
                                "bits: re-scoring with dot products (rankings exact up to float32 "
                                "rounding, not bit for bit those of the numpy backend)")
            exact = exact.astype(np.float64)
            slack = np.outer(self._margins[first:last], norms) + _FLUSHED
            low = _bf16_from_bits(bf16_floor(exact - slack)).double().numpy()
            high = -_bf16_from_bits(bf16_floor(-(exact + slack))).double().numpy()
            worst = max(worst, float(np.maximum(low - found, found - high).max()))
        if worst > 0:
            self.fallback = True
            logger.warning("bfloat16 scores exceed their error bound on this machine (by %.3g): "
                           "searching in float32 instead", worst)

    def add_block(self, state, queries, block, rows):
        if self.fallback or self._backoff > 0 or not state._full.all():
            if not self.checked and not self.fallback:
                self._check_bound(queries, block)
            self._backoff = max(0, self._backoff - 1)
            self.exact_blocks += 1
            self._exact.add_block(state, queries, block, rows)
            return
        import torch

        self.shortlisted_blocks += 1
        k = state.k
        approximate = self._approximate(block)
        self.shortlisted_pairs += approximate.numel()
        thresholds = state.scores[:, k - 1].astype(np.float64)
        cut = _bf16_from_bits(bf16_floor(thresholds - self._margins * self._max_norm(block) - _FLUSHED))
        active = torch.nonzero(approximate.amax(dim=1) >= cut).flatten()
        if active.numel() == 0:
            return
        local, columns = torch.nonzero(approximate.index_select(0, active) >= cut[active, None],
                                       as_tuple=True)
        active, columns = active.numpy(), columns.numpy()
        query_rows = active[local.numpy()]
        self.candidates += query_rows.size
        if query_rows.size > self.dense_fraction * approximate.numel():
            # A loose shortlist: the float32 GEMM costs less than gathering the pairs.
            self._backoff = self.dense_backoff_blocks
            self._exact.add_block(state, queries, block, rows)
            return
        exact = rescore_pairs(queries, block, query_rows, columns, as_gemm=self.bitwise)
        state.add_candidates(slice(0, state.scores.shape[0]), query_rows, exact, rows[columns])


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class _ListBackend(SearchBackend):
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
            exact.add_scores(slice(0, suspect.size), queries[suspect] @ block.astype(np.float32, copy=False).T, rows)
            scores, indices = part.scores.copy(), part.indices.copy()
            scores[suspect], indices[suspect] = exact.scores, exact.indices
            part = TopK(scores, indices)
        return part

    @staticmethod
    def _to_topk(distances, labels, rows) -> TopK:
        labels = np.asarray(labels, dtype=np.int64)
        valid = labels >= 0
        indices = np.where(valid, rows[np.where(valid, labels, 0)], _INDEX_PAD)
        scores = np.where(valid, distances, -np.inf).astype(np.float32)
        return TopK(scores, indices)


@register_backend("faiss-cpu")
class FaissCpuBackend(_ListBackend):
    """``faiss.knn`` (inner product) on the CPU, with faiss's bundled BLAS."""

    def __init__(self, query_batch_rows: int | None = None):
        import faiss  # noqa: F401  (fail early when the cpu extra is missing)

        self.query_batch_rows = query_batch_rows

    def add_block(self, state, queries, block, rows):
        import faiss

        k = state.k
        depth = min(block.shape[0], k + self.margin)
        distances, labels = faiss.knn(queries, block, depth, metric=faiss.METRIC_INNER_PRODUCT)
        part = self._to_topk(distances, labels, rows)
        part = self._repair_ties(state, queries, block, rows, part, k, depth)
        state.add_topk(slice(0, queries.shape[0]), part)


class _MultiGpuBackend(_ListBackend):
    """Splits each block across the selected GPUs (one thread each) and merges exactly."""

    devices: list[int] = []
    block_bytes = 512 << 20

    def describe(self) -> str:
        return f"{self.name} x{len(self.devices)}"

    def _search_device(self, slot: int, sub_block: np.ndarray, depth: int):
        """(scores, labels) of the top ``depth`` of ``sub_block`` on device ``slot``."""
        raise NotImplementedError

    def add_block(self, state, queries, block, rows):
        from concurrent.futures import ThreadPoolExecutor

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
        state.add_topk(slice(0, queries.shape[0]), merge_topk(parts, k) if len(parts) > 1 else parts[0])


@register_backend("faiss-gpu")
class FaissGpuBackend(_MultiGpuBackend):
    """``faiss.knn_gpu`` on ``ngpu`` GPUs: each block is split across them, merged exactly."""

    max_k = FAISS_GPU_MAX_K

    def __init__(self, ngpu: int = -1, query_batch_rows: int | None = None):
        import faiss

        available = faiss_gpu_count()
        if available < 1:
            raise RuntimeError("this faiss has no GPU support or sees no GPU")
        self.devices = list(range(available if ngpu < 0 else min(ngpu, available)))
        self._resources = [faiss.StandardGpuResources() for _ in self.devices]
        self._queries = None
        self._pool = None

    def prepare(self, queries, k):
        self._queries = queries

    def _search_device(self, slot, sub_block, depth):
        import faiss

        return faiss.knn_gpu(
            self._resources[slot], self._queries, sub_block, depth,
            metric=faiss.METRIC_INNER_PRODUCT, device=self.devices[slot],
        )


@register_backend("torch-cuda")
class TorchCudaBackend(_MultiGpuBackend):
    """float32 ``torch.mm`` + ``torch.topk`` on CUDA GPUs (used when faiss has no GPU build).

    TF32 is switched off for the products: scores are full float32, as on the CPU. float16
    blocks are uploaded as stored and widened to float32 on the GPU (exact, as on the CPU).
    """

    max_k = 1 << 20
    accepts_float16 = True

    def __init__(self, ngpu: int = -1, query_batch_rows: int | None = None):
        import torch

        available = torch_gpu_count()
        if available < 1:
            raise RuntimeError("torch sees no CUDA GPU")
        self.devices = list(range(available if ngpu < 0 else min(ngpu, available)))
        self._queries = []
        self._pool = None

    def prepare(self, queries, k):
        import torch

        # Full float32 products (TF32 would change scores in the 4th digit); restored in finish().
        self._tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        host = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        self._queries = [host.to(f"cuda:{d}") for d in self.devices]

    def finish(self):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = getattr(self, "_tf32", torch.backends.cuda.matmul.allow_tf32)
        self._queries = []

    def _search_device(self, slot, sub_block, depth):
        import torch

        device = torch.device("cuda", self.devices[slot])
        with torch.no_grad():
            block = torch.from_numpy(np.ascontiguousarray(sub_block)).to(device)
            if block.dtype != torch.float32:
                block = block.float()  # float16 -> float32 is exact
            scores = self._queries[slot] @ block.T
            values, labels = torch.topk(scores, depth, dim=1, largest=True, sorted=True)
            return values.cpu().numpy(), labels.cpu().numpy()


def _nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or bool(shutil.which("nvidia-smi"))


def torch_gpu_count() -> int:
    """CUDA GPUs torch sees (0 without torch or a driver; torch is imported only with a driver)."""
    if not _nvidia_driver_present():
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def faiss_gpu_count() -> int:
    """GPUs that faiss can use (0 without faiss, with a CPU build, or without a GPU).

    faiss is imported only on a machine with an NVIDIA driver.
    """
    if not _nvidia_driver_present():
        return 0
    try:
        import faiss
    except ImportError:
        return 0
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


@dataclass(frozen=True)
class CpuBackendChoice:
    """Which CPU backend ``cpu_backend="auto"`` picks, and why."""

    backend: str
    reason: str
    numpy_blas: str
    faiss_blas: str


def _blas_description(info: dict | None) -> str:
    if not info:
        return "unknown"
    parts = [str(info.get("internal_api", "?")), str(info.get("version") or "")]
    if info.get("architecture"):
        parts.append(f"kernel={info['architecture']}")
    parts.append(f"threads={info.get('num_threads')}")
    return " ".join(p for p in parts if p)


@functools.lru_cache(maxsize=2)
def blas_libraries(load_faiss: bool = True) -> dict[str, dict | None]:
    """threadpoolctl's record of the BLAS used by numpy and the one bundled with faiss.

    With ``load_faiss`` false, faiss's BLAS is reported only if faiss is already imported.
    """
    from threadpoolctl import threadpool_info

    if load_faiss:
        try:
            import faiss  # noqa: F401  (loads its BLAS so threadpoolctl sees it)
        except ImportError:
            pass
    found: dict[str, dict | None] = {"numpy": None, "faiss": None}
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        path = str(info.get("filepath", ""))
        if "faiss" in path:
            found["faiss"] = info
        elif "numpy" in path or found["numpy"] is None:
            found["numpy"] = info
    return found


def _is_generic(info: dict | None) -> bool:
    arch = str((info or {}).get("architecture") or "").lower()
    return arch in GENERIC_BLAS_KERNELS


#: ``auto`` takes the bfloat16 shortlist from this many database rows and queries on, where
#: the measured bfloat16 GEMM beats float32 (:mod:`harness.gemm_rates`): measured 1.41x the
#: numpy backend at 1.6M rows and 2.04x at 6.4M on a Xeon with AMX, 1.29x at 1M and 1.64x at
#: 6.4M on an AMD EPYC with AVX-512 BF16 (1,000 queries, 4096-D, top-100, 2 cores); below ~1M
#: rows the window holds too many pairs to pay off.
BF16_AUTO_MIN_ROWS = 1_000_000
BF16_AUTO_MIN_QUERIES = 100
#: The bfloat16 GEMM must run this many times the best float32 kernel's rate: the shortlist
#: re-scores pairs and searches early blocks in float32 (AMD EPYC, AVX-512 BF16: 2.2x raw
#: gave 1.3-1.6x end to end; a CPU that emulates bfloat16 measures below 1x).
BF16_AUTO_MIN_SPEEDUP = 1.6


def bf16_shortlist_pays(database_rows: int | None, num_queries: int | None, rates,
                        torch_available: bool) -> tuple[bool, str]:
    """Whether ``auto`` takes the ``bf16`` backend, and why, from this machine's measured
    :class:`harness.gemm_rates.KernelRates` (cached per machine: the same answer every run)."""
    if not torch_available:
        return False, "torch is not installed (the bf16 shortlist needs it)"
    if rates is None or rates.bf16 is None:
        return False, "torch has no bfloat16 GEMM on this CPU"
    measured = (f"bfloat16 GEMM {rates.bf16:.0f} GFLOP/s vs float32 {rates.float32:.0f} "
                f"(measured on this machine)")
    if rates.bf16 < BF16_AUTO_MIN_SPEEDUP * rates.float32:
        return False, f"{measured}: below {BF16_AUTO_MIN_SPEEDUP}x, the shortlist does not pay"
    if database_rows is None or num_queries is None:
        return False, "the database size is not known in advance"
    if database_rows < BF16_AUTO_MIN_ROWS or num_queries < BF16_AUTO_MIN_QUERIES:
        return False, (f"{database_rows:,} database rows x {num_queries:,} queries: below "
                       f"{BF16_AUTO_MIN_ROWS:,} x {BF16_AUTO_MIN_QUERIES} the shortlist does not pay")
    return True, (f"{database_rows:,} database rows x {num_queries:,} queries, {measured}: "
                  "exact bfloat16 shortlist, float32 re-scoring")


def cpu_backend_choice(inspect_faiss: bool = True, database_rows: int | None = None,
                       num_queries: int | None = None, rates=None) -> CpuBackendChoice:
    """Pick the CPU backend from what the BLAS libraries report and what this machine measured.

    numpy unless its BLAS runs a generic kernel while faiss's does not. faiss is never taken
    for being measured faster: its scores' last bits depend on how the database is cut into
    blocks and shards (a sharded evaluation would then differ from a single one), while the
    numpy backend's (and the bf16 shortlist's, which re-scores with them) do not. A large search
    (``database_rows`` x ``num_queries``) takes the ``bf16`` shortlist where torch's bfloat16
    GEMM measured :data:`BF16_AUTO_MIN_SPEEDUP` times numpy's float32 rate
    (:func:`bf16_shortlist_pays`). The rates (``rates``, default
    :func:`harness.gemm_rates.kernel_rates`) are measured once per machine and library
    versions and cached, so the choice does not vary from run to run.
    """
    import importlib.util

    from harness.gemm_rates import kernel_rates

    choice = _blas_backend_choice(inspect_faiss)
    if rates is None:
        rates = kernel_rates()
    pays, reason = bf16_shortlist_pays(database_rows, num_queries, rates,
                                       importlib.util.find_spec("torch") is not None)
    if not pays:
        return choice
    return dataclasses.replace(choice, backend="bf16", reason=reason)


def _blas_backend_choice(inspect_faiss: bool) -> CpuBackendChoice:
    libs = blas_libraries(load_faiss=False)
    if inspect_faiss or _is_generic(libs["numpy"]):
        libs = blas_libraries(load_faiss=True)
    numpy_blas, faiss_blas = libs["numpy"], libs["faiss"]
    if faiss_blas is None and not inspect_faiss and not _is_generic(numpy_blas):
        return CpuBackendChoice("numpy", "numpy's BLAS runs an optimised kernel "
                                f"({_blas_description(numpy_blas)})", _blas_description(numpy_blas), "not inspected")
    described = (_blas_description(numpy_blas), _blas_description(faiss_blas))
    if faiss_blas is None:
        return CpuBackendChoice("numpy", "faiss is not installed or bundles no BLAS", *described)
    if _is_generic(faiss_blas) and not _is_generic(numpy_blas):
        reason = (
            f"faiss's bundled OpenBLAS runs the generic {faiss_blas.get('architecture')} kernel "
            f"on this CPU (numpy's runs {numpy_blas.get('architecture') if numpy_blas else '?'})"
        )
        return CpuBackendChoice("numpy", reason, *described)
    if _is_generic(numpy_blas) and not _is_generic(faiss_blas):
        return CpuBackendChoice("faiss-cpu", "numpy's BLAS runs a generic kernel", *described)
    return CpuBackendChoice("numpy", "numpy GEMM with exact selection (deterministic ties)", *described)


_WARNED_GENERIC: list[bool] = []


def resolve_backend(ngpu: int = -1, cpu_backend: str = "auto", query_batch_rows: int | None = None,
                    *, database_rows: int | None = None, num_queries: int | None = None) -> SearchBackend:
    """The backend for ``ngpu`` (-1 all GPUs, 0 CPU, n GPUs) with a CPU fallback; the sizes
    let ``auto`` decide whether the bfloat16 shortlist pays (:func:`cpu_backend_choice`)."""
    if ngpu != 0:
        if faiss_gpu_count() > 0:
            return get_backend("faiss-gpu", ngpu=ngpu, query_batch_rows=query_batch_rows)
        if torch_gpu_count() > 0:
            logger.info("faiss has no GPU build here: searching with torch on CUDA")
            return get_backend("torch-cuda", ngpu=ngpu, query_batch_rows=query_batch_rows)
        if ngpu > 0:
            logger.warning("ngpu=%d asked for, but no GPU is usable (faiss or torch): searching on the CPU", ngpu)
    if cpu_backend == "auto":
        choice = cpu_backend_choice(inspect_faiss=False, database_rows=database_rows,
                                    num_queries=num_queries)
        logger.log(logging.INFO if choice.backend != "numpy" else logging.DEBUG,
                   "CPU backend %s: %s", choice.backend, choice.reason)
        cpu_backend = choice.backend
    if cpu_backend in ("faiss", "faiss-cpu"):
        cpu_backend = "faiss-cpu"
        if _is_generic(blas_libraries()["faiss"]) and not _WARNED_GENERIC:
            _WARNED_GENERIC.append(True)
            logger.warning(
                "faiss's bundled BLAS runs a generic kernel here (several times slower than "
                "numpy's); cpu_backend='numpy' gives the same exact results faster"
            )
    elif cpu_backend not in ("numpy", "bf16"):
        raise HarnessError(f"unknown CPU backend {cpu_backend!r}; valid: auto, numpy, faiss, bf16")
    return get_backend(cpu_backend, query_batch_rows=query_batch_rows)


# --------------------------------------------------------------------------------------------
# Search drivers


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
        from tqdm import tqdm

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
            if block.ndim != 2 or block.shape[1] != queries.shape[1] or rows.shape != (block.shape[0],):
                raise ValueError(
                    f"block of shape {block.shape} with {rows.shape} rows does not match "
                    f"queries of dim {queries.shape[1]}"
                )
            if block.dtype != np.float32 and not (block.dtype == np.float16 and backend.accepts_float16):
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


# --------------------------------------------------------------------------------------------
# Streaming from feature files


_END = object()


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
    """

    path: Path
    rows: np.ndarray
    part: str = "database"
    first_row: int = 0
    stored_rows: int | None = None


class _DatasetReader:
    """Reads row ranges of a 2-D HDF5 dataset without going through HDF5 where it can.

    Contiguous, unfiltered little-endian datasets are mapped read-only (:meth:`map_rows`: no
    copy; the kernel's page cache is the buffer) or read with ``os.preadv`` (the GIL released
    during the read). Anything else goes through ``h5py``'s ``read_direct``.
    """

    def __init__(self, path: Path, part: str):
        import h5py

        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
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
            self._file.close()
            raise
        self._fd = None
        self._offset = None
        self._mappable = False
        self.row_bytes = int(self.shape[1]) * self.dtype.itemsize
        if plain and hasattr(os, "preadv"):
            self._fd = os.open(self.path, os.O_RDONLY)
            self._offset = int(offset)
            size = os.fstat(self._fd).st_size
            if size < self._offset + self.shape[0] * self.row_bytes:
                self.close()
                raise HarnessError(
                    f"file is truncated: /{part}/descriptors needs "
                    f"{self._offset + self.shape[0] * self.row_bytes} bytes, the file has {size}",
                    self.path,
                )
            self._mappable = self.row_bytes > 0

    @property
    def data_offset(self) -> int | None:
        """File offset of row 0 (None when the dataset is read through HDF5)."""
        return self._offset if self._fd is not None else None

    def map_rows(self, start: int, stop: int, writable: bool = False) -> np.ndarray | None:
        """Rows ``start:stop`` as an array over a file mapping, or None.

        Read-only by default; with ``writable`` the mapping is private copy-on-write (the file
        never changes; consumers such as torch that refuse read-only memory accept it). The
        mapping lives as long as the array (CPython frees it with the last reference). The
        kernel is asked to read the range ahead (``MADV_WILLNEED``).
        """
        if not self._mappable or stop <= start:
            return None
        import mmap

        begin = self._offset + start * self.row_bytes
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        length = (stop - start) * self.row_bytes
        try:
            mapping = mmap.mmap(self._fd, length + (begin - aligned), offset=aligned,
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

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        assert out.shape == (stop - start, self.shape[1]) and out.dtype == self.dtype
        if self._fd is None:
            self.dataset.read_direct(out, np.s_[start:stop])
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        position = self._offset + start * self.row_bytes
        done = 0
        while done < view.nbytes:
            count = os.preadv(self._fd, [view[done:]], position + done)
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
        self._file.close()


def streams_from_mapping(path: str | os.PathLike, part: str = "database") -> bool:
    """Whether :func:`iter_feature_blocks` reads ``/part/descriptors`` of ``path`` through a
    file mapping (a plain contiguous dataset, on a platform with mmap): then its
    ``on_stored_block`` hook sees every block's stored bytes (unless mapping fails later)."""
    try:
        reader = _DatasetReader(Path(path), part)
    except Exception:  # a missing part or a damaged file: validation reports it properly
        return False
    try:
        return bool(reader._mappable)
    finally:
        reader.close()


def _touch_pages(array: np.ndarray) -> None:
    """Fault every page of a mapped array in now (in the reading thread, not in the GEMM)."""
    flat = array.reshape(-1).view(np.uint8)
    int(flat[::4096].sum())


def default_reader_threads() -> int:
    """Threads that read (widen, check) each block: one per 4 cores, at most 8."""
    return max(1, min(8, _usable_cores() // 4))


# --------------------------------------------------------------------------------------------
# float16 -> float32


#: Stored float16 bytes from which ``fp16_converter="auto"`` imports torch for widening.
TORCH_WIDEN_MIN_BYTES = 8 << 30
FP16_CONVERTERS = ("auto", "numpy", "torch")
#: Overrides ``fp16_converter="auto"`` (``numpy`` or ``torch``), e.g. for benchmarks.
FP16_CONVERTER_ENV = "HARNESS_FP16_CONVERTER"
# torch parallelises a copy above this many elements; smaller pieces stay on the calling
# (reader) thread, so the parallelism is ours and never competes with the BLAS threads.
_TORCH_SERIAL_ELEMENTS = 32_000


def _widen_numpy(stored: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, stored, casting="unsafe")


def _widen_torch(stored: np.ndarray, out: np.ndarray) -> None:
    import torch

    if not stored.flags.writeable or not stored.flags.c_contiguous or not out.flags.c_contiguous:
        np.copyto(out, stored, casting="unsafe")  # torch refuses read-only memory
        return
    source = torch.from_numpy(stored.reshape(-1))
    target = torch.from_numpy(out.reshape(-1))
    for first in range(0, source.numel(), _TORCH_SERIAL_ELEMENTS):
        target[first:first + _TORCH_SERIAL_ELEMENTS].copy_(source[first:first + _TORCH_SERIAL_ELEMENTS])


def _torch_installed() -> bool:
    import importlib.util
    import sys

    if sys.modules.get("torch") is not None:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def float16_converter(choice: str = "auto", stored_bytes: int = 0) -> Callable[[np.ndarray, np.ndarray], None]:
    """A function ``convert(stored, out)`` that widens float16 ``stored`` into float32 ``out``.

    Both conversions are exact (every float16 is a float32). numpy's cast is a scalar loop
    (~0.4 G values/s per core on the development machine, about 13% of the GEMM time of the
    same block), torch's is vectorised (~10x faster). ``auto`` takes torch when it is already
    imported, or when it is installed and ``stored_bytes`` of float16 are to be widened, at
    least :data:`TORCH_WIDEN_MIN_BYTES` (importing torch costs ~3 CPU-seconds and ~0.7 GB of
    resident memory; it saves ~50 ms of CPU per 64 MB of float16, so it pays off only at
    scale); ``$HARNESS_FP16_CONVERTER`` overrides ``auto``.
    torch is never required: without it numpy converts.
    """
    import sys

    if choice == "auto":
        choice = os.environ.get(FP16_CONVERTER_ENV, "auto") or "auto"
    if choice not in FP16_CONVERTERS:
        raise HarnessError(f"unknown float16 converter {choice!r}; valid: {', '.join(FP16_CONVERTERS)}")
    if choice == "auto":
        wanted = sys.modules.get("torch") is not None or stored_bytes >= TORCH_WIDEN_MIN_BYTES
        choice = "torch" if wanted and _torch_installed() else "numpy"
    if choice == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            logger.warning("torch is not installed: widening float16 with numpy")
            return _widen_numpy
        return _widen_torch
    return _widen_numpy


def widen_to_float32(stored: np.ndarray, converter: Callable | None = None) -> np.ndarray:
    """A float32 copy of ``stored`` (float16 widened with ``converter``, default numpy's cast)."""
    out = np.empty(stored.shape, dtype=np.float32)
    if stored.dtype == np.float16:
        (converter or _widen_numpy)(np.ascontiguousarray(stored), out)
    else:
        np.copyto(out, stored, casting="unsafe")
    return out


# --------------------------------------------------------------------------------------------
# Streaming blocks of feature files


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
    """
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    sources = list(sources)
    ring = max(1, 3 if prefetch_blocks else 1)
    reader_threads = default_reader_threads() if reader_threads is None else max(1, int(reader_threads))
    total_rows = sum(int(source.rows.size) for source in sources)

    def produce() -> Iterator[Block]:
        from concurrent.futures import ThreadPoolExecutor

        buffers: list[np.ndarray | None] = [None] * ring
        local = threading.local()
        pool = ThreadPoolExecutor(reader_threads, thread_name_prefix="harness-read") if reader_threads > 1 else None
        widen = None
        turn = 0
        try:
            for source in sources:
                reader = _DatasetReader(source.path, source.part)
                try:
                    total, dim = reader.shape
                    expected = total if source.stored_rows is None else source.stored_rows
                    # (not "first": the piece loop below uses that name)
                    begin, end = source.first_row, source.first_row + int(source.rows.size)
                    if expected != total or not 0 <= begin <= end <= total or (
                            source.stored_rows is None and source.rows.shape != (total,)):
                        raise HarnessError(
                            f"/{source.part} has {total} rows but {source.rows.shape[0]} row "
                            f"indices were given (for rows {begin}:{end} of {expected})",
                            source.path,
                        )
                    stored_dtype = reader.dtype
                    out_dtype = stored_dtype if as_stored else np.dtype(np.float32)
                    if stored_dtype == np.float16 and out_dtype == np.float32 and widen is None:
                        widen = float16_converter(fp16_converter, stored_bytes=total_rows * dim * 2)
                    # Private (writable) mappings for float16: torch widens from them.
                    writable_maps = as_stored or stored_dtype != np.float32
                    piece_rows = max(1, PIECE_BYTES // (4 * max(1, dim)))

                    def read_piece(first: int, last: int, start: int, out: np.ndarray,
                                   mapped: np.ndarray | None) -> None:
                        # One cache-sized piece: read or widen it, then check it while it is
                        # still in cache (or just fault its pages in).
                        target = out[first:last]
                        if mapped is not None:
                            if mapped is not out:
                                if out.dtype == stored_dtype:
                                    np.copyto(target, mapped[first:last])
                                else:
                                    widen(mapped[first:last], target)
                        elif out.dtype == stored_dtype:
                            reader.read(start + first, start + last, target)
                        else:
                            staging = getattr(local, "staging", None)
                            if staging is None or staging.dtype != stored_dtype or staging.shape != (piece_rows, dim):
                                staging = local.staging = np.empty((piece_rows, dim), dtype=stored_dtype)
                            piece = staging[: last - first]
                            reader.read(start + first, start + last, piece)
                            widen(piece, target)
                        if on_block is not None:
                            on_block(source, start + first, target)
                        elif mapped is out:
                            _touch_pages(target)

                    for start in range(begin, end, block_rows):
                        stop = min(end, start + block_rows)
                        n = stop - start
                        mapped = reader.map_rows(start, stop, writable=writable_maps)
                        if mapped is not None and mapped.dtype == out_dtype:
                            out = mapped  # no copy: the consumer reads the page cache
                        else:
                            buffer = buffers[turn % ring]
                            if (buffer is None or buffer.dtype != out_dtype or buffer.shape[1] != dim
                                    or buffer.shape[0] < block_rows):
                                buffer = np.empty((block_rows, dim), dtype=out_dtype)
                                buffers[turn % ring] = buffer
                            out = buffer[:n]
                        pieces = [(first, min(n, first + piece_rows)) for first in range(0, n, piece_rows)]
                        if pool is None:
                            for first, last in pieces:
                                read_piece(first, last, start, out, mapped)
                        else:
                            futures = [pool.submit(read_piece, first, last, start, out, mapped)
                                       for first, last in pieces]
                            for future in futures:
                                future.result()
                        if on_stored_block is not None and mapped is not None:
                            on_stored_block(source, reader.data_offset + start * reader.row_bytes, mapped)
                        del mapped
                        turn += 1
                        yield source.rows[start - begin:stop - begin], out
                        del out
                finally:
                    reader.close()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    if prefetch_blocks:
        yield from prefetch(produce(), depth=1)
    else:
        yield from produce()
