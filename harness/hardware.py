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
import psutil
from threadpoolctl import threadpool_info

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


def usable_cores() -> int:
    """Cores this process may run on, at least 1."""
    return max(1, cpu_cores())


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is installed (cheap: no CUDA library is loaded)."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(shutil.which("nvidia-smi"))


def torch_gpu_count() -> int:
    """CUDA GPUs torch sees (0 without torch or a driver; torch is imported only with a driver)."""
    if not nvidia_driver_present():
        return 0
    try:
        import torch  # optional and heavy: imported only on a machine with a GPU driver
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def faiss_gpu_count() -> int:
    """GPUs that faiss can use (0 without faiss, with a CPU build, or without a GPU).

    faiss is imported only on a machine with an NVIDIA driver.
    """
    if not nvidia_driver_present():
        return 0
    try:
        import faiss  # optional (cpu/gpu extras): imported only on a machine with a GPU driver
    except ImportError:
        return 0
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


#: OpenBLAS kernels that mean "this build did not recognise the CPU".
GENERIC_BLAS_KERNELS = ("prescott", "generic", "core2", "katmai", "coppermine", "northwood",
                        "banias")


def blas_description(info: dict | None) -> str:
    """One line for a threadpoolctl BLAS record (``openblas 0.3.31 kernel=SkylakeX threads=2``)."""
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
    if load_faiss:
        try:
            import faiss  # noqa: F401  (optional; loads its BLAS so threadpoolctl sees it)
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


def is_generic_blas(info: dict | None) -> bool:
    """Whether a BLAS record reports a generic kernel (a build that did not know the CPU)."""
    arch = str((info or {}).get("architecture") or "").lower()
    return arch in GENERIC_BLAS_KERNELS


def blas_summary() -> str:
    """numpy's BLAS (and faiss's, if faiss is imported), e.g.
    ``numpy: openblas 0.3.31 kernel=SkylakeX``."""
    libs = blas_libraries(load_faiss=False)
    parts = [f"numpy: {blas_description(libs['numpy'])}"]
    if libs["faiss"] is not None:
        parts.append(f"faiss: {blas_description(libs['faiss'])}")
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if env:
        parts.append(" ".join(f"{k}={v}" for k, v in env.items()))
    return "; ".join(parts)


def blas_environment() -> dict[str, str]:
    """The BLAS-related environment variables that are set."""
    return {k: os.environ[k] for k in BLAS_ENV_VARS if k in os.environ}


def available_memory_bytes() -> int | None:
    """Memory the system could give without swapping, page cache included (``MemAvailable``),
    or None where it cannot be asked."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


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
        import resource  # POSIX only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes
    except (ImportError, OSError):
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
    """Resident memory of this process now (bytes)."""
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
