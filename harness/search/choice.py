"""Which backend searches on this machine: GPUs first, then the CPU backend the BLAS facts
and the machine's measured kernel rates favour.

The rates are measured once per machine and cached (:mod:`harness.gemm_rates`), so the
choice does not vary from run to run; and the only backend they can select, the bf16
shortlist, ranks with the numpy backend's bits.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass

from harness import hardware
from harness.errors import HarnessError
from harness.gemm_rates import kernel_rates
from harness.hardware import blas_description, blas_libraries, is_generic_blas
from harness.search.backend import SearchBackend, get_backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuBackendChoice:
    """Which CPU backend ``cpu_backend="auto"`` picks, and why."""

    backend: str
    reason: str
    numpy_blas: str
    faiss_blas: str



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


def large_enough_for_bf16(database_rows: int | None, num_queries: int | None) -> bool:
    """Whether a search of this size is one where ``auto`` may take the bf16 shortlist (and so
    needs this machine's kernel rates)."""
    return (database_rows is not None and num_queries is not None
            and database_rows >= BF16_AUTO_MIN_ROWS and num_queries >= BF16_AUTO_MIN_QUERIES)


def bf16_shortlist_pays(database_rows: int | None, num_queries: int | None, rates,
                        torch_available: bool) -> tuple[bool, str]:
    """Whether ``auto`` takes the ``bf16`` backend, and why, from this machine's measured
    :class:`harness.gemm_rates.KernelRates` (cached per machine: the same answer every run)."""
    if not torch_available:
        return False, "torch is not installed (the bf16 shortlist needs it)"
    if database_rows is None or num_queries is None:
        return False, "the database size is not known in advance"
    if not large_enough_for_bf16(database_rows, num_queries):
        return False, (
            f"{database_rows:,} database rows x {num_queries:,} queries: below "
            f"{BF16_AUTO_MIN_ROWS:,} x {BF16_AUTO_MIN_QUERIES} the shortlist does not pay"
        )
    if rates is None or rates.bf16 is None:
        return False, "torch has no bfloat16 GEMM on this CPU"
    measured = (f"bfloat16 GEMM {rates.bf16:.0f} GFLOP/s vs float32 {rates.float32:.0f} "
                f"(measured on this machine)")
    if rates.bf16 < BF16_AUTO_MIN_SPEEDUP * rates.float32:
        return False, f"{measured}: below {BF16_AUTO_MIN_SPEEDUP}x, the shortlist does not pay"
    return True, (f"{database_rows:,} database rows x {num_queries:,} queries, {measured}: "
                  "exact bfloat16 shortlist, float32 re-scoring")


def settle_kernel_rates(cpu_backend: str = "auto", database_rows: int | None = None,
                        num_queries: int | None = None) -> None:
    """Load or measure this machine's kernel rates now where ``auto`` will need them (a search
    large enough for the bf16 shortlist): an evaluation calls it before it starts its hashing
    and ground-truth threads, since the first measurement is cached for the machine. Beside a
    sha256 thread the probe measured float32 at 50-82 GFLOP/s and a bfloat16/float32 ratio of
    1.95-3.78, against 101-114 and 2.02-2.23 idle (2-core AMD EPYC)."""
    if cpu_backend == "auto" and large_enough_for_bf16(database_rows, num_queries):
        kernel_rates()


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
    choice = _blas_backend_choice(inspect_faiss)
    if choice.backend != "numpy":
        return choice
    if rates is None and large_enough_for_bf16(database_rows, num_queries):
        rates = kernel_rates()  # measured (once per machine) only where they can matter
    pays, reason = bf16_shortlist_pays(database_rows, num_queries, rates,
                                       importlib.util.find_spec("torch") is not None)
    if not pays:
        return choice
    return dataclasses.replace(choice, backend="bf16", reason=reason)


def _blas_backend_choice(inspect_faiss: bool) -> CpuBackendChoice:
    libs = blas_libraries(load_faiss=False)
    if inspect_faiss or is_generic_blas(libs["numpy"]):
        libs = blas_libraries(load_faiss=True)
    numpy_blas, faiss_blas = libs["numpy"], libs["faiss"]
    if faiss_blas is None and not inspect_faiss and not is_generic_blas(numpy_blas):
        return CpuBackendChoice(
            "numpy",
            f"numpy's BLAS runs an optimised kernel ({blas_description(numpy_blas)})",
            blas_description(numpy_blas),
            "not inspected",
        )
    described = (blas_description(numpy_blas), blas_description(faiss_blas))
    if faiss_blas is None:
        return CpuBackendChoice("numpy", "faiss is not installed or bundles no BLAS", *described)
    if is_generic_blas(faiss_blas) and not is_generic_blas(numpy_blas):
        reason = (
            f"faiss's bundled OpenBLAS runs the generic {faiss_blas.get('architecture')} kernel "
            f"on this CPU (numpy's runs {numpy_blas.get('architecture') if numpy_blas else '?'})"
        )
        return CpuBackendChoice("numpy", reason, *described)
    if is_generic_blas(numpy_blas) and not is_generic_blas(faiss_blas):
        return CpuBackendChoice("faiss-cpu", "numpy's BLAS runs a generic kernel", *described)
    return CpuBackendChoice(
        "numpy", "numpy GEMM with exact selection (deterministic ties)", *described
    )


_WARNED_GENERIC: list[bool] = []


def resolve_backend(
    ngpu: int = -1,
    cpu_backend: str = "auto",
    query_batch_rows: int | None = None,
    *,
    database_rows: int | None = None,
    num_queries: int | None = None,
) -> SearchBackend:
    """The backend for ``ngpu`` (-1 all GPUs, 0 CPU, n GPUs) with a CPU fallback; the sizes
    let ``auto`` decide whether the bfloat16 shortlist pays (:func:`cpu_backend_choice`)."""
    if ngpu != 0:
        if hardware.faiss_gpu_count() > 0:
            return get_backend("faiss-gpu", ngpu=ngpu, query_batch_rows=query_batch_rows)
        if hardware.torch_gpu_count() > 0:
            logger.info("faiss has no GPU build here: searching with torch on CUDA")
            return get_backend("torch-cuda", ngpu=ngpu, query_batch_rows=query_batch_rows)
        if ngpu > 0:
            logger.warning(
                "ngpu=%d asked for, but no GPU is usable (faiss or torch): searching on the CPU",
                ngpu,
            )
    if cpu_backend == "auto":
        choice = cpu_backend_choice(inspect_faiss=False, database_rows=database_rows,
                                    num_queries=num_queries)
        logger.log(logging.INFO if choice.backend != "numpy" else logging.DEBUG,
                   "CPU backend %s: %s", choice.backend, choice.reason)
        cpu_backend = choice.backend
    if cpu_backend in ("faiss", "faiss-cpu"):
        cpu_backend = "faiss-cpu"
        if is_generic_blas(blas_libraries()["faiss"]) and not _WARNED_GENERIC:
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
