"""The bfloat16 shortlist's parts side by side in one run, and whether an int8 first pass pays.

* Re-scoring: ``--pairs`` random (query, row) pairs against one block, through one call with
  the BLAS's own threads and through the backend's re-scoring workers (single-threaded BLAS
  each); the bits must be equal.
* GEMM rates on the evaluator's shapes (queries x block): numpy float32, torch bfloat16 and
  torch int8 (``torch._int_mm``, where this torch has it).
* Error windows: the bf16 shortlist's proven per-query margin, and the margin an exact int8
  first pass would need (per-row scales to +-127, exact residual norms, Cauchy-Schwarz on both
  sides), in standard deviations of the scores of random unit vectors; and the share of the
  rows each would re-score at the final threshold of a ``--rows`` database for top-``--k``
  (normal tail), i.e. how much float32 re-scoring a faster first pass would buy.

Usage::

    python benchmarks/shortlist.py                    # 4096-D, 1,000 queries, 6.4M rows
    python benchmarks/shortlist.py --dim 512 --pairs 2000

Needs torch. Figures on a shared machine are noisy: compare the ratios printed in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(function, repeats: int = 3) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def unit_rows(rng, rows: int, dim: int) -> np.ndarray:
    values = rng.standard_normal((rows, dim), dtype=np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def int8_residual_norms(values: np.ndarray) -> np.ndarray:
    """||x - s q(x)|| per row with s = max|x| / 127 and q(x) = round(x / s) (float64)."""
    scale = np.abs(values).max(axis=1, keepdims=True).astype(np.float64) / 127
    quantised = np.clip(np.rint(values / scale), -127, 127)
    return np.linalg.norm(values.astype(np.float64) - quantised * scale, axis=1)


def rescoring(args, rng, queries, block) -> None:
    from harness.search.bf16 import Bf16ShortlistBackend, rescore_pairs

    query_rows = np.sort(rng.integers(0, queries.shape[0], args.pairs))
    columns = rng.integers(0, block.shape[0], args.pairs)
    backend = Bf16ShortlistBackend()
    serial_s = best_of(lambda: rescore_pairs(queries, block, query_rows, columns))
    parallel_s = best_of(lambda: backend._rescore(queries, block, query_rows, columns))
    same = np.array_equal(rescore_pairs(queries, block, query_rows, columns),
                          backend._rescore(queries, block, query_rows, columns))
    backend.finish()
    print(f"re-scoring {args.pairs:,} pairs against {block.shape[0]:,} rows: one call "
          f"{serial_s * 1e3:.1f} ms, {backend.rescore_workers} workers {parallel_s * 1e3:.1f} ms "
          f"({serial_s / parallel_s:.2f}x); bits {'identical' if same else 'DIFFERENT'}")


def gemm_rates(args, queries, block) -> dict:
    import torch

    flop = 2.0 * queries.shape[0] * block.shape[0] * queries.shape[1]
    rates = {"float32 (numpy)": flop / best_of(lambda: queries @ block.T) / 1e9}
    queries_bf16 = torch.from_numpy(queries).to(torch.bfloat16)
    block_bf16 = torch.from_numpy(block).to(torch.bfloat16)
    rates["bfloat16 (torch)"] = flop / best_of(lambda: torch.mm(queries_bf16, block_bf16.T)) / 1e9
    if hasattr(torch, "_int_mm"):
        left = torch.randint(-127, 128, tuple(queries.shape), dtype=torch.int8)
        right = torch.randint(-127, 128, (block.shape[1], block.shape[0]), dtype=torch.int8)
        try:
            rates["int8 (torch._int_mm)"] = flop / best_of(lambda: torch._int_mm(left, right)) / 1e9
        except RuntimeError as exc:  # no int8 GEMM for this CPU or build
            print(f"torch._int_mm: {exc}")
    reference = rates["float32 (numpy)"]
    for name, rate in rates.items():
        print(f"GEMM {name:<22}{rate:8.0f} G(FL)OP/s  {rate / reference:5.2f}x float32")
    return rates


def windows(args, rng, queries, rates: dict) -> None:
    from scipy.stats import norm

    from harness.search.bf16 import bf16_margins

    database = unit_rows(rng, args.sample_rows, args.dim).astype(np.float16).astype(np.float32)
    sigma = float(np.std(queries[:200] @ database[:5000].T))
    row_residual = float(np.median(int8_residual_norms(database)))
    query_residual = int8_residual_norms(queries)
    # |x.q - s_x s_q (qx.qq)| <= ||e_x|| ||q|| + ||s_x qx|| ||e_q||, with ||s_x qx|| <= 1 + ||e_x||
    margins = {"bf16": float(np.median(bf16_margins(queries))),
               "int8": float(np.median(row_residual + (1 + row_residual) * query_residual))}
    threshold = norm.isf(args.k / args.rows)  # the final K-th score, in standard deviations
    print(f"scores of random unit {args.dim}-D vectors: standard deviation {sigma:.4f}; the "
          f"top-{args.k} of {args.rows:,} rows starts {threshold:.2f} of them above the mean")
    shares = {}
    for name, margin in margins.items():
        # The cut is the exact K-th score minus one margin.
        shares[name] = float(norm.sf(threshold - margin / sigma))
        print(f"{name} first pass: margin {margin:.4f} = {margin / sigma:.2f} sd; re-scores "
              f"{shares[name]:.2e} of the pairs ({shares[name] * args.rows:,.0f} rows per query)")
    int8_rate = rates.get("int8 (torch._int_mm)")
    if int8_rate:
        print(f"int8 against bf16: GEMM {int8_rate / rates['bfloat16 (torch)']:.2f}x faster, "
              f"{shares['int8'] / shares['bf16']:.1f}x the pairs to re-score")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--block-rows", type=int, default=8192)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=6_400_000, help="database rows (windows)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--sample-rows", type=int, default=20_000,
                        help="random rows whose int8 residuals are measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    queries = unit_rows(rng, args.queries, args.dim)
    block = unit_rows(rng, args.block_rows, args.dim)
    rescoring(args, rng, queries, block)
    rates = gemm_rates(args, queries, block)
    windows(args, rng, queries, rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
