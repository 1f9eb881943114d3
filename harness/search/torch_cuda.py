"""The ``torch-cuda`` backend: float32 ``torch.mm`` + ``torch.topk`` on CUDA GPUs.

torch is imported inside the backend: it is optional (the ``methods`` extra) and heavy.
"""

from __future__ import annotations

import numpy as np

from harness.hardware import torch_gpu_count
from harness.search.backend import MultiGpuBackend, register_backend


@register_backend("torch-cuda")
class TorchCudaBackend(MultiGpuBackend):
    """float32 ``torch.mm`` + ``torch.topk`` on CUDA GPUs (used when faiss has no GPU build).

    TF32 is switched off for the products: scores are full float32, as on the CPU. float16
    blocks are uploaded as stored and widened to float32 on the GPU (exact, as on the CPU).
    """

    max_k = 1 << 20
    accepts_float16 = True

    def __init__(self, ngpu: int = -1, query_batch_rows: int | None = None):
        import torch  # noqa: F401  (optional: fail early without it)

        available = torch_gpu_count()
        if available < 1:
            raise RuntimeError("torch sees no CUDA GPU")
        self.devices = list(range(available if ngpu < 0 else min(ngpu, available)))
        self._queries = []
        self._pool = None

    def prepare(self, queries, k):
        import torch  # optional (the methods extra) and heavy: only when this path runs

        # Full float32 products (TF32 would change scores in the 4th digit); restored in finish().
        self._tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        host = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        self._queries = [host.to(f"cuda:{d}") for d in self.devices]

    def finish(self):
        import torch  # optional (the methods extra) and heavy: only when this path runs

        torch.backends.cuda.matmul.allow_tf32 = getattr(
            self, "_tf32", torch.backends.cuda.matmul.allow_tf32
        )
        self._queries = []

    def _search_device(self, slot, sub_block, depth):
        import torch  # optional (the methods extra) and heavy: only when this path runs

        device = torch.device("cuda", self.devices[slot])
        with torch.no_grad():
            block = torch.from_numpy(np.ascontiguousarray(sub_block)).to(device)
            if block.dtype != torch.float32:
                block = block.float()  # float16 -> float32 is exact
            scores = self._queries[slot] @ block.T
            values, labels = torch.topk(scores, depth, dim=1, largest=True, sorted=True)
            return values.cpu().numpy(), labels.cpu().numpy()

