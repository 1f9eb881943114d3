"""kill -9 at random points: real ``harness`` processes die mid-work, nothing half-done counts.

Scenarios (each a real subprocess of the ``harness`` command, killed with SIGKILL):

* ``harness eval --json`` (the record and its predictions sidecar);
* ``harness submit`` (the top-k sidecar and the immutable record);
* ``harness extract --shard i/n`` (database shard files and the query file);
* ``harness leaderboard build`` (README, tables/ and site/ swapped in whole);
* ``harness slurm eval --cluster local`` (partial top-K files, then the merged record); the
  launcher dies and so do its task processes (a node lost), or the launcher alone.

Half of the kills come after a random delay (seeded), uniform over the uninterrupted run's
duration; the other half as soon as the command starts writing its outputs (a temporary or
final file appears), which is where a kill does harm. After every kill: each output is
either absent or complete and valid (no partial file is ever taken for a complete one;
leftover temporary files are dot-files named ``.*.tmp`` that no reader picks up). Then the
same command, rerun, finishes the work with exactly the result of an uninterrupted run. The
number of interruptions survived is printed (``-s``) and asserted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from badinputs import subprocess_env, temp_files, two_records_and_their_build, write_valid_features

SPLIT = "synth-outdoor-ams"
SMALL_SPLIT = "synth-ams30k-test"
SEED = 20250131
KILLS = int(os.environ.get("HARNESS_KILLS", "2"))  # per scenario; the slow variants: 8
SLOW_KILLS = 8


@pytest.fixture(params=[KILLS, pytest.param(SLOW_KILLS, marks=pytest.mark.slow)],
                ids=["kills", "many-kills"])
def kills(request) -> int:
    return request.param
_SURVIVED: dict[str, int] = {}


def harness_command() -> list[str]:
    script = Path(sys.executable).with_name("harness")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "harness.cli"]


@dataclass
class Kill:
    delivered: bool  # the process was still running when killed
    returncode: int
    seconds: float


def run(argv, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(harness_command() + ["-q", *map(str, argv)], cwd=cwd,
                            env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (argv, result.returncode, result.stderr[-3000:])
    return result


def run_and_kill(argv, cwd: Path, *, delay_s: float | None, watch: Path | None,
                 take_children: bool = True, timeout: float = 300) -> Kill:
    """Start ``harness ARGV``; SIGKILL it after ``delay_s``, or (``delay_s`` None) as soon as a
    new file appears under ``watch``. With ``take_children`` its child processes die too."""
    import psutil

    before = set(_files(watch)) if watch is not None else set()
    started = time.monotonic()
    process = subprocess.Popen(harness_command() + ["-q", *map(str, argv)], cwd=cwd,
                               env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if delay_s is not None:
            process.wait(timeout=delay_s)
        else:
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if set(_files(watch)) - before:
                    break
                time.sleep(0.002)
            process.wait(timeout=0)
        return Kill(False, process.returncode, time.monotonic() - started)
    except subprocess.TimeoutExpired:
        pass
    children = []
    if take_children:
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    for child in children:  # only processes this test started (the killed one's children)
        try:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        except psutil.NoSuchProcess:
            pass
    return Kill(True, process.returncode, time.monotonic() - started)


def _files(folder: Path | None) -> list[str]:
    if folder is None or not folder.exists():
        return []
    return [str(p) for p in folder.rglob("*") if p.is_file()]


def _kill_plan(rng: random.Random, count: int, duration_s: float) -> list[float | None]:
    """Kill moments: None = at the first write, else a delay in seconds (seeded)."""
    plan = []
    for number in range(1, count + 1):
        plan.append(None if number % 2 else rng.uniform(0.3, 1.0) * duration_s)
    return plan


def kill_repeatedly(rng, count: int, duration_s: float, argv, cwd: Path, *, watch: Path,
                    check, reset, take_children: bool = True, after_kill=None) -> list[Kill]:
    """``count`` runs of ``argv``, each killed at a point of ``_kill_plan``; after each one
    ``check()`` the outputs. A run that finished before its kill (its outputs are then the
    complete ones) is ``reset()`` so that the next kill interrupts real work again."""
    kills = []
    for delay in _kill_plan(rng, count, duration_s):
        kill = run_and_kill(argv, cwd, delay_s=delay, watch=watch, take_children=take_children)
        kills.append(kill)
        if after_kill is not None:
            after_kill()
        check()
        if not kill.delivered:
            assert kill.returncode == 0, kill
            reset()
    return kills


def _only_dot_temp_files(folder: Path) -> None:
    """Whatever a kill left behind that is not an output is a dot-named temporary file."""
    for leftover in temp_files(folder):
        assert Path(leftover).name.startswith("."), leftover


def _survived(name: str, kills: list[Kill]) -> int:
    delivered = sum(k.delivered for k in kills)
    _SURVIVED[name] = _SURVIVED.get(name, 0) + delivered
    print(f"{name}: {delivered} of {len(kills)} kills hit a running process "
          f"({[(k.delivered, k.returncode, round(k.seconds, 2)) for k in kills]})")
    return delivered


# ==================================================================================== eval


def _same_result(record: Path, reference: Path) -> None:
    from harness.results import read_predictions, read_result

    result, expected = read_result(record), read_result(reference)
    assert result.scores == expected.scores and result.counts == expected.counts
    assert [f.sha256 for f in result.features] == [f.sha256 for f in expected.features]
    got, want = read_predictions(record, result), read_predictions(reference, expected)
    assert np.array_equal(got.indices, want.indices) and np.array_equal(got.scores, want.scores)


def test_eval_killed_at_random_points(tiny_city, tmp_path, kills):
    rng = random.Random(SEED)
    split = tiny_city.split("outdoor-ams")
    features = tmp_path / "features"
    write_valid_features(split, features, shards=2)
    out = tmp_path / "out"
    args = ["eval", "--features", features, "--split", SPLIT, "--data-root", tiny_city.data_root,
            "--no-progress"]
    started = time.monotonic()
    run(args + ["--json", tmp_path / "reference" / "result.json"], tmp_path)
    duration = time.monotonic() - started

    def check():
        record = out / "result.json"
        if record.exists():  # complete, with its sidecar: atomic writes, sidecar first
            _same_result(record, tmp_path / "reference" / "result.json")
        _only_dot_temp_files(out)

    done = kill_repeatedly(rng, kills + 1, duration, args + ["--json", out / "result.json"],
                            tmp_path, watch=out, check=check,
                            reset=lambda: shutil.rmtree(out, ignore_errors=True))
    run(args + ["--json", out / "result.json"], tmp_path)
    _same_result(out / "result.json", tmp_path / "reference" / "result.json")
    _survived("eval", done)


# ================================================================================== submit


def test_submit_killed_at_random_points(tiny_city, tmp_path, kills):
    from leaderboard.check import check_results
    from leaderboard.records import read_record, read_topk

    rng = random.Random(SEED + 1)
    split = tiny_city.split("outdoor-ams")
    paths = write_valid_features(split, tmp_path / "features")
    results = tmp_path / "results"
    args = ["submit", *paths, "--split", SPLIT, "--data-root", tiny_city.data_root,
            "--method-name", "killed"]
    started = time.monotonic()
    run(args + ["--results", tmp_path / "reference"], tmp_path)
    duration = time.monotonic() - started
    reference = read_record(next((tmp_path / "reference").rglob("*.json")))

    def check():
        for record_path in results.rglob("*.json"):
            if record_path.name.startswith("."):
                continue
            record = read_record(record_path)  # complete and valid, or absent
            assert record.scores == reference.scores and record.id == reference.id
            read_topk(record_path.parent / record.predictions.file)
        for sidecar in results.rglob("*.topk.npz"):  # published whole, or not at all
            read_topk(sidecar)
        _only_dot_temp_files(results)

    done = kill_repeatedly(rng, kills + 1, duration, args + ["--results", results], tmp_path,
                            watch=results, check=check,
                            reset=lambda: shutil.rmtree(results, ignore_errors=True))
    run(args + ["--results", results], tmp_path)
    [record_path] = [p for p in results.rglob("*.json") if not p.name.startswith(".")]
    record = read_record(record_path)
    assert record.scores == reference.scores and record.id == reference.id
    assert record.predictions.sha256 == reference.predictions.sha256
    # `leaderboard check` passes: the rerun removed what the killed submitters left (their
    # temporary files, a sidecar published without its record).
    report = check_results(results, data_root=tiny_city.data_root, git=False)
    assert report.records == 1
    assert report.ok, [problem.line() for problem in report.problems]
    assert temp_files(results) == []
    _survived("submit", done)


# ============================================================================== extraction


def test_extraction_shards_killed_at_random_points(tiny_city, tmp_path, kills):
    pytest.importorskip("torch")
    from harness.features import read_descriptors, read_info, read_names
    from harness.splits import get_split
    from methods.extract import ExtractOptions, extract
    from methods.registry import get_method

    rng = random.Random(SEED + 2)
    split = get_split(SMALL_SPLIT, tiny_city.data_root)
    reference = tmp_path / "reference"
    options = ExtractOptions(device="cpu", workers=0, progress=False)
    for index in range(2):
        extract(get_method("probe"), split=split, out=reference, shard=(index, 2), options=options)
    out = tmp_path / "out"

    def args(index):
        return ["extract", "--method", "probe", "--split", SMALL_SPLIT, "--data-root",
                tiny_city.data_root, "--out", out, "--shard", f"{index}/2", "--device", "cpu",
                "--workers", "0", "--no-progress"]

    def check():
        for path in out.glob("*.h5"):  # every visible shard file is complete
            info = read_info(path)
            assert all(len(read_names(path, part)) == info.parts[part].count for part in info.parts)
        _only_dot_temp_files(out)

    started = time.monotonic()
    run(args(0), tmp_path)  # shard 0 (and the queries) uninterrupted: the time a run takes
    duration = time.monotonic() - started
    # Shard 1 is killed: at its first write, then (more kills) at random moments.
    done = kill_repeatedly(rng, kills, duration, args(1), tmp_path, watch=out, check=check,
                            reset=lambda: (out / "database-00001-of-00002.h5").unlink())
    run(args(1), tmp_path)  # rerunning the shard finishes the extraction
    files = sorted(p.name for p in out.glob("*.h5"))
    assert files == sorted(p.name for p in reference.glob("*.h5"))
    for name in files:
        for part in read_info(out / name).parts:
            assert read_names(out / name, part) == read_names(reference / name, part)
            assert np.array_equal(read_descriptors(out / name, part),
                                  read_descriptors(reference / name, part))
    _survived("extract --shard", done)


# ======================================================================= leaderboard build


def test_leaderboard_build_killed_at_random_points(tiny_city, tmp_path, kills):
    rng = random.Random(SEED + 3)
    results, expected = two_records_and_their_build(tiny_city.split("outdoor-ams"), tmp_path)
    out = tmp_path / "site"
    args = ["leaderboard", "build", "--results", results, "--no-grids"]

    def check():
        if out.exists():
            for path in out.rglob("*"):
                relative = str(path.relative_to(out))
                if path.is_file() and not any(part.startswith(".") for part in path.parts[
                        len(out.parts):]):
                    assert path.read_bytes() == expected[relative], relative  # whole, or absent
            if (out / "tables").is_dir():  # tables/ is swapped in as a whole folder
                assert {p.name for p in (out / "tables").iterdir()} == {
                    Path(k).name for k in expected if k.startswith("tables/")}

    started = time.monotonic()
    run(args + ["--out", tmp_path / "timed"], tmp_path)
    duration = time.monotonic() - started
    done = kill_repeatedly(rng, kills, duration, args + ["--out", out], tmp_path, watch=out,
                            check=check, reset=lambda: shutil.rmtree(out))
    run(args + ["--out", out], tmp_path)
    built = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()
             and not any(part.startswith(".") for part in p.parts[len(out.parts):])}
    assert built == expected
    _survived("leaderboard build", done)


# ========================================================================= sharded eval


@pytest.mark.parametrize("take_children", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["node-lost", "launcher-only"])
def test_sharded_slurm_eval_killed_at_random_points(tiny_city, tmp_path, take_children, kills):
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.results import read_predictions, read_result

    rng = random.Random(SEED + 4 + take_children)
    split = tiny_city.split("outdoor-ams")
    features = tmp_path / "features"
    write_valid_features(split, features, shards=2)
    expected = evaluate([features], split, EvalConfig(ngpu=0, progress=False))
    out = tmp_path / "merged.json"
    logs = tmp_path / "logs"
    args = ["slurm", "eval", "--features", features, "--split", SPLIT, "--data-root",
            tiny_city.data_root, "--shards", "2", "--ngpu", "0", "--cluster", "local",
            "--log-dir", logs, "--json", out, "--time", "10"]

    def check_outputs():
        if out.exists():
            result = read_result(out)
            assert result.scores == {k: round(v, 6) for k, v in expected.scores.items()}
        for partial in logs.rglob("partials/*.npz"):
            if not partial.name.startswith("."):
                with np.load(partial, allow_pickle=False) as data:  # complete archives only
                    assert data["indices"].shape == data["scores"].shape
        _only_dot_temp_files(logs)

    def reset():
        shutil.rmtree(logs, ignore_errors=True)
        out.unlink(missing_ok=True)
        out.with_name("merged.predictions.npz").unlink(missing_ok=True)

    started = time.monotonic()
    run(args, tmp_path)
    duration = time.monotonic() - started
    check_outputs()
    reset()
    done = kill_repeatedly(rng, kills, duration, args, tmp_path, watch=logs, check=check_outputs,
                            reset=reset, take_children=take_children,
                            after_kill=None if take_children else lambda: _wait_for_orphans(logs))
    run(args, tmp_path)
    result = read_result(out)
    assert result.scores == {k: round(v, 6) for k, v in expected.scores.items()}
    predictions = read_predictions(out, result)
    assert np.array_equal(predictions.indices, expected.prediction_data.indices)
    assert np.array_equal(predictions.scores, expected.prediction_data.scores)
    _survived(f"slurm eval ({'node lost' if take_children else 'launcher only'})", done)


def _wait_for_orphans(logs: Path, timeout_s: float = 120) -> None:
    """Task processes of a killed launcher finish on their own (as SLURM jobs would): wait until
    no task status file says RUNNING, so the next run does not race them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = []
        for status in logs.rglob("tasks/*.json"):
            try:
                if json.loads(status.read_text()).get("state") == "RUNNING":
                    running.append(status)
            except (OSError, ValueError):
                running.append(status)
        if not running:
            return
        time.sleep(0.2)


def test_interruptions_were_survived():
    """Runs last in this module: the kills above hit running processes, not finished ones."""
    if not _SURVIVED:
        pytest.skip("the scenarios did not run")
    total = sum(_SURVIVED.values())
    print(f"interruptions survived: {total} ({_SURVIVED})")
    assert total >= len(_SURVIVED), _SURVIVED
