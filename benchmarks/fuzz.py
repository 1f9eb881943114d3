"""Fuzz the readers of submitted files for a given wall-clock time (hypothesis).

    python benchmarks/fuzz.py --seconds 600 [--targets features,mat-v7.3-standard]

Runs rounds of ``--round`` fresh examples (a new random seed each round) of every target in
turn, exactly as ``tests/test_hardening_fuzz.py`` does (the readers run in a child process,
so a hang or a crash of HDF5/scipy is caught), until the time is spent. A reader that hangs,
crashes or raises anything but ``HarnessError`` stops the run; the input is saved under
``--out`` (default ``fuzz-crashes/``) for a regression test. Prints examples per target.
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
    import test_hardening_fuzz as fuzz
    from badinputs import ReaderProcess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--targets", default=",".join(sorted(fuzz.BYTE_TARGETS)))
    parser.add_argument("--round", type=int, default=200, help="examples per target and round")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one read may take")
    parser.add_argument("--out", type=Path, default=Path("fuzz-crashes"))
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(fuzz.BYTE_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; valid: {sorted(fuzz.BYTE_TARGETS)}")

    reader = ReaderProcess("test_hardening_fuzz", "BYTE_TARGETS", "_small_split", args.timeout)
    reader.start()
    counts = {t: 0 for t in targets}
    spent = {t: 0.0 for t in targets}
    rng = random.Random()
    started_all = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="harness-fuzz-") as scratch:
            scratch = Path(scratch)
            seeds = fuzz.make_seeds(scratch / "seeds")
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                for name in targets:
                    started = time.monotonic()
                    try:
                        fuzz.fuzz_bytes(name, seeds, scratch, reader, args.round,
                                        random_seed=rng.getrandbits(64), derandomize=False)
                        counts[name] += args.round
                    except Exception:
                        args.out.mkdir(parents=True, exist_ok=True)
                        fuzzed = fuzz.fuzzed_path(scratch, name)
                        saved = args.out / f"{name}-{int(time.time())}{fuzzed.suffix}"
                        saved.write_bytes(fuzzed.read_bytes())
                        traceback.print_exc()
                        print(f"FAILURE in {name}: input saved to {saved}")
                        return 1
                    finally:
                        spent[name] += time.monotonic() - started
                    if time.monotonic() >= deadline:
                        break
    finally:
        reader.stop()
        for name in targets:
            print(f"{name:24s} {counts[name]:8d} examples {spent[name]:8.1f} s")
    elapsed = time.monotonic() - started_all
    print(f"{'total':24s} {sum(counts.values()):8d} examples in {elapsed:.0f} s: "
          "no hang, no crash, only HarnessError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
