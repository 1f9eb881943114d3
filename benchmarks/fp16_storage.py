"""float16 storage vs float32 storage: how much do rankings and Recall@N change?

The harness computes in float32 whatever the storage dtype; storing descriptors as float16
halves the disk (Outdoor-Ams at 4096-D: 52 GB instead of 105 GB) and the bytes read. This
script measures what the rounding to float16 costs on the synthetic city's real descriptors:
the training-free probe descriptors (``synth.probe``: thumbnail, colour histogram,
both) of every evaluation split (outdoor queries, indoor queries raw and as oracle gray
layouts, Ams30k test). Each descriptor set is written twice, float32 and float16 (queries and
database alike, as an extraction would), and both files are evaluated by ``harness.evaluate``.

Printed per split and descriptor: Recall@N of both and the difference; the share of queries
whose top-K ranking (indices, in order) is identical, whose top-1 is identical; the mean
overlap of the top-10 sets; queries whose first-positive rank changed; the largest score
difference. Finally the records' ``descriptor_dtype`` (the record states the storage dtype).

    python benchmarks/fp16_storage.py                     # demo city (generated, ~1 min)
    python benchmarks/fp16_storage.py --preset tiny       # quicker, fewer queries
    python benchmarks/fp16_storage.py --city DIR          # reuse a generated city
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")


def compare(result32, result16) -> dict:
    """Ranking and recall differences between the float32 and float16 records."""
    p32, p16 = result32.prediction_data, result16.prediction_data
    k = p32.indices.shape[1]
    top10 = min(10, k)
    overlap = [
        len(set(a[:top10]) & set(b[:top10])) / top10 for a, b in zip(p32.indices, p16.indices)
    ]
    finite = np.isfinite(p32.scores) & np.isfinite(p16.scores)
    return {
        "k": k,
        "queries": p32.indices.shape[0],
        "same_ranking": float(np.mean(np.all(p32.indices == p16.indices, axis=1))),
        "same_top1": float(np.mean(p32.indices[:, 0] == p16.indices[:, 0])),
        "top10_overlap": float(np.mean(overlap)),
        "first_positive_changed": int(
            np.count_nonzero(p32.first_positive_rank != p16.first_positive_rank)
        ),
        "max_score_diff": float(np.max(np.abs(p32.scores[finite] - p16.scores[finite])))
        if finite.any()
        else 0.0,
        "recalls": {
            name: (result32.scores[name], result16.scores[name])
            for name in result32.scores
            if name.startswith("recall")
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo", help="synthetic city preset (tiny, demo, ...)")
    parser.add_argument(
        "--city", type=Path, default=None, help="city folder (reused when complete)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--kinds", default="pixels,hist,both", help="probe descriptors (comma separated)"
    )
    parser.add_argument("--recall-ns", default="1,5,10,20,50,100")
    args = parser.parse_args(argv)

    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.features import write_features
    from harness.splits import get_split, prepare_builtin_splits
    from synth import make_city
    from synth.dataset import CityInfo
    from synth.probe import PROBE_SETS, describe_images, probe_dim

    ns = tuple(int(n) for n in args.recall_ns.split(","))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(prefix="fp16-storage-") as scratch:
        scratch = Path(scratch)
        city = args.city or scratch / "city"
        started = time.perf_counter()
        make_city(city, args.preset, seed=args.seed, workers=args.workers)
        info = CityInfo.load(city)
        data_root = scratch / "data"
        prepare_builtin_splits(city, prefix="synth-", data_root=data_root)
        print(
            f"city {args.preset} (seed {args.seed}) ready in "
            f"{time.perf_counter() - started:.0f} s: {city}"
        )
        config = EvalConfig(recall_ns=ns, ngpu=0, checksums=False)
        rows = []
        dtypes = set()
        for kind in kinds:
            database_cache: dict = {}
            for label, builtin, oracle in PROBE_SETS:
                split = get_split("synth-" + builtin, data_root)
                key = (split.database_root, split.database_names)
                if key not in database_cache:
                    database_cache[key] = describe_images(split.database_root, split.database_names,
                                                          kind, desc=f"{split.name} database")
                queries = describe_images(
                    split.query_root,
                    split.query_names,
                    kind,
                    info.masks_dir if oracle else None,
                    desc=f"{split.name} queries",
                )
                database = database_cache[key]
                assert queries.shape[1] == database.shape[1] == probe_dim(kind)
                results = {}
                for dtype in ("float32", "float16"):
                    path = write_features(
                        scratch / f"{split.name}-{kind}-{int(oracle)}-{dtype}.h5",
                        split=split.name,
                        method=f"probe-{kind}",
                        query=(list(split.query_names), queries.astype(dtype)),
                        database=(list(split.database_names), database.astype(dtype)),
                    )
                    results[dtype] = evaluate([path], split, config)
                    dtypes.add((dtype, results[dtype].descriptor_dtype))
                rows.append(
                    (
                        label,
                        kind,
                        split.num_database,
                        compare(results["float32"], results["float16"]),
                    )
                )

    print(f"\nfloat32 vs float16 storage, probe descriptors, computed in float32 "
          f"(top-K = {rows[0][3]['k'] if rows else '-'}):\n")
    head = (f"{'queries':<36}{'desc':<7}{'#Q':>5}{'#DB':>6}{'same rank':>10}{'same top1':>10}"
            f"{'top10 ovl':>10}{'1st pos chg':>12}{'max |ds|':>10}  Recall@N fp32 -> fp16 (pp)")
    print(head)
    worst = 0.0
    for label, kind, num_database, c in rows:
        recalls = ", ".join(f"R@{name.split('@')[1]} {100 * a:.2f}->{100 * b:.2f}"
                            + (f" ({100 * (b - a):+.2f})" if a != b else "")
                            for name, (a, b) in c["recalls"].items())
        worst = max([worst] + [abs(b - a) for a, b in c["recalls"].values()])
        print(
            f"{label:<36}{kind:<7}{c['queries']:>5}{num_database:>6}"
            f"{100 * c['same_ranking']:>9.1f}%"
            f"{100 * c['same_top1']:>9.1f}%{100 * c['top10_overlap']:>9.1f}%"
            f"{c['first_positive_changed']:>12}"
            f"{c['max_score_diff']:>10.1e}  {recalls}"
        )
    print(f"\nlargest Recall@N change: {100 * worst:.2f} percentage points")
    print(
        "records state the storage dtype: "
        + ", ".join(
            f"{stored} stored -> descriptor_dtype {recorded!r}"
            for stored, recorded in sorted(dtypes)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
