"""Measured speed of the CPU kernels the search can use on this machine, cached per machine.

``--cpu-backend auto`` picks the kernel by measuring, not by CPU flags: a flag says what the
hardware could do, not what the installed numpy, faiss and torch builds actually do with it
(numpy's OpenBLAS and faiss's bundled OpenBLAS pick different kernels on the same CPU; torch
runs bfloat16 GEMMs with AMX or AVX-512 BF16 only where its oneDNN supports them).

:func:`kernel_rates` times, once per machine, on the shape the search runs (a query batch
against a database block, 4096-D):

* ``float32``: numpy ``queries @ block.T`` plus the top-100 selection (the numpy backend);
* ``faiss``: ``faiss.IndexFlatIP.search`` of the same (its GEMM and heap; faiss installed);
* ``bf16``: torch's bfloat16 GEMM of the same shape (the bf16 shortlist's first pass; torch
  installed), without its re-scoring.

The figures are cached as JSON under ``$HARNESS_CACHE_DIR`` (default
``~/.cache/iovpr-harness``) in a file named by a key of the CPU model, its flags, the cores
this process may use and the versions of numpy, its BLAS, faiss and torch: another machine,
or an upgrade, measures again. Figures measured while the machine is busy (load average above
its cores plus one) serve that run only and are not cached. A cache that cannot be read or
written is ignored (measured again, with a warning); nothing here ever fails the evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from harness.hardware import blas_summary, cpu_cores, cpu_flags, cpu_model
from harness.io import write_json_atomic

logger = logging.getLogger(__name__)

CACHE_ENV = "HARNESS_CACHE_DIR"
RATES_FORMAT_VERSION = 1
#: the timed shape: queries x database rows x dimension (2.1 GFLOP per product)
PROBE_QUERIES, PROBE_ROWS, PROBE_DIM, PROBE_K = 256, 1024, 4096, 100


@dataclasses.dataclass(frozen=True)
class KernelRates:
    """GFLOP/s of each kernel on this machine (``None``: not installed or not usable)."""

    float32: float
    faiss: float | None
    bf16: float | None
    key: str
    measured_at: str
    cached: bool = False

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("cached")
        data["format_version"] = RATES_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data) -> KernelRates:
        """Validated; ``ValueError`` for anything that is not a rates file of this format."""
        if not isinstance(data, dict) or data.get("format_version") != RATES_FORMAT_VERSION:
            raise ValueError("not a kernel-rates file of this format")

        def rate(name, optional):
            value = data.get(name)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            return float(value)

        if not isinstance(data.get("key"), str) or not isinstance(data.get("measured_at"), str):
            raise ValueError("key and measured_at must be strings")
        return cls(rate("float32", False), rate("faiss", True), rate("bf16", True),
                   data["key"], data["measured_at"], cached=True)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "iovpr-harness")


def machine_key() -> str:
    """What the rates depend on: CPU, usable cores, library builds (16 hex digits)."""
    parts = [cpu_model(), " ".join(sorted(cpu_flags())), str(cpu_cores()), np.__version__,
             _blas_text()]
    for module in ("faiss", "torch"):
        parts.append(f"{module} {_version(module)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _version(module: str) -> str:
    names = {"faiss": ("faiss-cpu", "faiss-gpu", "faiss"), "torch": ("torch",)}[module]
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def _blas_text() -> str:
    try:
        return blas_summary()
    except (ImportError, OSError, RuntimeError, ValueError):  # only a weaker key
        return "unknown"


def kernel_rates(refresh: bool = False, **probe) -> KernelRates:
    """This machine's rates: from the cache, else measured (about a second) and cached.

    ``probe``: shape overrides for :func:`measure_rates` (tests use a small one).
    """
    key = machine_key()
    path = cache_dir() / f"kernel-rates-{key}.json"
    if not refresh and path.is_file():
        try:
            rates = KernelRates.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if rates.key == key:
                return rates
        except (OSError, ValueError) as exc:
            logger.warning("%s: unreadable kernel-rates cache (%s): measuring again", path, exc)
    busy, load = machine_busy()
    rates = measure_rates(key, **probe)
    if busy:
        # Other work skews the kernels' ratios (a loaded 2-core machine measured a 5.3x
        # bfloat16/float32 ratio against 2.2x idle): use the figures for this run only.
        logger.info("load average %.1f on %d cores: kernel rates measured for this run, not "
                    "cached", load, cpu_cores())
        return rates
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, rates.to_dict())
    except OSError as exc:
        logger.warning("cannot cache the kernel rates in %s (%s)", path, exc)
    return rates


#: A machine whose 1-minute load average exceeds its usable cores by more than this is
#: busy: its measured rates are not cached.
BUSY_EXTRA_LOAD = 1.0


def machine_busy() -> tuple[bool, float]:
    """(whether other work loads this machine now, the 1-minute load average)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return False, 0.0
    return load > cpu_cores() + BUSY_EXTRA_LOAD, load


def measure_rates(key: str = "", repeats: int = 5, queries: int = PROBE_QUERIES,
                  rows: int = PROBE_ROWS, dim: int = PROBE_DIM) -> KernelRates:
    """Time each kernel on random data of the probe's shape, interleaved ``repeats`` times
    (best of each): a machine loaded by other work slows all of them alike."""
    rng = np.random.default_rng(0)
    k = min(PROBE_K, rows)
    flop = 2.0 * queries * rows * dim
    queries = rng.standard_normal((queries, dim), dtype=np.float32)
    block = rng.standard_normal((rows, dim), dtype=np.float32)
    scores = np.empty((queries.shape[0], rows), dtype=np.float32)

    def numpy_step():
        np.matmul(queries, block.T, out=scores)
        np.argpartition(scores, -k, axis=1)[:, -k:]

    steps = {"float32": numpy_step, "faiss": _faiss_step(queries, block, k),
             "bf16": _bf16_step(queries, block)}
    steps = {name: step for name, step in steps.items() if step is not None}
    best = {name: float("inf") for name in steps}
    for step in steps.values():
        step()  # warm-up: threads, kernels, page faults
    for _ in range(max(1, repeats)):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - started)
    rates = {name: flop / max(seconds, 1e-9) / 1e9 for name, seconds in best.items()}
    measured = KernelRates(rates["float32"], rates.get("faiss"), rates.get("bf16"), key,
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    logger.info("kernel rates on this machine (GFLOP/s): float32 numpy %.0f, faiss %s, "
                "bf16 torch %s", measured.float32, _text(measured.faiss), _text(measured.bf16))
    return measured


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _faiss_step(queries, block, k):
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(block.shape[1])
    index.add(block)
    return lambda: index.search(queries, k)


def _bf16_step(queries, block):
    try:
        import torch
    except ImportError:
        return None
    left = torch.from_numpy(queries).to(torch.bfloat16)
    right = torch.from_numpy(block).to(torch.bfloat16)
    out = torch.empty((queries.shape[0], block.shape[0]), dtype=torch.bfloat16)

    def step():
        torch.matmul(left, right.T, out=out)

    try:
        step()
    except RuntimeError as exc:  # a torch build without a CPU bfloat16 GEMM
        logger.info("no bfloat16 GEMM in torch %s on this CPU (%s)", torch.__version__, exc)
        return None
    return step
