"""The ``bf16`` backend: an exact top-K through a bfloat16 shortlist with a proven error bound.

torch is imported inside the functions that need it: it is an optional dependency (the
``methods`` extra) and costs seconds to import.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from harness.errors import HarnessError
from harness.hardware import usable_cores
from harness.search.backend import SearchBackend, register_backend
from harness.search.numpy_backend import NumpyBackend

logger = logging.getLogger(__name__)

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
    import torch  # optional (the methods extra) and heavy: only when this path runs

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
    import torch  # optional (the methods extra) and heavy: only when this path runs

    return torch.from_numpy(np.ascontiguousarray(bits, dtype=np.int16)).view(torch.bfloat16)


#: Pairs per float32 GEMM tile when re-scoring: OpenBLAS computes a tile of at least 16 x 16
#: with the kernels and summation order of a large GEMM (smaller products take other paths).
_RESCORE_TILE = 16
#: Pairs gathered at a time when re-scoring (2 x 4 MB: large gathers cost more in page faults).
_RESCORE_CHUNK = 256
#: Threads that re-score a block's pairs, each with a single-threaded BLAS (at most): a 16 x 16
#: tile product is too small to split over BLAS threads. 10,000 pairs against an 8,192-row
#: block took 57.1 ms on two single-threaded workers, 100.4 ms through a 2-thread BLAS (2-core
#: AMD EPYC, ``benchmarks/shortlist.py``); every pair's bits are the same either way.
RESCORE_WORKERS_MAX = 8


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
    Needs torch; ``cpu_backend="bf16"``, or ``auto`` on large searches
    (:func:`bf16_shortlist_pays`).
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
    #: Queries (spread over the query set) whose every pair with the first block checks the
    #: bound: a kernel that breaks it (e.g. accumulating in bfloat16) does so for most pairs.
    #: All 1,000 queries x 8,192 rows took 2.5 s of float64 work at 4096-D (2-core AMD EPYC),
    #: against 0.57 s for the block's two GEMMs.
    check_queries = 256

    def __init__(self, query_batch_rows: int | None = None, selection_threads: int | None = None):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise HarnessError("cpu_backend 'bf16' needs torch (pip install torch)") from None
        self._exact = NumpyBackend(query_batch_rows, selection_threads, overlap=False,
                                   workers=1)
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
        self.rescore_workers = min(RESCORE_WORKERS_MAX, usable_cores())
        self.parallel_rescores = 0
        self._rescore_pool = None
        self._blas = None

    def describe(self) -> str:
        return "bf16 shortlist + float32 re-scoring" + (
            " (fell back to float32)" if self.fallback else ""
        )

    def prepare(self, queries, k):
        import torch  # optional (the methods extra) and heavy: only when this path runs

        self._queries_bf16 = torch.from_numpy(np.ascontiguousarray(queries)).to(torch.bfloat16)
        self._margins = bf16_margins(queries)
        self._block_buffer = self._score_buffer = None  # sized for this search's queries

    def finish(self):
        self._exact.finish()
        self._block_buffer = self._score_buffer = None
        if self._rescore_pool is not None:
            self._rescore_pool.shutdown(wait=True)
            self._rescore_pool = None
        if self.shortlisted_blocks:
            logger.info(
                "bf16 shortlist: %d blocks shortlisted, %d in float32; %d pairs re-scored "
                "(%.4f%% of the shortlisted pairs)",
                self.shortlisted_blocks,
                self.exact_blocks,
                self.candidates,
                100.0 * self.candidates / max(1, self.shortlisted_pairs),
            )

    def _approximate(self, block: np.ndarray):
        """bfloat16 scores (Q, b) of every query against ``block`` (a torch tensor)."""
        import torch  # optional and heavy: only when this backend runs

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
        import torch  # optional (the methods extra) and heavy: only when this path runs

        norms = torch.linalg.vector_norm(torch.from_numpy(block), dim=1)
        # float32 sums of squares and the square root: a relative error well below 1e-3.
        return float(norms.max()) * (1 + 4 * _fp32_sum_bound(block.shape[1])) + _FLUSHED

    def _check_bound(self, queries, block) -> None:
        """Check the cut's guarantee pair by pair on one block against float32 scores, for
        :attr:`check_queries` queries spread over the query set."""
        import torch  # optional (the methods extra) and heavy: only when this path runs

        self.checked = True
        approximate = self._approximate(block)
        norms = np.linalg.norm(block.astype(np.float64), axis=1)
        worst = 0.0
        sample = np.random.default_rng(0)
        count = queries.shape[0]
        chosen = np.unique(np.linspace(0, count - 1, min(count, self.check_queries))
                           .round().astype(np.int64))
        for first in range(0, chosen.size, 64):  # float64 temporaries of 64 queries at a time
            some = chosen[first:first + 64]
            found = approximate.index_select(0, torch.from_numpy(some)).double().numpy()
            exact = queries[some] @ block.T
            if self.bitwise:
                local = np.sort(sample.integers(0, some.size, 32))
                columns = sample.integers(0, block.shape[0], 32)
                rescored = rescore_pairs(queries, block, some[local], columns)
                if not np.array_equal(rescored, exact[local, columns]):
                    self.bitwise = False
                    logger.info("this BLAS's small products differ from its large ones in the last "
                                "bits: re-scoring with dot products (rankings exact up to float32 "
                                "rounding, not bit for bit those of the numpy backend)")
            exact = exact.astype(np.float64)
            slack = np.outer(self._margins[some], norms) + _FLUSHED
            low = _bf16_from_bits(bf16_floor(exact - slack)).double().numpy()
            high = -_bf16_from_bits(bf16_floor(-(exact + slack))).double().numpy()
            worst = max(worst, float(np.maximum(low - found, found - high).max()))
        if worst > 0:
            self.fallback = True
            logger.warning("bfloat16 scores exceed their error bound on this machine (by %.3g): "
                           "searching in float32 instead", worst)

    def add_block(self, state, queries, block, rows):
        if self.fallback or self._backoff > 0 or not state.full.all():
            if not self.checked and not self.fallback:
                self._check_bound(queries, block)
            self._backoff = max(0, self._backoff - 1)
            self.exact_blocks += 1
            self._exact.add_block(state, queries, block, rows)
            return
        import torch  # optional (the methods extra) and heavy: only when this path runs

        self.shortlisted_blocks += 1
        k = state.k
        approximate = self._approximate(block)
        self.shortlisted_pairs += approximate.numel()
        thresholds = state.scores[:, k - 1].astype(np.float64)
        cut = _bf16_from_bits(
            bf16_floor(thresholds - self._margins * self._max_norm(block) - _FLUSHED)
        )
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
        exact = self._rescore(queries, block, query_rows, columns)
        state.add_candidates(slice(0, state.scores.shape[0]), query_rows, exact, rows[columns])

    def _rescore(self, queries, block, query_rows, columns) -> np.ndarray:
        """:func:`rescore_pairs` over :attr:`rescore_workers` threads (same bits: a pair's score
        does not depend on the pairs beside it)."""
        n = query_rows.size
        workers = min(self.rescore_workers, n // _RESCORE_CHUNK)
        if workers < 2:
            return rescore_pairs(queries, block, query_rows, columns, as_gemm=self.bitwise)
        if self._rescore_pool is None:
            from threadpoolctl import ThreadpoolController

            self._rescore_pool = ThreadPoolExecutor(self.rescore_workers,
                                                    thread_name_prefix="harness-rescore")
            # Limiting through a controller made once costs microseconds, not a library scan.
            self._blas = ThreadpoolController().select(user_api="blas")
        bounds = np.linspace(0, n, workers + 1).astype(int)
        self.parallel_rescores += 1
        with self._blas.limit(limits=1):
            parts = list(self._rescore_pool.map(
                lambda first, last: rescore_pairs(queries, block, query_rows[first:last],
                                                  columns[first:last], as_gemm=self.bitwise),
                bounds[:-1], bounds[1:],
            ))
        return np.concatenate(parts)
