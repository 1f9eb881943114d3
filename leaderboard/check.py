"""`harness leaderboard check`: is every committed record still what was submitted?

For each ``<split>/<method>/<id>.json`` under the results folder:

* it reads with a known schema version, its content checksum matches its content (a
  hand-edited score is caught), and it sits at the path its content names;
* its top-k sidecar exists, matches its sha256, covers the split's queries, and the Recall@N
  it gives equals the stored scores;
* when the split is available (``--data-root``): the split checksum and the protocol
  (radius, Recall Ns, spatial NMS, no-positive policy) are the split's;
* when the feature files are available (``--features-dir``, found by name and checked by
  sha256): evaluating them again gives the stored scores;
* across git history: no score moved by more than 0.001 since the record's first commit
  (skipped, with a note, outside a git work tree).

Stray files (anything but records, their sidecars and a README) are reported too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError
from harness.io import sha256_file
from leaderboard.history import NotInGit, find_drift, score_history
from leaderboard.records import (
    PREDICTIONS_SUFFIX,
    RECORD_SUFFIX,
    LeaderboardRecord,
    read_record,
    read_topk,
)

logger = logging.getLogger(__name__)

DRIFT_TOLERANCE = 0.001
#: Records are rounded to 6 decimals; a recomputed score may differ by rounding only.
RECOMPUTE_TOLERANCE = 2e-6
_ALLOWED_EXTRA = {"README.md", ".gitkeep"}


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def line(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_results` found: ``problems`` make the check fail, ``notes`` do not."""

    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recomputed: int = 0
    split_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path, message: str) -> None:
        self.problems.append(Problem(Path(path), " ".join(str(message).split())))


def _find_features(record: LeaderboardRecord, feature_dirs: Sequence[Path]) -> list[Path] | None:
    """The record's feature files under ``feature_dirs`` (by name, any depth; sha256 verified)."""
    found = []
    for digest in record.result.features:
        match = None
        for folder in feature_dirs:
            for candidate in sorted(folder.rglob(digest.path)):
                if (
                    candidate.is_file()
                    and candidate.stat().st_size == digest.bytes
                    and sha256_file(candidate) == digest.sha256
                ):
                    match = candidate
                    break
            if match:
                break
        if match is None:
            return None
        found.append(match)
    return found


def _compare_scores(
    report: CheckReport,
    path: Path,
    stored: dict,
    recomputed: dict,
    what: str,
    tolerance: float = RECOMPUTE_TOLERANCE,
) -> None:
    for name in sorted(set(stored) & set(recomputed)):
        if abs(stored[name] - recomputed[name]) > tolerance:
            report.add(
                path,
                f"stored {name} {stored[name]:.6f} differs from the {recomputed[name]:.6f} "
                f"that {what} give",
            )


def _check_intervals(report: CheckReport, path: Path, result, topk) -> None:
    """The stored Recall@N intervals must be what the saved predictions and the recorded
    bootstrap settings (fixed seed) give."""
    if not result.intervals or not result.bootstrap:
        return
    from harness.stats import BootstrapSettings, per_query_scores, score_intervals

    per_query = per_query_scores(topk.first_positive_rank, topk.has_positive,
                                 result.protocol.recall_ns, result.protocol.no_positive)
    recomputed = score_intervals(per_query, BootstrapSettings.from_dict(result.bootstrap))
    for name, bounds in sorted(recomputed.items()):
        stored = result.intervals.get(name)
        if stored is not None and max(abs(stored[0] - bounds[0]),
                                      abs(stored[1] - bounds[1])) > RECOMPUTE_TOLERANCE:
            report.add(path, f"stored interval of {name} [{stored[0]:.6f}, {stored[1]:.6f}] "
                             f"differs from the [{bounds[0]:.6f}, {bounds[1]:.6f}] that its "
                             "saved predictions give")


def _check_protocol(report: CheckReport, path: Path, record: LeaderboardRecord, split) -> None:
    from harness.config import EvalConfig

    result = record.result
    if result.split_sha256 != split.sha256:
        report.add(
            path,
            f"split checksum {result.split_sha256[:12]} is not the split's {split.sha256[:12]} "
            f"(the split {split.name} changed, or the record is for another version)",
        )
        return
    expected = EvalConfig().protocol(split)
    protocol = result.protocol
    for name in ("radius_m", "spatial_nms", "no_positive"):
        if getattr(protocol, name) != getattr(expected, name):
            report.add(
                path,
                f"protocol {name} {getattr(protocol, name)!r} is not the split's "
                f"{getattr(expected, name)!r}",
            )
    missing = sorted(set(expected.recall_ns) - set(protocol.recall_ns))
    if missing:
        report.add(path, f"protocol lacks the split's Recall@N for N in {missing}")
    counts = result.counts
    if (counts.queries, counts.database) != (split.num_queries, split.num_database):
        report.add(
            path,
            f"counts {counts.queries}/{counts.database} differ from the split's "
            f"{split.num_queries}/{split.num_database}",
        )


def _check_record(
    report: CheckReport, path: Path, results_dir: Path, *, data_root, feature_dirs
) -> None:
    try:
        record = read_record(path)
    except HarnessError as exc:
        report.add(path, exc.message)
        return
    expected = results_dir / record.relative_path()
    if path.resolve() != expected.resolve():
        report.add(
            path, f"record belongs at {record.relative_path()} (split/method/id of its content)"
        )
    if record.predictions is not None:
        sidecar = path.parent / record.predictions.file
        if not sidecar.is_file():
            report.add(sidecar, "predictions file named by the record is missing")
        elif (sidecar.stat().st_size != record.predictions.bytes
              or sha256_file(sidecar) != record.predictions.sha256):
            # The size first: a huge (or sparse) file of the wrong size is never read.
            report.add(sidecar, "predictions file does not match the sha256 in its record")
        else:
            try:
                topk = read_topk(sidecar)
            except HarnessError as exc:
                report.add(sidecar, exc.message)
            else:
                if topk.indices.shape != (record.result.counts.queries, record.predictions.top_k):
                    report.add(
                        sidecar,
                        f"shape {topk.indices.shape} is not (queries, top_k) "
                        f"({record.result.counts.queries}, {record.predictions.top_k})",
                    )
                else:
                    recalls = topk.recall_at(
                        record.result.protocol.recall_ns, record.result.protocol.no_positive
                    )
                    _compare_scores(
                        report, path, record.result.scores, recalls, "its saved predictions"
                    )
                    _check_intervals(report, path, record.result, topk)
    from harness.splits import get_split, split_path

    split = None
    if split_path(record.split, data_root).is_file():
        try:
            split = get_split(record.split, data_root)
        except HarnessError as exc:
            report.add(path, f"split {record.split}: {exc.one_line()}")
    else:
        report.notes.append(
            f"{path}: split {record.split} is not imported under "
            f"{split_path('x', data_root).parent}; "
            "protocol not checked"
        )
    if split is not None:
        report.split_checked += 1
        _check_protocol(report, path, record, split)
    if feature_dirs:
        features = _find_features(record, feature_dirs)
        if features is None:
            report.notes.append(f"{path}: feature files not found; scores not recomputed")
        elif split is None:
            report.notes.append(
                f"{path}: split {record.split} not available; scores not recomputed"
            )
        elif split.sha256 == record.result.split_sha256:
            from harness.config import EvalConfig
            from harness.evaluate import evaluate

            protocol = record.result.protocol
            config = EvalConfig(
                recall_ns=protocol.recall_ns,
                radius_m=protocol.radius_m,
                spatial_nms=protocol.spatial_nms,
                no_positive=protocol.no_positive,
                map_k=protocol.map_k,
                checksums=False,
            )
            from harness.sources.rankings import evaluate_ranking, is_ranking_result

            try:
                if is_ranking_result(record.result):  # a ranking submission: its one file
                    again = evaluate_ranking(features[0], split, config)
                else:
                    again = evaluate(features, split, config)
            except HarnessError as exc:
                report.add(path, f"its feature files no longer evaluate: {exc.one_line()}")
            else:
                report.recomputed += 1
                _compare_scores(
                    report, path, record.result.scores, again.scores, "its feature files"
                )


def check_results(
    results_dir: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    feature_dirs: Sequence[str | os.PathLike] = (),
    git: bool = True,
    drift_tolerance: float = DRIFT_TOLERANCE,
) -> CheckReport:
    """Check every record under ``results_dir`` (see the module docstring).

    Never raises for a bad record: every problem goes into the report.

    ``data_root`` (default: the harness's) is where splits are looked up; a split that is not
    imported there is noted and its protocol check skipped.
    """
    from harness.splits import default_data_root

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise HarnessError("results directory not found", results_dir)
    data_root = default_data_root() if data_root is None else Path(data_root)
    report = CheckReport()
    feature_dirs = [Path(d) for d in feature_dirs]
    for path in sorted(p for p in results_dir.rglob("*") if not p.is_dir()):
        if not path.is_file() or path.is_symlink():
            # Never opened: a FIFO would block the check, a device read forever, a link
            # point outside the folder.
            report.add(path, "not a regular file (FIFO, device, socket or symlink); records "
                             "and sidecars are plain files")
            continue
        relative = path.relative_to(results_dir)
        if len(relative.parts) == 1 and relative.name in _ALLOWED_EXTRA:
            continue
        if len(relative.parts) == 3 and path.name.endswith(PREDICTIONS_SUFFIX):
            continue  # checked with its record (an orphan is reported below)
        if len(relative.parts) != 3 or path.suffix != RECORD_SUFFIX or path.name.startswith("."):
            report.add(
                path,
                "not a record: expected <split>/<method>/<id>.json (leftover or misplaced file?)",
            )
            continue
        report.records += 1
        _check_record(report, path, results_dir, data_root=data_root, feature_dirs=feature_dirs)
    for sidecar in sorted(results_dir.glob(f"*/*/*{PREDICTIONS_SUFFIX}")):
        if not sidecar.with_name(
            sidecar.name[: -len(PREDICTIONS_SUFFIX)] + RECORD_SUFFIX
        ).is_file():
            report.add(sidecar, "predictions file without its record")
    if git:
        try:
            drifts = find_drift(score_history(results_dir), drift_tolerance)
        except NotInGit as exc:
            report.notes.append(
                f"score drift between commits not checked: not in a git work tree ({exc})"
            )
        else:
            for drift in drifts:
                report.add(drift.path, drift.message())
    return report
