"""Helpers for the hardening tests: valid inputs to break, snapshots, CLI runs.

Not a test module (no ``test_`` prefix): the hardening suites
(``tests/*/test_hardening_*.py``) import it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 8


def unit_rows(count: int, dim: int = DIM, seed: int = 0, dtype="float32") -> np.ndarray:
    """``count`` random L2-normalised rows (seeded)."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(dtype)


def write_valid_features(split, folder: Path, *, seed: int = 0, dim: int = DIM, shards: int = 1,
                         method: str = "hardening", dtype="float32") -> list[Path]:
    """A valid query file plus ``shards`` database files for ``split`` (rows in split order)."""
    from harness.features import write_features

    folder = Path(folder)
    queries = unit_rows(split.num_queries, dim, seed, dtype)
    database = unit_rows(split.num_database, dim, seed + 1, dtype)
    paths = [write_features(folder / "query.h5", split=split.name, method=method,
                            query=(list(split.query_names), queries))]
    for number, rows in enumerate(np.array_split(np.arange(split.num_database), shards)):
        paths.append(write_features(
            folder / f"database-{number}.h5", split=split.name, method=method,
            database=([split.database_names[i] for i in rows], database[rows])))
    return paths


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (relative path -> (size, mtime_ns)); symlinks not followed."""
    root = Path(root)
    found = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


def two_records_and_their_build(split, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Two submissions of random features to ``tmp_path/results`` and the bytes of a
    leaderboard built from them without grids: (results folder, {relative path: bytes})."""
    from leaderboard.build import build_leaderboard
    from leaderboard.submit import submit

    results = tmp_path / "results"
    for number in range(2):
        paths = write_valid_features(split, tmp_path / f"features{number}", seed=number)
        submit(paths, split=split, method_name=f"method{number}", results_dir=results,
               submitted_at="2025-01-01T00:00:00Z")
    reference = tmp_path / "reference"
    build_leaderboard(results, reference, grids=False)
    return results, {str(p.relative_to(reference)): p.read_bytes()
                     for p in reference.rglob("*") if p.is_file()}


def directories(root: Path) -> set[str]:
    root = Path(root)
    return {str(Path(d).relative_to(root)) for d, _, _ in os.walk(root)} if root.exists() else set()


TEMP_NAME = re.compile(r"^\..*\.tmp$|^\.build\.|\.old\.\d+$")


def temp_files(root: Path) -> list[str]:
    """Leftover temporary files or folders (``atomic_path``, ``publish_bytes``, build staging)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if TEMP_NAME.search(p.name))


@dataclass
class CliOutcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def run_cli(argv: Sequence[str]) -> CliOutcome:
    """``harness ARGV`` in this process (click's CliRunner), stdout and stderr apart."""
    from click.testing import CliRunner

    from harness.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in argv])
    return CliOutcome(result.exit_code, result.stdout, result.stderr, result.exception)


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


HARNESS = [sys.executable, "-m", "harness.cli"]


def start_together(tmp_path: Path, argvs: Sequence[Callable[[Path, Path], list[str]]], *,
                   env: dict | None = None, timeout: float = 300) -> list[tuple[int, str, str]]:
    """Start one process per ``argv(ready, go)``, wait until each has touched its ``ready``
    file, then touch ``go`` to release them at the same instant; (exit code, stdout, stderr)
    of each, in order."""
    go = tmp_path / "go"
    processes = []
    for number, argv in enumerate(argvs):
        ready = tmp_path / f"ready{number}"
        processes.append((ready, subprocess.Popen(
            [str(a) for a in argv(ready, go)], env=env or subprocess_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + timeout
    while not all(ready.exists() for ready, _ in processes):
        assert time.monotonic() < deadline, "the processes did not start"
        assert all(p.poll() is None for _, p in processes), [p.communicate() for _, p in processes]
        time.sleep(0.01)
    go.touch()
    outcomes = []
    for _, process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        outcomes.append((process.returncode, stdout, stderr))
    return outcomes


# --------------------------------------------------------------------------------------------
# A reader in a child process: a hang or a crash of the C libraries (HDF5, scipy) fails one
# example instead of freezing or killing the test session.


def _reader_loop(connection, module: str, table: str, split_factory: str) -> None:
    import importlib
    import traceback

    source = importlib.import_module(module)
    targets = getattr(source, table)
    split = getattr(source, split_factory)()
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        name, path = request
        try:
            targets[name](Path(path), split)
        except BaseException as exc:  # reported to the parent, which fails the example
            connection.send(("crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        else:
            connection.send(("ok", ""))


class ReaderProcess:
    """Runs ``module.table[name](path, split)`` in a spawned child, with a timeout per call.

    ``call`` returns None when the reader returned (or raised HarnessError, which the targets
    catch), and raises AssertionError naming the problem when it raised anything else, hung
    past ``timeout_s`` (the child is killed and restarted) or took the child down.
    """

    def __init__(self, module: str, table: str, split_factory: str, timeout_s: float = 30.0):
        self.args = (module, table, split_factory)
        self.timeout_s = timeout_s
        self.process = None
        self.connection = None
        self.calls = 0

    def start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=_reader_loop, args=(child, *self.args), daemon=True)
        self.process.start()
        child.close()
        self.connection = parent

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.connection.close()
        self.process = self.connection = None

    def _restart(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(5)
            self.connection.close()
        self.process = None
        self.start()

    def call(self, name: str, path: Path) -> None:
        if self.process is None:
            self.start()
        self.calls += 1
        try:
            self.connection.send((name, str(path)))
            ready = self.connection.poll(self.timeout_s)
        except (BrokenPipeError, OSError):
            ready = True
        if not ready:
            self._restart()
            raise AssertionError(f"{name}: the reader hung (> {self.timeout_s:g} s) on {path}")
        try:
            status, detail = self.connection.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            self._restart()
            raise AssertionError(f"{name}: the reader crashed the process (exit code {code}) "
                                 f"on {path}") from None
        if status != "ok":
            raise AssertionError(f"{name}: the reader raised something else than HarnessError:\n"
                                 f"{detail}")
