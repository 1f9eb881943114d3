"""Faults (issue 18, class 4): a full disk and a killed submitter.

A full disk is real: a 1 MiB tmpfs mounted for the test (root) and filled to its last page,
or, where mounting is not allowed, the file size limit (``prlimit --fsize``) that makes every
write past it fail with EFBIG. Each of eval, submit, leaderboard build, split import and
extraction ends with one ``error:`` line that says the disk is full, and leaves nothing under
a final name and no temporary file. A submitter killed between publishing the sidecar and the
record (SIGKILL from inside, at exactly that point) leaves a folder that any later submit
cleans: ``leaderboard check`` passes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from badinputs import HARNESS, subprocess_env, temp_files, write_valid_features

SPLIT = "synth-ams30k-test"


def _try_mount(folder: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(folder)],
                               capture_output=True, check=False)
    return completed.returncode == 0


def _fill(folder: Path, leave_bytes: int = 1024) -> None:
    """Fill the file system of ``folder`` until at most ``leave_bytes`` are free."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                free = shutil.disk_usage(folder).free
                if free <= leave_bytes:
                    break
                handle.write(b"\0" * min(free - leave_bytes + 4096, 1 << 16))
                handle.flush()


@pytest.fixture
def full_disk(tmp_path):
    """(folder on a full file system, extra argv prefix): tmpfs when root, else --fsize."""
    folder = tmp_path / "disk"
    if _try_mount(folder):
        _fill(folder)
        try:
            yield folder, []
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.mkdir()
        yield folder, ["prlimit", "--fsize=2048", "--"]


def _run(prefix, argv, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *HARNESS, *map(str, argv)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=cwd, timeout=600, check=False)


def _final_files(folder: Path) -> list[str]:
    # The submit lock (an empty file beside the results, by design) is not an output.
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != "filler" and not p.name.endswith(".submit.lock"))


def _commands(ctx_root: Path, data_root: Path, disk: Path, mat: Path) -> dict[str, list]:
    from harness.splits import get_split

    split = get_split(SPLIT, data_root)
    query, database = write_valid_features(split, ctx_root / "features")
    results = ctx_root / "results"
    if not results.exists():
        completed = subprocess.run(
            [*HARNESS, "submit", query, database, "--split", SPLIT, "--data-root", data_root,
             "--method-name", "m1", "--results", results, "--ngpu", "0"],
            capture_output=True, text=True, env=subprocess_env(), timeout=600, check=False)
        assert completed.returncode == 0, completed.stderr
    common = ["--split", SPLIT, "--data-root", data_root]
    return {
        "eval": ["eval", "--features", query, "--features", database, *common, "--no-progress",
                 "--json", disk / "out" / "result.json"],
        "submit": ["submit", query, database, *common, "--method-name", "m1", "--results",
                   disk / "results", "--ngpu", "0"],
        "build": ["leaderboard", "build", "--results", results, "--out", disk / "site",
                  "--data-root", data_root, "--no-grids"],
        "split import": ["splits", "import", "--name", "copied", "--mat", mat,
                         "--data-root", disk / "data"],
    }


@pytest.mark.parametrize("command", ["eval", "submit", "build", "split import"])
def test_a_full_disk_is_one_line_and_leaves_nothing(full_disk, tiny_city, tmp_path, command):
    disk, prefix = full_disk
    argv = _commands(tmp_path, tiny_city.data_root, disk,
                     tiny_city.root / "raw" / "ams30k_test.mat")[command]
    before = _final_files(disk)

    completed = _run(prefix, argv, tmp_path)

    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr and len(errors) == 1, completed.stderr[-3000:]
    assert errors[0].startswith(f"error: {disk}"), errors[0]
    assert any(words in errors[0] for words in (
        "no space left on the device", "file too large (file size limit)", "bytes needed")), \
        errors[0]
    assert _final_files(disk) == before, "a file was left under a final name"
    assert temp_files(disk) == []


def test_extraction_onto_a_full_disk_is_refused_before_writing(full_disk, tiny_city, tmp_path):
    """The feature file's size is known before the first row: checked against the space."""
    pytest.importorskip("torch")
    disk, prefix = full_disk
    completed = _run(prefix, ["extract", "--method", "probe", "--split", SPLIT, "--data-root",
                              tiny_city.data_root, "--out", disk / "features.h5"], tmp_path)
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr and len(errors) == 1, completed.stderr[-3000:]
    assert errors[0].startswith(f"error: {disk}"), errors[0]
    assert _final_files(disk) == [] and temp_files(disk) == []


_KILL_AFTER_SIDECAR = """
import os, signal, sys
import leaderboard.publish as publish
import leaderboard.submit as submit
original = publish.publish_bytes
def publish_then_die(path, data):
    created = original(path, data)
    if str(path).endswith(".topk.npz"):  # the sidecar is out, the record is not
        os.kill(os.getpid(), signal.SIGKILL)
    return created
submit.publish_bytes = publish_then_die
from harness.cli import cli
cli(sys.argv[1:])
"""

_KILL_WHILE_WRITING = """
import os, signal, sys
import harness.io as io
original = io.make_temp_file
def make_then_die(path, **kwargs):
    tmp = original(path, **kwargs)
    if str(path).endswith(".json"):  # a half-written record under its temporary name
        tmp.write_text('{"half": ')
        os.kill(os.getpid(), signal.SIGKILL)
    return tmp
io.make_temp_file = make_then_die
from harness.cli import cli
cli(sys.argv[1:])
"""


@pytest.mark.parametrize("script", [_KILL_AFTER_SIDECAR, _KILL_WHILE_WRITING],
                         ids=["between sidecar and record", "while writing the record"])
def test_a_killed_submit_is_cleaned_by_the_next_one(tiny_city, tmp_path, script):
    from harness.splits import get_split
    from leaderboard.check import check_results

    split = get_split(SPLIT, tiny_city.data_root)
    results = tmp_path / "results"
    first = write_valid_features(split, tmp_path / "first", seed=1)
    second = write_valid_features(split, tmp_path / "second", seed=2)
    common = ["--split", SPLIT, "--data-root", tiny_city.data_root, "--results", results,
              "--ngpu", "0"]
    killed = subprocess.run(
        [sys.executable, "-c", script, "submit", *map(str, first), "--method-name", "killed",
         *map(str, common)], capture_output=True, text=True, env=subprocess_env(),
        timeout=600, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = check_results(results, data_root=tiny_city.data_root, git=False)
    assert not left.ok and left.records == 0  # the leftovers are visible to the check

    # Another submission (not a rerun of the killed one) cleans up under the results lock.
    completed = subprocess.run([*HARNESS, "submit", *second, "--method-name", "other",
                                *common], capture_output=True, text=True,
                               env=subprocess_env(), timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = check_results(results, data_root=tiny_city.data_root, git=False)
    assert report.ok, [problem.line() for problem in report.problems]
    assert report.records == 1 and temp_files(results) == []
