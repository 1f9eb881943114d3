"""Exact search at Outdoor-Ams scale, and the seed's evaluation path side by side.

Default run (the issue's target): a synthetic database of 6.4M x 4096 float16 descriptors
(52 GB in HDF5 shards) against 1,000 queries, exact top-100, through ``harness.evaluate``
exactly as ``harness eval`` runs it (validation, streamed value checks, sha256 of every file,
Recall@N, the record). It prints wall time, vectors/s, GFLOP/s, the ratio to this machine's
float32 GEMM peak measured in the same run (just before and just after), the peak RSS beyond
what the process held before the evaluation (interpreter, libraries, the loaded split), and
the machine's load average::

    python benchmarks/scale.py                        # 6.4M rows: needs ~53 GB of free disk
    python benchmarks/scale.py --rows 200000          # everyday run (1.6 GB), extrapolated
    python benchmarks/scale.py --compare-seed         # 500k x 4096 float32: seed vs harness
    python benchmarks/scale.py --rows 200000 --ngpu -1   # on GPUs (faiss-gpu or torch-cuda)
    python benchmarks/scale.py --cpu-backend numpy,bf16  # both on the same data, side by side
    python benchmarks/scale.py --direct-io on,off        # read past the page cache, or mapped

With several ``--cpu-backend`` values each runs in turn on the same shards (dropped from the
page cache before each run unless ``--warm``), and a table prints their times, the ratios
to the first, and whether their top-100 rankings are identical (indices, and scores bit for
bit); the bfloat16 shortlist backend also reports how many blocks it shortlisted and how
many pairs it re-scored. ``--direct-io on,off`` runs each backend twice: blocks read past the
page cache (``O_DIRECT``), and through file mappings.

``--compare-seed`` writes one set of 500k x 4096 float32 features (8.2 GB) and evaluates it
twice, each in a fresh process so that peak RSS belongs to that run alone: the seed's path
(every descriptor read into memory, one ``faiss.IndexFlatL2``, ``search``, then the per-query
``np.isin`` recall loop) and this harness (``evaluate``: streamed, exact, vectorised metrics).
It prints the time ratio, the memory ratio and both Recall@N (they must agree).

The data is generated in streamed shards (never whole in memory): row r is a cyclic rotation
of one random unit vector with a per-row sign pattern, made with integer bit operations (unit
norm by construction, deterministic, about as fast as the disk writes it). Free disk space is
checked first (the error says how much is needed). The shards are flushed and dropped from
the page cache before the run (``--warm`` keeps them cached), so reads are cold as on a real
52 GB database that cannot fit in memory. Everything is removed afterwards, also on Ctrl-C or
SIGTERM, unless ``--keep``.

Figures on a shared machine are noisy: compare the ratios printed side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # run as a script: benchmarks.scale_data beside it

from benchmarks.scale_data import (  # noqa: E402
    AREA_PER_IMAGE_M2,
    GENERATE_ROWS,
    RADIUS_M,
    SIGN_PATTERNS,
    SyntheticRows,
    check_disk,
    evict,
    generate,
    needed_bytes,
)

# Re-exported: the synthetic data lives in benchmarks/scale_data.py.
__all__ = [
    "AREA_PER_IMAGE_M2",
    "GENERATE_ROWS",
    "RADIUS_M",
    "SIGN_PATTERNS",
    "SyntheticRows",
    "check_disk",
    "generate",
    "needed_bytes",
]

OUTDOOR_AMS_ROWS = 6_400_000
SEED_COMPARE_ROWS = 500_000
#: Bytes of distinct blocks the streaming GEMM peak rotates over (well beyond any CPU cache).
STREAMING_BYTES = 768 << 20


# --------------------------------------------------------------------------------------------
# Measured runs, each in a fresh process


def _rss() -> int:
    from harness.hardware import current_rss_bytes

    return current_rss_bytes()


def _import_libraries() -> None:
    """Import what either path uses, so that "RSS before" counts the libraries, not data."""
    import h5py  # noqa: F401
    import scipy.spatial  # noqa: F401
    import tqdm  # noqa: F401

    import harness.evaluate  # noqa: F401
    import harness.ground_truth  # noqa: F401
    import harness.metrics  # noqa: F401
    import harness.validate  # noqa: F401

    for optional in ("faiss", "torch"):  # imported lazily where present: count them as libraries
        try:
            __import__(optional)
        except ImportError:
            pass


def harness_worker(spec: dict) -> dict:
    from threadpoolctl import threadpool_limits

    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.hardware import peak_rss_bytes
    from harness.splits import get_split

    _import_libraries()
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    search_logger = logging.getLogger("harness.search")
    search_logger.addHandler(Collect(logging.INFO))
    search_logger.setLevel(logging.INFO)
    with threadpool_limits(limits=spec["threads"]):
        split = get_split(spec["split"], spec["data_root"])
        before = _rss()
        started = time.perf_counter()
        result = evaluate([spec["query"], *spec["shards"]], split,
                          EvalConfig(ngpu=spec["ngpu"], checksums=spec["checksums"],
                                     block_rows=spec.get("block_rows"),
                                     cpu_backend=spec.get("cpu_backend", "auto")))
        wall = time.perf_counter() - started
    if spec.get("rankings"):
        np.savez(spec["rankings"], indices=result.prediction_data.indices,
                 scores=result.prediction_data.scores)
    return {
        "log": messages,
        "wall_s": wall, "timings": {k: getattr(result.timings, k) for k in
                                    ("load_s", "checksum_s", "search_s", "metrics_s", "total_s")},
        "backend": result.search_backend, "rows": split.num_database,
        "rss_before": before, "peak_rss": peak_rss_bytes(),
        "recalls": {k: v for k, v in result.scores.items() if k.startswith("recall")},
        "dtype": result.descriptor_dtype, "features_hashed": len(result.features),
    }


def seed_worker(spec: dict) -> dict:
    """The seed's evaluation path, as its evaluator (OpenIBL lineage) does it."""
    import faiss
    from scipy.spatial import cKDTree
    from threadpoolctl import threadpool_limits

    from harness.features import read_descriptors
    from harness.hardware import peak_rss_bytes
    from harness.splits import get_split

    _import_libraries()
    with threadpool_limits(limits=spec["threads"]):
        faiss.omp_set_num_threads(spec["threads"])
        split = get_split(spec["split"], spec["data_root"])
        before = _rss()
        started = time.perf_counter()
        queries = read_descriptors(spec["query"], "query")
        database = np.concatenate([read_descriptors(path, "database") for path in spec["shards"]])
        index = faiss.IndexFlatL2(database.shape[1])
        index.add(database)
        ns = (1, 5, 10, 20, 50, 100)
        search_started = time.perf_counter()
        _, predictions = index.search(queries, max(ns))
        search_s = time.perf_counter() - search_started
        # Ground truth: the seed's radius neighbours (sklearn there; a KD-tree, same set, here).
        positives = cKDTree(split.database_utm).query_ball_point(split.query_utm, r=split.radius_m)
        metrics_started = time.perf_counter()
        correct_at_n = np.zeros(len(ns))
        for query, prediction in enumerate(predictions):
            for i, n in enumerate(ns):
                if np.any(np.isin(prediction[:n], positives[query])):
                    correct_at_n[i:] += 1
                    break
        recalls = correct_at_n / len(predictions)
        metrics_s = time.perf_counter() - metrics_started
        wall = time.perf_counter() - started
    return {
        "wall_s": wall, "timings": {"search_s": search_s, "metrics_s": metrics_s},
        "backend": "faiss IndexFlatL2 (in memory)", "rows": int(database.shape[0]),
        "rss_before": before, "peak_rss": peak_rss_bytes(),
        "recalls": {f"recall@{n}": float(r) for n, r in zip(ns, recalls)},
    }


def run_worker(kind: str, spec: dict) -> dict:
    command = [sys.executable, str(HERE), "--worker", kind, "--spec", json.dumps(spec)]
    # Every run hashes its files (no digest remembered from the run before): runs compare.
    environment = {**os.environ, "HARNESS_DIGEST_CACHE": "off"}
    if spec.get("direct_io"):
        environment["HARNESS_DIRECT_IO"] = spec["direct_io"]
    out = subprocess.run(command, capture_output=True, text=True, env=environment)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"error: the {kind} run failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gemm_peak(args, block_rows: int) -> float | None:
    """Streaming float32 GEMM GFLOP/s of the evaluator's shapes, in memory (None: --no-peak)."""
    if args.no_peak:
        return None
    from threadpoolctl import threadpool_limits

    from harness.hardware import measure_gemm_gflops

    with threadpool_limits(limits=args.threads):
        return measure_gemm_gflops(args.queries, block_rows, args.dim, repeats=2,
                                   streaming_bytes=STREAMING_BYTES)


def _load() -> str:
    try:
        return "/".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


# --------------------------------------------------------------------------------------------
# The two benchmarks


def run_scale(args, folder: Path) -> None:
    from harness.search import default_block_rows

    itemsize = np.dtype(args.dtype).itemsize
    needed = needed_bytes(args.rows, args.dim, itemsize, args.queries)
    check_disk(folder.parent, needed)
    print(f"scale: {args.rows:,} x {args.dim} {args.dtype} ({needed / 1e9:.1f} GB on disk), "
          f"{args.queries} queries, exact top-100; load average {_load()}")
    started = time.perf_counter()
    paths = generate(folder, rows=args.rows, queries=args.queries, dim=args.dim, dtype=args.dtype,
                     shard_rows=args.shard_rows, seed=args.seed, cold=not args.warm)
    print(f"generated {len(paths['shards'])} shards in {time.perf_counter() - started:.1f} s under "
          f"{folder} ({'cold: dropped from the page cache' if not args.warm else 'warm'})")
    block_rows = args.block_rows or default_block_rows(args.dim)
    peaks = [gemm_peak(args, block_rows)]
    runs = []
    plans = [(backend, direct_io) for backend in args.cpu_backends for direct_io in args.direct_io]
    for number, (backend, direct_io) in enumerate(plans):
        if number and not args.warm:
            for shard in paths["shards"]:
                evict(Path(shard))  # the previous run left some of them cached
        rankings = folder / f"rankings-{number}.npz"
        load_before = _load()
        run = run_worker(
            "harness",
            {
                **paths,
                "threads": args.threads,
                "ngpu": args.ngpu,
                "checksums": not args.no_checksums,
                "block_rows": args.block_rows,
                "cpu_backend": backend,
                "rankings": str(rankings),
                "direct_io": direct_io,
            },
        )
        if len(args.direct_io) > 1:
            run["backend"] += f", direct_io={direct_io}"
        run["load"] = f"{load_before} / {_load()}"
        peaks.append(gemm_peak(args, block_rows))
        run["peak_before"], run["peak_after"] = peaks[-2], peaks[-1]
        run["rankings"] = rankings
        runs.append(run)
        report_scale_run(args, run, block_rows)
    if len(runs) > 1:
        compare_runs(runs)


def report_scale_run(args, run: dict, block_rows: int) -> None:
    peak_before, peak_after = run["peak_before"], run["peak_after"]
    peak = (peak_before + peak_after) / 2 if peak_before and peak_after else None
    flop_per_row = 2.0 * args.queries * args.dim
    search_rate = run["rows"] / run["timings"]["search_s"]
    wall_rate = run["rows"] / run["wall_s"]
    print(f"\nbackend {run['backend']}, storage {run['dtype']}, {args.threads} threads, "
          f"checksums {'off' if args.no_checksums else 'on (sha256 of every file)'}")
    print(f"load average before/after the run: {run['load']}")
    print(f"evaluate() wall time        {run['wall_s']:9.1f} s   ("
          + ", ".join(f"{k} {v:.1f}" for k, v in run["timings"].items()) + ")")
    print(
        f"vectors/s (whole evaluate)  {wall_rate:11,.0f}   "
        f"{wall_rate * flop_per_row / 1e9:7.1f} GFLOP/s"
    )
    print(
        f"vectors/s (search)          {search_rate:11,.0f}   "
        f"{search_rate * flop_per_row / 1e9:7.1f} GFLOP/s"
    )
    for message in run["log"]:
        if "bf16" in message or "bfloat16" in message:
            print(message)
    if args.ngpu == 0 and peak:
        print(f"float32 GEMM peak, streaming {args.queries}x{args.dim} @ {args.dim}x{block_rows}: "
              f"{peak_before:.0f} before / {peak_after:.0f} after GFLOP/s; evaluate() reaches "
              f"{wall_rate * flop_per_row / 1e9 / peak:.2f} of it, the search "
              f"{search_rate * flop_per_row / 1e9 / peak:.2f}")
    print(
        f"peak RSS {_mib(run['peak_rss'])}; before evaluate() (interpreter, libraries, split "
        f"of {args.rows:,} names) {_mib(run['rss_before'])}; "
        f"beyond that {_mib(run['peak_rss'] - run['rss_before'])} "
        f"(queries: {_mib(args.queries * args.dim * 4)})"
    )
    print("recall: " + ", ".join(f"{k} {v:.4f}" for k, v in run["recalls"].items()))
    if args.rows != OUTDOOR_AMS_ROWS:
        fixed = run["wall_s"] - run["timings"]["search_s"]
        estimate = fixed + OUTDOOR_AMS_ROWS / search_rate  # validation etc. grow too, slightly
        target = "60 s on one H100" if args.ngpu != 0 else "4 min on the 2-core development machine"
        print(f"extrapolated to {OUTDOOR_AMS_ROWS:,} rows at this search rate: ~{estimate:.0f} s "
              f"({estimate / 60:.1f} min; target {target})")
    if args.ngpu == 0 and args.reference_peak and peak:
        # On a loaded machine the absolute rate says little; the ratio to the peak measured
        # beside it carries over to the same machine when quiet.
        ratio = wall_rate * flop_per_row / 1e9 / peak
        quiet = OUTDOOR_AMS_ROWS * flop_per_row / 1e9 / (ratio * args.reference_peak)
        print(
            f"at a quiet peak of {args.reference_peak:.0f} GFLOP/s (--reference-peak) this ratio "
            f"({ratio:.2f}) gives {OUTDOOR_AMS_ROWS:,} rows in ~{quiet:.0f} s "
            f"({quiet / 60:.1f} min)"
        )


def compare_runs(runs: list[dict]) -> None:
    """Side by side: times, ratios to the first run, and whether the rankings are identical."""
    first = runs[0]
    with np.load(first["rankings"], allow_pickle=False) as reference:
        reference_indices, reference_scores = reference["indices"], reference["scores"]
    print(f"\n{'backend':<40}{'wall s':>8}{'search s':>10}{'wall ratio':>12}{'search ratio':>14}"
          "  top-100 against the first")
    for run in runs:
        with np.load(run["rankings"], allow_pickle=False) as loaded:
            indices, scores = loaded["indices"], loaded["scores"]
        moved = int((indices != reference_indices).any(axis=1).sum())
        difference = float(np.max(np.abs(scores.astype(np.float64) - reference_scores)))
        if moved == 0 and difference == 0:
            verdict = "identical (indices and scores)"
        else:
            verdict = (f"indices differ in {moved} queries" if moved else "indices identical") + \
                f", max score difference {difference:.2e}"
        print(f"{run['backend']:<40}{run['wall_s']:>8.1f}{run['timings']['search_s']:>10.1f}"
              f"{first['wall_s'] / run['wall_s']:>11.2f}x"
              f"{first['timings']['search_s'] / run['timings']['search_s']:>13.2f}x  {verdict}")
    print("(ratio: the first backend's time / this one's; above 1 is faster)")


def run_compare_seed(args, folder: Path) -> None:
    import psutil

    rows = args.rows
    needed = needed_bytes(rows, args.dim, 4, args.queries)
    check_disk(folder.parent, needed)
    seed_memory = 2 * rows * args.dim * 4  # the descriptors, and the index's own copy
    available = psutil.virtual_memory().available
    if seed_memory > 0.85 * available:
        raise SystemExit(f"error: the seed's path needs ~{seed_memory / 1e9:.1f} GB of memory for "
                         f"{rows:,} rows, {available / 1e9:.1f} GB are available: use --rows")
    print(f"seed vs harness on the same {rows:,} x {args.dim} float32 features, {args.queries} "
          f"queries, top-100; load average {_load()}")
    paths = generate(folder, rows=rows, queries=args.queries, dim=args.dim, dtype="float32",
                     shard_rows=args.shard_rows, seed=args.seed, cold=False)
    spec = {**paths, "threads": args.threads, "ngpu": 0, "checksums": not args.no_checksums,
            "block_rows": args.block_rows}
    seed = run_worker("seed", spec)
    harness = run_worker("harness", spec)
    print(f"load average after both runs: {_load()}")
    print(
        f"\n{'path':<44}{'wall s':>9}{'search s':>10}{'metrics s':>11}{'peak RSS':>14}"
        f"{'beyond start':>15}"
    )
    for label, run in (("seed: IndexFlatL2 in memory + np.isin loop", seed),
                       ("harness: evaluate() streamed", harness)):
        print(f"{label:<44}{run['wall_s']:>9.1f}{run['timings']['search_s']:>10.1f}"
              f"{run['timings']['metrics_s']:>11.3f}{_mib(run['peak_rss']):>14}"
              f"{_mib(run['peak_rss'] - run['rss_before']):>15}")
    print(
        f"time ratio seed / harness: {seed['wall_s'] / harness['wall_s']:.2f}x "
        f"(harness includes validation, value checks{', sha256' if not args.no_checksums else ''} "
        f"and the record)"
    )
    memory_ratio = (seed["peak_rss"] - seed["rss_before"]) / max(
        1, harness["peak_rss"] - harness["rss_before"])
    print(
        f"memory ratio seed / harness (peak RSS beyond the start): "
        f"{memory_ratio:.1f}x; "
        f"whole-process peak RSS: {seed['peak_rss'] / harness['peak_rss']:.1f}x"
    )
    same = all(abs(seed["recalls"][k] - harness["recalls"][k]) < 1e-9 for k in seed["recalls"])
    print("recall seed:    " + ", ".join(f"{k} {v:.4f}" for k, v in seed["recalls"].items()))
    print("recall harness: " + ", ".join(f"{k} {v:.4f}" for k, v in harness["recalls"].items()))
    print("Recall@N identical" if same else "Recall@N DIFFER (ties or rounding at the cut-off?)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"database rows (default {OUTDOOR_AMS_ROWS:,}; {SEED_COMPARE_ROWS:,} with "
        "--compare-seed)",
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage dtype of the scale run (--compare-seed uses float32)")
    parser.add_argument("--shard-rows", type=int, default=400_000, help="rows per database file")
    parser.add_argument(
        "--block-rows", type=int, default=None, help="evaluator block rows (default: its own)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="BLAS threads")
    parser.add_argument("--ngpu", type=int, default=0, help="0 CPU (default), -1 every GPU, n GPUs")
    parser.add_argument("--no-peak", action="store_true",
                        help="skip the float32 GEMM peak measurements (no ratios to the peak)")
    parser.add_argument("--reference-peak", type=float, default=300.0,
                        help="quiet float32 GEMM GFLOP/s of this machine, for the extrapolation "
                             "(default 300: the 2-core development machine; 0 to leave it out)")
    parser.add_argument("--no-checksums", action="store_true", help="skip the sha256 of the files")
    parser.add_argument("--cpu-backend", default="auto",
                        help="evaluator CPU backend: auto, numpy, faiss or bf16 (exact bfloat16 "
                             "shortlist, needs torch); several, comma-separated, run side by side")
    parser.add_argument("--direct-io", default="auto",
                        help="how blocks are read: auto (past the page cache where not cached), "
                             "on or off (always mapped); several, comma-separated, run side by "
                             "side with each backend")
    parser.add_argument(
        "--compare-seed", action="store_true", help="the seed's path vs this harness"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the data (default: system temp)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--warm", action="store_true", help="leave the shards in the page cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker", choices=["harness", "seed"], default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work = harness_worker if args.worker == "harness" else seed_worker
        print(json.dumps(work(json.loads(args.spec))))
        return 0
    if args.rows is None:
        args.rows = SEED_COMPARE_ROWS if args.compare_seed else OUTDOOR_AMS_ROWS
    if args.rows < 1 or args.queries < 1:
        parser.error("--rows and --queries must be >= 1")
    args.cpu_backends = [name.strip() for name in args.cpu_backend.split(",")]
    unknown = sorted(set(args.cpu_backends) - {"auto", "numpy", "faiss", "bf16"})
    if unknown:
        parser.error(
            f"--cpu-backend: unknown {', '.join(unknown)} (choose from auto, numpy, faiss, bf16)"
        )
    args.direct_io = [mode.strip() for mode in args.direct_io.split(",")]
    if set(args.direct_io) - {"auto", "on", "off"}:
        parser.error("--direct-io: choose from auto, on, off")
    base = args.dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="harness-scale-", dir=base))

    def terminate(signum, frame):  # SIGTERM: clean up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        from harness.hardware import blas_summary, cpu_model

        print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; BLAS: {blas_summary()}")
        if args.compare_seed:
            run_compare_seed(args, folder)
        else:
            run_scale(args, folder)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"kept the data under {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
