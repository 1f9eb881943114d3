"""Regenerate the "it poses the problem" table of the synthetic city.

Generates (or reuses) a city, registers its splits in a private data root, computes the
training-free probe descriptors (thumbnail, colour histogram, both) as real feature files and
evaluates them with the harness evaluator: outdoor queries, indoor queries, and indoor queries
as oracle gray layouts (non-window pixels gray, from the true window masks). Prints the
generation time and the tables in Markdown.

    python benchmarks/synth_city.py --preset demo            # the README table
    python benchmarks/synth_city.py --preset tiny --kinds hist
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="City folder (reused when complete; default: a temporary folder).",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--kinds",
        default="pixels,hist,both",
        help="Probe descriptors to evaluate (comma separated).",
    )
    args = parser.parse_args(argv)

    from harness.splits import prepare_builtin_splits
    from synth import make_city
    from synth.probe import format_table, probe_table

    with tempfile.TemporaryDirectory(prefix="synth-city-bench-") as scratch:
        city_dir = args.out or Path(scratch) / "city"
        started = time.perf_counter()
        times_started = os.times()
        info = make_city(city_dir, args.preset, args.seed, workers=args.workers)
        wall = time.perf_counter() - started
        times = os.times()
        cpu = sum(
            getattr(times, k) - getattr(times_started, k)
            for k in ("user", "system", "children_user", "children_system")
        )
        images = (
            info.counts["database"]
            + sum(
                info.counts[k]
                for k in (
                    "ams30k_train",
                    "ams30k_val",
                    "ams30k_test",
                    "outdoor",
                    "indoor1",
                    "indoor2",
                )
            )
            + info.counts["ade_training"]
            + info.counts["ade_validation"]
        )
        print(f"## Synthetic city `{args.preset}` (seed {args.seed})\n")
        print(
            f"- {images} images of {info.config.image_width}x{info.config.image_height} "
            f"({info.counts['database']} database, {info.counts['places']} places on "
            f"{info.counts['streets']} streets); generated in {wall:.1f} s wall with "
            f"{args.workers} worker(s) (0 s means it was already complete in {city_dir})"
        )
        print(
            f"- {cpu:.1f} CPU-seconds in all (workers included): "
            f"about {cpu / max(args.workers, 1):.0f} s "
            f"wall on {args.workers} idle cores; {os.cpu_count()} CPUs visible, load average "
            f"{os.getloadavg()[0]:.1f} when done\n"
        )
        data_root = Path(scratch) / "data"
        prepare_builtin_splits(info.root, prefix="synth-", data_root=data_root)
        for kind in args.kinds.split(","):
            started = time.perf_counter()
            rows = probe_table(info.root, data_root, Path(scratch) / "features", kind=kind)
            print(format_table(rows, f"probe-{kind} (training-free), R@N in %"))
            print(f"\n({time.perf_counter() - started:.1f} s to describe and evaluate)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
