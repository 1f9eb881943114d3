"""The faiss backends: ``faiss-cpu`` (``faiss.knn`` per block), ``faiss-gpu`` (``faiss.knn_gpu``).

faiss is imported inside the backends: it comes through the optional ``cpu``/``gpu`` extras.
"""

from __future__ import annotations

from harness.hardware import faiss_gpu_count
from harness.search.backend import ListBackend, MultiGpuBackend, register_backend

#: faiss GPU k-selection handles at most this many results per query.
FAISS_GPU_MAX_K = 2048


@register_backend("faiss-cpu")
class FaissCpuBackend(ListBackend):
    """``faiss.knn`` (inner product) on the CPU, with faiss's bundled BLAS."""

    def __init__(self, query_batch_rows: int | None = None):
        import faiss  # noqa: F401  (fail early when the cpu extra is missing)

        self.query_batch_rows = query_batch_rows

    def add_block(self, state, queries, block, rows):
        import faiss  # optional (the cpu/gpu extras): only when this backend runs

        k = state.k
        depth = min(block.shape[0], k + self.margin)
        distances, labels = faiss.knn(queries, block, depth, metric=faiss.METRIC_INNER_PRODUCT)
        part = self._to_topk(distances, labels, rows)
        part = self._repair_ties(state, queries, block, rows, part, k, depth)
        state.add_topk(slice(0, queries.shape[0]), part)



@register_backend("faiss-gpu")
class FaissGpuBackend(MultiGpuBackend):
    """``faiss.knn_gpu`` on ``ngpu`` GPUs: each block is split across them, merged exactly."""

    max_k = FAISS_GPU_MAX_K

    def __init__(self, ngpu: int = -1, query_batch_rows: int | None = None):
        import faiss  # optional (the cpu/gpu extras): only when this backend runs

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
        import faiss  # optional (the cpu/gpu extras): only when this backend runs

        return faiss.knn_gpu(
            self._resources[slot], self._queries, sub_block, depth,
            metric=faiss.METRIC_INNER_PRODUCT, device=self.devices[slot],
        )

