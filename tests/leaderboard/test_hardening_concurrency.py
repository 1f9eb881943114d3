"""Concurrent writers into the same folders: nothing lost, nothing interleaved.

``tests/leaderboard/test_leaderboard.py`` already races 8 submitters of different files (and one
exact duplicate); ``tests/slurm/test_slurm.py`` runs extraction shards as a job array. What is added
here, all with real processes released at the same instant:

* the same feature files submitted at once under two method names: one record, not two;
* extraction shards writing into one folder at once, one shard by two processes (a task
  resubmitted while the first attempt still runs): every file complete, equal to a
  sequential extraction, no temporary file left;
* leaderboard builds into the same output folder at once: every build succeeds and the
  result is the build's (tables/ and site/ are swapped in whole).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from badinputs import start_together, temp_files, two_records_and_their_build, write_valid_features

SPLIT = "synth-outdoor-ams"
SMALL_SPLIT = "synth-ams30k-test"

# Waits for the start signal, then runs ``harness ARGS...`` in this process (main() returns
# the exit code, which becomes the process's); prints nothing else.
_RACER = r"""
import sys, time
from pathlib import Path
ready, go, *argv = sys.argv[1:]
from harness.cli import main
import harness.config, harness.evaluate, harness.ground_truth, scipy.spatial  # warm imports
if argv[0] == "extract":
    import methods.extract, methods.probe, torch  # noqa: F401
if argv[0] == "leaderboard":
    import leaderboard.build, pandas, matplotlib  # noqa: F401
Path(ready).touch()
deadline = time.time() + 300
while not Path(go).exists():
    if time.time() > deadline:
        sys.exit("no start signal")
    time.sleep(0.002)
sys.exit(main(["-q", *argv]))
"""


def race(tmp_path: Path, commands: list[list[str]], timeout: float = 300) -> list[tuple[int, str]]:
    """Start one process per command, release them together; (exit code, stderr) of each."""
    argvs = [lambda ready, go, argv=argv: [sys.executable, "-c", _RACER, ready, go, *argv]
             for argv in commands]
    return [(code, stderr) for code, _, stderr in start_together(tmp_path, argvs, timeout=timeout)]


def test_the_same_files_raced_under_two_method_names_give_one_record(tiny_city, tmp_path):
    from leaderboard.check import check_results
    from leaderboard.records import read_record

    split = tiny_city.split("outdoor-ams")
    paths = write_valid_features(split, tmp_path / "features")
    results = tmp_path / "results"
    commands = [["submit", *paths, "--split", SPLIT, "--data-root", tiny_city.data_root,
                 "--method-name", name, "--results", results]
                for name in ("alpha", "beta", "alpha", "beta")]
    outcomes = race(tmp_path, commands)

    records = sorted(p for p in results.rglob("*.json") if not p.name.startswith("."))
    assert len(records) == 1, records  # never the same submission under two names
    winner = read_record(records[0]).method
    for (code, stderr), command in zip(outcomes, commands):
        if command[command.index("--method-name") + 1] == winner:
            assert code == 0, stderr
        else:  # refused, naming the record that exists
            assert code == 2, stderr
            assert f"these feature files were already submitted as method {winner!r}" in stderr
    assert temp_files(results) == []
    report = check_results(results, data_root=tiny_city.data_root, git=False)
    assert report.ok and report.records == 1, [p.line() for p in report.problems]


def test_extraction_shards_race_into_one_folder(tiny_city, tmp_path):
    pytest.importorskip("torch")
    from harness.features import read_descriptors, read_info, read_names
    from harness.splits import get_split
    from methods.extract import ExtractOptions, extract
    from methods.registry import get_method

    split = get_split(SMALL_SPLIT, tiny_city.data_root)
    reference = tmp_path / "reference"
    for index in range(2):
        extract(get_method("probe"), split=split, out=reference, shard=(index, 2),
                options=ExtractOptions(device="cpu", workers=0, progress=False))
    out = tmp_path / "out"

    def command(index):
        return ["extract", "--method", "probe", "--split", SMALL_SPLIT, "--data-root",
                tiny_city.data_root, "--out", out, "--shard", f"{index}/2", "--device", "cpu",
                "--workers", "0", "--no-progress"]

    # Shard 1 twice: a resubmitted task racing the first attempt of the same shard.
    outcomes = race(tmp_path, [command(0), command(1), command(1)])
    assert all(code == 0 for code, _ in outcomes), [stderr[-2000:] for _, stderr in outcomes]

    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in sorted(out.glob("*.h5")):
        for part in read_info(path).parts:
            assert read_names(path, part) == read_names(reference / path.name, part)
            assert np.array_equal(read_descriptors(path, part),
                                  read_descriptors(reference / path.name, part))
    assert temp_files(out) == []


def test_leaderboard_builds_race_into_one_folder(tiny_city, tmp_path):
    results, expected = two_records_and_their_build(tiny_city.split("outdoor-ams"), tmp_path)
    out = tmp_path / "site"
    outcomes = race(tmp_path, [["leaderboard", "build", "--results", results, "--out", out,
                                "--no-grids"]] * 3)
    assert all(code == 0 for code, _ in outcomes), [stderr[-2000:] for _, stderr in outcomes]
    built = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert built == expected
    assert not [p for p in out.iterdir() if p.name.startswith(".")], list(out.iterdir())
