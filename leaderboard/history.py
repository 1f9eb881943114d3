"""Score history of committed records, read with git: how did each record's scores change?

Records are immutable, yet a file can still be rewritten and committed (with its content
checksum recomputed). mteb's rule: a committed score may not move by more than 0.001. Every
version of every record under the results folder is read from ``git log``/``git cat-file``,
plus the working-tree file, and compared with the first committed version.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

WORKING_TREE = "working tree"


class NotInGit(Exception):
    """The results folder is not inside a git work tree (or git is missing)."""


@dataclass(frozen=True)
class ScoreVersion:
    """The scores of one version of a record file: ``commit`` is a sha or ``working tree``."""

    commit: str
    scores: Mapping[str, float]


@dataclass(frozen=True)
class ScoreDrift:
    path: Path
    score: str
    first: ScoreVersion
    later: ScoreVersion
    delta: float

    def message(self) -> str:
        return (
            f"{self.score} changed by {self.delta:+.6f} between commits: "
            f"{self.first.scores[self.score]:.6f} in {self.first.commit[:12]} -> "
            f"{self.later.scores[self.score]:.6f} in {self.later.commit[:12]} "
            "(records are immutable; at most 0.001 is tolerated)"
        )


def _git(args: list[str], cwd: Path, stdin: bytes | None = None) -> bytes:
    try:
        completed = subprocess.run(
            ["git", *args], cwd=cwd, input=stdin, capture_output=True, check=False
        )
    except FileNotFoundError:
        raise NotInGit("git is not installed") from None
    if completed.returncode != 0:
        raise NotInGit(
            completed.stderr.decode("utf-8", "replace").strip() or f"git {args[0]} failed"
        )
    return completed.stdout


def _scores_of(data) -> dict[str, float] | None:
    """The scores of a record version, read leniently (old or invalid versions included)."""
    try:
        scores = data["result"]["scores"]
        return {
            str(k): float(v)
            for k, v in scores.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def score_history(results_dir: str | os.PathLike) -> dict[Path, list[ScoreVersion]]:
    """Every committed version (oldest first) and the working-tree version of each record.

    Raises:
        NotInGit: ``results_dir`` is not inside a git work tree.
    """
    results_dir = Path(results_dir).resolve()
    top = Path(_git(["rev-parse", "--show-toplevel"], results_dir).decode().strip()).resolve()
    relative = results_dir.relative_to(top).as_posix() or "."
    try:
        log = _git(["log", "--no-renames", "--format=@%H", "--name-only", "--", relative], top)
    except NotInGit as exc:
        if "does not have any commits" in str(exc):
            log = b""
        else:
            raise
    versions: dict[str, list[str]] = {}
    commit = None
    for line in log.decode("utf-8", "replace").splitlines():
        if line.startswith("@"):
            commit = line[1:]
        elif line.strip() and commit and line.endswith(".json"):
            versions.setdefault(line, []).append(commit)
    requests = [(path, sha) for path, shas in sorted(versions.items()) for sha in reversed(shas)]
    blobs = _cat_files(top, requests)
    history: dict[Path, list[ScoreVersion]] = {}
    for (path, sha), blob in zip(requests, blobs):
        if blob is None:  # the commit deleted the file
            continue
        try:
            scores = _scores_of(json.loads(blob))
        except (json.JSONDecodeError, UnicodeDecodeError):
            scores = None
        if scores is not None:
            history.setdefault(top / path, []).append(ScoreVersion(sha, scores))
    for path in sorted(results_dir.glob("*/*/*.json")):  # uncommitted edits count too
        try:
            scores = _scores_of(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            scores = None
        versions = history.setdefault(path.resolve(), [])
        if scores is not None and (not versions or versions[-1].scores != scores):
            versions.append(ScoreVersion(WORKING_TREE, scores))
    return history


def _cat_files(top: Path, requests: list[tuple[str, str]]) -> list[bytes | None]:
    if not requests:
        return []
    stdin = "".join(f"{sha}:{path}\n" for path, sha in requests).encode("utf-8")
    out = _git(["cat-file", "--batch"], top, stdin=stdin)
    blobs: list[bytes | None] = []
    position = 0
    for _ in requests:
        end = out.index(b"\n", position)
        header = out[position:end].split()
        position = end + 1
        if len(header) < 3 or header[1] != b"blob":
            blobs.append(None)
            continue
        size = int(header[2])
        blobs.append(out[position : position + size])
        position += size + 1
    return blobs


def find_drift(
    history: Mapping[Path, list[ScoreVersion]], tolerance: float = 0.001
) -> list[ScoreDrift]:
    """Scores that moved by more than ``tolerance`` from a record's first committed version."""
    drifts = []
    for path, versions in sorted(history.items()):
        if len(versions) < 2:
            continue
        first = versions[0]
        reported = set()
        for later in versions[1:]:
            for score in sorted(set(first.scores) & set(later.scores)):
                delta = later.scores[score] - first.scores[score]
                if (
                    abs(delta) > tolerance and score not in reported
                ):  # the first drift of each score
                    reported.add(score)
                    drifts.append(ScoreDrift(path, score, first, later, delta))
    return drifts
