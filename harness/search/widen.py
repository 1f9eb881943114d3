"""Exact float16 -> float32 widening (numpy's cast, or torch's vectorised one at scale)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Callable

import numpy as np

from harness.errors import HarnessError

logger = logging.getLogger(__name__)

#: Stored float16 bytes from which ``fp16_converter="auto"`` imports torch for widening.
TORCH_WIDEN_MIN_BYTES = 4 << 30
FP16_CONVERTERS = ("auto", "numpy", "torch")
#: Overrides ``fp16_converter="auto"`` (``numpy`` or ``torch``), e.g. for benchmarks.
FP16_CONVERTER_ENV = "HARNESS_FP16_CONVERTER"
# torch parallelises a copy above this many elements; smaller pieces stay on the calling
# (reader) thread, so the parallelism is ours and never competes with the BLAS threads.
_TORCH_SERIAL_ELEMENTS = 32_000


def widen_numpy(stored: np.ndarray, out: np.ndarray) -> None:
    """Widen float16 ``stored`` into float32 ``out`` with numpy's cast."""
    np.copyto(out, stored, casting="unsafe")


def widen_torch(stored: np.ndarray, out: np.ndarray) -> None:
    """Widen float16 ``stored`` into float32 ``out`` with torch's vectorised cast."""
    import torch  # optional and heavy: only when the torch converter was chosen

    if not stored.flags.writeable or not stored.flags.c_contiguous or not out.flags.c_contiguous:
        np.copyto(out, stored, casting="unsafe")  # torch refuses read-only memory
        return
    source = torch.from_numpy(stored.reshape(-1))
    target = torch.from_numpy(out.reshape(-1))
    for first in range(0, source.numel(), _TORCH_SERIAL_ELEMENTS):
        target[first : first + _TORCH_SERIAL_ELEMENTS].copy_(
            source[first : first + _TORCH_SERIAL_ELEMENTS]
        )


def torch_installed() -> bool:
    """Whether torch is imported or importable (without importing it)."""
    if sys.modules.get("torch") is not None:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def float16_converter(
    choice: str = "auto", stored_bytes: int = 0
) -> Callable[[np.ndarray, np.ndarray], None]:
    """A function ``convert(stored, out)`` that widens float16 ``stored`` into float32 ``out``.

    Both conversions are exact (every float16 is a float32). numpy's cast is a scalar loop
    (1.2 GB/s of float16 per core on a 2-core AMD EPYC, in cache or not: about 10% of a
    1,000-query search's CPU time), torch's is vectorised (10.7 GB/s in cache, 6.7 GB/s into
    memory). ``auto`` takes torch when it is already imported, or when it is installed and
    ``stored_bytes`` of float16 are to be widened, at least :data:`TORCH_WIDEN_MIN_BYTES`:
    importing torch costs 1.6 CPU-seconds and ~630 MB of resident memory, and saves 0.7 CPU-s
    per GB of float16, so it pays from ~2.4 GB (4 GiB leaves a margin). Measured end to end
    (``harness eval --cpu-backend numpy --no-checksums``, 1M x 4096 float16 in the page cache,
    2-core AMD EPYC): 48.9 s with torch against 50.6 s with numpy, 1.25 GB against 0.78 GB
    peak RSS. ``$HARNESS_FP16_CONVERTER`` overrides ``auto``.
    torch is never required: without it numpy converts.
    """
    if choice == "auto":
        choice = os.environ.get(FP16_CONVERTER_ENV, "auto") or "auto"
    if choice not in FP16_CONVERTERS:
        raise HarnessError(
            f"unknown float16 converter {choice!r}; valid: {', '.join(FP16_CONVERTERS)}"
        )
    if choice == "auto":
        wanted = sys.modules.get("torch") is not None or stored_bytes >= TORCH_WIDEN_MIN_BYTES
        choice = "torch" if wanted and torch_installed() else "numpy"
    if choice == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            logger.warning("torch is not installed: widening float16 with numpy")
            return widen_numpy
        return widen_torch
    return widen_numpy


def widen_to_float32(stored: np.ndarray, converter: Callable | None = None) -> np.ndarray:
    """A float32 copy of ``stored`` (float16 widened with ``converter``, default numpy's cast)."""
    out = np.empty(stored.shape, dtype=np.float32)
    if stored.dtype == np.float16:
        (converter or widen_numpy)(np.ascontiguousarray(stored), out)
    else:
        np.copyto(out, stored, casting="unsafe")
    return out


