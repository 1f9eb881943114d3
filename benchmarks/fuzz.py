"""Fuzz the readers of submitted files for a given wall-clock time (hypothesis, not atheris).

    python benchmarks/fuzz.py --seconds 600 [--targets features,mat-v7.3-standard] [--out DIR]

Each round runs 200 fresh examples (a new random seed) of every target in turn, as the
tests in ``tests/test_hardening_fuzz.py`` do, until the time is spent. A reader that raises
anything but ``HarnessError`` stops the run; the input that did it is saved under ``--out``
(default ``fuzz-crashes/``) for a regression test. Prints examples and seconds per target.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None) -> int:
    from hypothesis import given, seed, settings

    import test_hardening_fuzz as fuzz

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--targets", default=",".join(sorted(fuzz.BYTE_TARGETS)))
    parser.add_argument("--round", type=int, default=200, help="examples per target and round")
    parser.add_argument("--out", type=Path, default=Path("fuzz-crashes"))
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(fuzz.BYTE_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; valid: {sorted(fuzz.BYTE_TARGETS)}")

    with tempfile.TemporaryDirectory(prefix="harness-fuzz-") as scratch:
        scratch = Path(scratch)
        seeds = fuzz.make_seeds(scratch / "seeds")
        counts = {t: 0 for t in targets}
        spent = {t: 0.0 for t in targets}
        deadline = time.monotonic() + args.seconds
        rng = random.Random()
        while time.monotonic() < deadline:
            for name in targets:
                target = fuzz.BYTE_TARGETS[name]
                path = scratch / f"fuzzed{fuzz.SUFFIX.get(name, '.h5' if 'features' in name else '.mat')}"
                last = {}

                @seed(rng.getrandbits(64))
                @settings(max_examples=args.round, **dict(fuzz._SETTINGS, derandomize=False))
                @given(data=fuzz.byte_mutations(seeds["bytes"][name]))
                def run(data):
                    last["data"] = data
                    counts[name] += 1
                    path.write_bytes(data)
                    target(path, seeds["split"])

                started = time.monotonic()
                try:
                    run()
                except Exception:
                    args.out.mkdir(parents=True, exist_ok=True)
                    saved = args.out / f"{name}-{int(time.time())}{path.suffix}"
                    saved.write_bytes(last.get("data", b""))
                    traceback.print_exc()
                    print(f"CRASH in {name}: input saved to {saved}")
                    return 1
                finally:
                    spent[name] += time.monotonic() - started
                if time.monotonic() >= deadline:
                    break
    total = sum(counts.values())
    for name in targets:
        print(f"{name:24s} {counts[name]:8d} examples {spent[name]:8.1f} s")
    print(f"{'total':24s} {total:8d} examples {sum(spent.values()):8.1f} s, no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
