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
                        fp16_converter="auto", direct_io="auto")  # HDF5 files, one block ahead
    streams_from_mapping(path, part="database") -> bool    # on_stored_block sees its bytes
    float16_converter(choice="auto", stored_bytes=0)        # exact float16 -> float32 widening
    widen_to_float32(stored, converter=None) -> np.ndarray
    iter_array_blocks(database, block_rows, rows=None)
    prefetch(iterable, depth=1)                             # background producer thread
    resolve_backend(ngpu=-1, cpu_backend="auto", *, database_rows=None, num_queries=None)
    settle_kernel_rates(cpu_backend="auto", database_rows=None, num_queries=None)
                                    # measure the rates (if needed) before our threads start
    register_backend(name), get_backend(name, **options), list_backends()
    cpu_backend_choice(inspect_faiss=True, database_rows=None, num_queries=None)
        -> CpuBackendChoice(backend, reason, numpy_blas, faiss_blas)
    bf16_margins(queries), bf16_floor(values), rescore_pairs(queries, block, query_rows, columns)

Backends (chosen by ``ngpu``: -1 every visible GPU, 0 CPU only, n the first n GPUs; without a
usable GPU the search falls back to the CPU, with a warning when GPUs were asked for):

* ``numpy``: float32 GEMM through numpy's BLAS plus an exact threshold/partition selection.
  This is the CPU default: faiss-cpu wheels bundle an OpenBLAS that may not know the CPU
  (threadpoolctl reports ``architecture='Prescott'``) and then run a generic kernel about 5x
  below numpy's. :func:`cpu_backend_choice` makes that decision and says why. On 2 to 7
  BLAS threads it runs that many column workers (single-threaded GEMMs on 512-row sub-blocks,
  each selecting into its own running top-K, merged at the end: the same bits); on more, one
  multi-threaded GEMM per score batch with the selection overlapped.
* ``faiss-cpu``: ``faiss.knn`` per block (a deeper list, then exact tie repair).
* ``bf16`` (needs torch): a bfloat16 GEMM shortlists with a proven error bound and float32
  re-scores the shortlist: the exact float32 top-K, with OpenBLAS bit for bit the ``numpy``
  backend's; faster where bfloat16 GEMMs (AMX: ~3.5x, AVX-512 BF16: ~2.2x the float32 rate)
  make the shortlist cheaper and the database is large enough for the shortlist to be short
  (1.6-2x at 6.4M rows). ``auto`` takes it from 1M database rows and 100 queries where
  torch's bfloat16 GEMM measured >= 1.6x numpy's float32 on this machine
  (:func:`bf16_shortlist_pays`, :mod:`harness.gemm_rates`; see :class:`Bf16ShortlistBackend`).
* ``faiss-gpu``: ``faiss.knn_gpu`` on every selected GPU, each block split across the GPUs
  and merged exactly (float32 blocks: faiss needs the queries' dtype).
* ``torch-cuda``: the same with float32 ``torch.mm`` + ``torch.topk`` (TF32 off), used when
  faiss has no GPU build but torch sees CUDA GPUs (torch is imported only then). It takes
  float16 blocks as stored and widens them on the GPU (half the bytes over PCIe, no CPU pass).

float16 storage is always computed in float32: the widening is exact. On the CPU it is done
piece by piece in the reading threads (numpy, or torch's vectorised cast at scale when torch is
installed; see :func:`float16_converter`).

Modules (one job each)::

    topk            TopK, merge_topk, RunningTopK: the exact result and its merging
    backend         SearchBackend, its registry, the tie-repairing list/multi-GPU bases
    numpy_backend   the float32 GEMM backend (the CPU default)
    bf16            the bfloat16 shortlist backend and its error bound
    faiss_backend   faiss-cpu and faiss-gpu
    torch_cuda      torch on CUDA GPUs
    choice          which backend this machine uses (resolve_backend, cpu_backend_choice)
    driver          search_blocks / search: blocks through a backend into a running top-K
    widen           exact float16 -> float32 widening
    streaming       BlockSource, iter_feature_blocks: feature files read one block ahead
"""

from harness.hardware import faiss_gpu_count, torch_gpu_count
from harness.search.backend import (
    BACKENDS,
    DEFAULT_BLOCK_BYTES,
    DEFAULT_SCORE_BYTES,
    ListBackend,
    MultiGpuBackend,
    SearchBackend,
    SearchStats,
    get_backend,
    list_backends,
    register_backend,
    score_batch_rows,
)
from harness.search.bf16 import Bf16ShortlistBackend, bf16_floor, bf16_margins, rescore_pairs
from harness.search.choice import (
    BF16_AUTO_MIN_QUERIES,
    BF16_AUTO_MIN_ROWS,
    CpuBackendChoice,
    bf16_shortlist_pays,
    cpu_backend_choice,
    resolve_backend,
    settle_kernel_rates,
)
from harness.search.driver import (
    Block,
    default_block_rows,
    iter_array_blocks,
    search,
    search_blocks,
)
from harness.search.faiss_backend import FAISS_GPU_MAX_K, FaissCpuBackend, FaissGpuBackend
from harness.search.numpy_backend import OVERLAP_MIN_CORES, WORKER_SUB_BLOCK_ROWS, NumpyBackend
from harness.search.streaming import (
    PIECE_BYTES,
    BlockSource,
    default_reader_threads,
    iter_feature_blocks,
    prefetch,
    streams_from_mapping,
)
from harness.search.topk import INDEX_PAD, RunningTopK, TopK, merge_topk
from harness.search.torch_cuda import TorchCudaBackend
from harness.search.widen import (
    FP16_CONVERTER_ENV,
    FP16_CONVERTERS,
    TORCH_WIDEN_MIN_BYTES,
    float16_converter,
    widen_to_float32,
)

__all__ = [
    "BACKENDS", "BF16_AUTO_MIN_QUERIES", "BF16_AUTO_MIN_ROWS", "Bf16ShortlistBackend", "Block",
    "BlockSource", "CpuBackendChoice", "DEFAULT_BLOCK_BYTES", "DEFAULT_SCORE_BYTES",
    "FAISS_GPU_MAX_K", "FP16_CONVERTERS", "FP16_CONVERTER_ENV", "FaissCpuBackend",
    "FaissGpuBackend", "INDEX_PAD", "ListBackend", "MultiGpuBackend", "NumpyBackend",
    "OVERLAP_MIN_CORES", "PIECE_BYTES", "RunningTopK", "SearchBackend", "SearchStats",
    "TORCH_WIDEN_MIN_BYTES", "TopK", "TorchCudaBackend", "WORKER_SUB_BLOCK_ROWS", "bf16_floor",
    "bf16_margins",
    "bf16_shortlist_pays", "cpu_backend_choice", "default_block_rows", "default_reader_threads",
    "faiss_gpu_count", "float16_converter", "get_backend", "iter_array_blocks",
    "iter_feature_blocks", "list_backends", "merge_topk", "prefetch", "register_backend",
    "rescore_pairs", "resolve_backend", "score_batch_rows", "search", "search_blocks",
    "settle_kernel_rates", "streams_from_mapping", "torch_gpu_count", "widen_to_float32",
]
