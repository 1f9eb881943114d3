"""Facts about the machine an evaluation ran on: CPU, GPUs, BLAS, peak memory, GEMM speed.

Everything here is cheap and never fails: a fact that cannot be read is reported as unknown.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

logger = logging.getLogger(__name__)

#: Environment variables that change which BLAS kernel runs (reported, never changed here).
BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                 "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo`` on Linux, e.g. ``amx_bf16``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """Names of the visible NVIDIA GPUs (``nvidia-smi``), empty without any."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    names = tuple(line.strip() for line in out.splitlines() if line.strip())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip().isdigit()]
        names = tuple(names[int(i)] for i in wanted if int(i) < len(names))
    return names


def blas_summary() -> str:
    """numpy's BLAS (and faiss's, if faiss is imported), e.g. ``numpy: openblas 0.3.31 kernel=SkylakeX``."""
    from harness.search import _blas_description, blas_libraries

    libs = blas_libraries(load_faiss=False)
    parts = [f"numpy: {_blas_description(libs['numpy'])}"]
    if libs["faiss"] is not None:
        parts.append(f"faiss: {_blas_description(libs['faiss'])}")
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if env:
        parts.append(" ".join(f"{k}={v}" for k, v in env.items()))
    return "; ".join(parts)


def blas_environment() -> dict[str, str]:
    """The BLAS-related environment variables that are set."""
    return {k: os.environ[k] for k in BLAS_ENV_VARS if k in os.environ}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes).

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own
    address space (``ru_maxrss`` would carry a parent's peak across fork + exec).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes
    except (ImportError, OSError):
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def reset_peak_rss() -> bool:
    """Restart the peak-memory high-water mark of this process (Linux ``clear_refs``).

    ``evaluate`` calls it first, so that its record states the evaluation's own peak, not
    whatever the process did before (a demo that trained models in the same process).
    Returns whether it could: where not, :func:`peak_rss_bytes` stays the process's peak.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def machine_description(gpus: bool = False) -> str:
    """``CPU model (n cores)``, or the GPUs' names when ``gpus`` (a GPU search backend)."""
    names = gpu_names() if gpus else ()
    if names:
        return ", ".join(names)
    return f"{cpu_model()} ({cpu_cores()} cores)"


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def measure_gemm_gflops(rows_a: int, rows_b: int, dim: int, repeats: int = 3, seed: int = 0,
                        streaming_bytes: int = 0) -> float:
    """Best-of-``repeats`` float32 GFLOP/s of numpy ``a @ b.T`` for (rows_a, dim) x (rows_b, dim).

    The reference "peak" for benchmarks: the GEMM shape the evaluator runs, in memory. With
    ``streaming_bytes`` > 0 each product takes a different ``b`` from a rotation of that many
    bytes (more than the CPU caches hold), as a streaming search does; otherwise ``b`` stays
    the same and cache-hot, which no search over a database can match.
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows_a, dim), dtype=np.float32)
    count = max(1, streaming_bytes // (4 * rows_b * dim)) if streaming_bytes else 1
    b = rng.standard_normal((count * rows_b, dim), dtype=np.float32)
    out = np.empty((rows_a, rows_b), dtype=np.float32)
    np.matmul(a, b[:rows_b].T, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for block in range(count):
            np.matmul(a, b[block * rows_b:(block + 1) * rows_b].T, out=out)
        best = min(best, (time.perf_counter() - start) / count)
    return 2.0 * rows_a * rows_b * dim / best / 1e9


def hardware_facts() -> dict:
    """The hardware section of a result record."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "gpus": list(gpu_names()),
        "blas": blas_summary(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
