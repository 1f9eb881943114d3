"""`harness submit`: validate feature files, evaluate them, publish an immutable record.

Order of work, so that a failure writes nothing and a resubmission costs nothing:

1. the method name, the metadata and the split are checked;
2. every feature file is opened (HDF5 structure) and hashed; the split checksum and the sorted
   feature checksums give the *submission key*, whose first 16 hex digits are the record id;
3. a record with that id already under the split is the same submission: it is returned,
   nothing is evaluated or written (the same files under another method name are refused);
4. the files are validated against the split and evaluated exactly (``harness.evaluate``);
5. the top-k sidecar, then the record, are published with :func:`leaderboard.publish.publish_bytes`
   (complete temporary file, then a hard link that fails if the name exists): concurrent
   submitters never overwrite each other; of two identical submissions racing, one record wins
   and the other submitter gets it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from harness.errors import HarnessError, ValidationError
from harness.features import expand_feature_paths, read_info
from harness.io import sha256_file
from leaderboard.publish import publish_bytes
from leaderboard.records import (
    ID_LENGTH,
    METHOD_NAME_PATTERN,
    PREDICTIONS_MAX_BYTES,
    PREDICTIONS_SUFFIX,
    PREDICTIONS_TOP_K,
    RECORD_SUFFIX,
    LeaderboardRecord,
    MethodMetadata,
    PredictionsRef,
    TopK,
    read_record,
    record_to_json,
    submission_key,
    topk_bytes,
)

logger = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = Path("leaderboard") / "results"


@dataclass(frozen=True)
class Submission:
    """Outcome of :func:`submit`: ``created`` is False when the same submission existed."""

    record: LeaderboardRecord
    path: Path
    created: bool


def lock_path(results_dir: Path) -> Path:
    """The lock file of a results folder: beside it, so the folder holds only records."""
    results_dir = Path(results_dir).resolve()
    return results_dir.with_name(f".{results_dir.name}.submit.lock")


@contextlib.contextmanager
def _results_lock(results_dir: Path) -> Iterator[bool]:
    """Serialise the final check and the publication of concurrent submitters.

    An exclusive ``flock`` on :func:`lock_path` (evaluation runs outside it); yields whether
    the lock is held. Where ``fcntl`` does not exist the publication still never overwrites
    (hard links), but the same files raced under two names could then give two records.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    path = lock_path(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def collect_garbage(results_dir: Path) -> list[Path]:
    """Remove what killed submitters left in ``results_dir``; call it holding the lock.

    A submitter publishes a record's sidecar, then the record, both under the results lock:
    a sidecar without its record seen by the lock's holder is the leftover of a submitter
    killed between the two, and a temporary file of a process that is gone is the leftover
    of one killed while writing. Both are removed, so an interrupted submit leaves the folder
    passing ``leaderboard check`` once any submit has run again.
    """
    from harness.io import remove_stale_temps

    removed = []
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return removed
    for folder in sorted(p for p in results_dir.glob("*/*") if p.is_dir()):
        removed += remove_stale_temps(folder)
        for sidecar in sorted(folder.glob(f"*{PREDICTIONS_SUFFIX}")):
            record = sidecar.with_name(sidecar.name[: -len(PREDICTIONS_SUFFIX)] + RECORD_SUFFIX)
            if not record.exists():
                sidecar.unlink(missing_ok=True)
                removed.append(sidecar)
    for path in removed:
        logger.info("removed the leftover of an interrupted submit: %s", path)
    return removed


def check_method_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(METHOD_NAME_PATTERN, name):
        raise HarnessError(
            f"invalid method name {name!r}: 1-64 characters, letters, digits and . _ + -, "
            "starting with a letter or digit"
        )
    return name


def _digests(paths: Sequence[Path]):
    from harness.results import FileDigest

    digests = []
    for path in paths:
        read_info(path)  # structure first: a missing or non-HDF5 file is named here
        digests.append(FileDigest(path.name, sha256_file(path), path.stat().st_size))
    names = [d.path for d in digests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise HarnessError(f"feature files must have distinct file names; repeated: {duplicates}")
    return digests


def find_existing(results_dir: Path, split: str, record_id: str) -> list[Path]:
    """Records of any method under ``split`` whose id is ``record_id``."""
    return sorted((results_dir / split).glob(f"*/{record_id}{RECORD_SUFFIX}"))


def _existing_submission(results_dir: Path, split: str, key: str, method: str) -> Submission | None:
    for path in find_existing(results_dir, split, key[:ID_LENGTH]):
        record = read_record(path)
        if record.submission_key != key:
            raise HarnessError(
                f"record id {key[:ID_LENGTH]} collides with a different submission; report this",
                path,
            )
        if record.method != method:
            raise HarnessError(
                f"these feature files were already submitted as method {record.method!r}; "
                "a method is renamed by the maintainers, not by resubmitting",
                path,
            )
        return Submission(record, path, created=False)
    return None


def make_topk(
    result, split, top_k: int = PREDICTIONS_TOP_K, max_bytes: int = PREDICTIONS_MAX_BYTES
) -> TopK | None:
    """The committed top-k of a result's predictions: the evaluated ranking, cut to ``top_k``.

    With spatial NMS the ranking is taken after NMS, as the metrics see it. ``top_k`` shrinks
    when ``Q x top_k`` int32 would pass ``max_bytes``.
    """
    from harness.metrics import database_places, spatial_nms

    data = result.prediction_data
    if data is None:
        return None
    indices = np.asarray(data.indices)
    if result.protocol.spatial_nms:
        indices = spatial_nms(
            indices, database_places(split.database_utm), result.protocol.nms_pool
        )
    num_queries = max(1, indices.shape[0])
    top_k = max(1, min(top_k, indices.shape[1], max_bytes // (4 * num_queries)))
    return TopK(
        indices=np.ascontiguousarray(indices[:, :top_k], dtype=np.int32),
        first_positive_rank=np.asarray(data.first_positive_rank, dtype=np.int32),
        has_positive=np.asarray(data.has_positive, dtype=bool),
        spatial_nms=bool(result.protocol.spatial_nms),
    )


def submit(
    features: Sequence[str | os.PathLike],
    *,
    split,
    method_name: str,
    metadata: MethodMetadata | Mapping | None = None,
    results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR,
    data_root: str | os.PathLike | None = None,
    config=None,
    submitted_at: str | None = None,
    ranking: str | os.PathLike | None = None,
) -> Submission:
    """Evaluate ``features`` on ``split`` and publish the record (or return the existing one).

    Args:
        features: feature files or folders of them (query part and database shards).
        split: a split name (looked up under ``data_root``) or a :class:`harness.splits.Split`.
        method_name: the leaderboard name; the record goes to ``<split>/<method_name>/<id>.json``.
        metadata: method metadata (a :class:`MethodMetadata` or the meta-file mapping).
        results_dir: the leaderboard's results folder.
        config: a :class:`harness.config.EvalConfig`; default: the split's own protocol.
        submitted_at: UTC time stamp to record (default: now).
        ranking: a ranking file (:mod:`harness.sources.rankings`) instead of ``features``:
            a re-ranking method's ranked database names per query.

    Raises:
        HarnessError: bad name, metadata, split or feature files; nothing is written then.
    """
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.splits import Split, get_split

    check_method_name(method_name)
    if metadata is None:
        metadata = MethodMetadata()
    elif not isinstance(metadata, MethodMetadata):
        metadata = MethodMetadata.from_dict(metadata)
    else:
        problems = metadata.problems()
        if problems:
            raise ValidationError(problems)
    split = split if isinstance(split, Split) else get_split(split, data_root)
    results_dir = Path(results_dir)
    if ranking is not None and features:
        raise HarnessError("give feature files or a ranking file, not both")
    paths = [Path(ranking)] if ranking is not None else expand_feature_paths(features)
    if not paths:
        raise HarnessError("no feature files given")
    hashing_started = time.perf_counter()
    digests = _ranking_digest(paths[0]) if ranking is not None else _digests(paths)
    checksum_s = time.perf_counter() - hashing_started
    key = submission_key(split.sha256, [d.sha256 for d in digests])
    if results_dir.is_dir():
        with _results_lock(results_dir) as locked:
            if locked:  # what an interrupted earlier submit left is removed first
                collect_garbage(results_dir)
    existing = _existing_submission(results_dir, split.name, key, method_name)
    if existing is not None:
        logger.info("already submitted: %s", existing.path)
        return existing

    config = EvalConfig() if config is None else config
    if ranking is not None:
        return _submit_ranking(paths[0], split, metadata, config, key, results_dir, method_name,
                               digests, time.perf_counter() - hashing_started, submitted_at)
    # The files were hashed above (the submission key); the evaluator need not hash them again.
    result = evaluate(paths, split, config.replace(checksums=False))
    for key_name, value in (
        ("descriptor_dim", metadata.descriptor_dim),
        ("descriptor_dtype", metadata.descriptor_dtype),
    ):
        if value is not None and value != getattr(result, key_name):
            raise HarnessError(
                f"metadata says {key_name} {value!r}, the feature files have "
                f"{getattr(result, key_name)!r}"
            )
    extraction = metadata.extraction_ms_per_image
    if extraction is None and isinstance(
        result.method_attrs.get("extraction_ms_per_image"), (int, float)
    ):
        extraction = float(result.method_attrs["extraction_ms_per_image"])
    metadata = dataclasses.replace(
        metadata,
        descriptor_dim=int(result.descriptor_dim),
        descriptor_dtype=result.descriptor_dtype,
        extraction_ms_per_image=extraction,
    )
    problems = metadata.problems()
    if problems:
        raise ValidationError(problems)

    return _publish_locked(result, split, metadata, key, results_dir, method_name, digests,
                           checksum_s, submitted_at)


def _ranking_digest(path: Path):
    from harness.results import FileDigest

    if not path.is_file():
        raise HarnessError("ranking file not found", path)
    return [FileDigest(path.name, sha256_file(path), path.stat().st_size)]


def _submit_ranking(path, split, metadata, config, key, results_dir, method_name, digests,
                    checksum_s, submitted_at) -> Submission:
    """A ranking submission: scored like descriptors; the record has no descriptor facts and
    its ``protocol.metric`` is ``ranking`` (shown as re-ranking)."""
    from harness.sources.rankings import evaluate_ranking

    if metadata.descriptor_dim is not None or metadata.descriptor_dtype is not None:
        raise HarnessError("a ranking submission has no descriptors: leave descriptor_dim and "
                           "descriptor_dtype out of the metadata")
    result = evaluate_ranking(path, split, config, method=method_name)
    return _publish_locked(result, split, metadata, key, results_dir, method_name, digests,
                           checksum_s, submitted_at)


def _publish_locked(result, split, metadata, key, results_dir, method_name, digests, checksum_s,
                    submitted_at) -> Submission:
    record_id = key[:ID_LENGTH]
    folder = results_dir / split.name / method_name
    topk = make_topk(result, split)
    with _results_lock(results_dir) as locked:
        if locked:
            collect_garbage(results_dir)
        # Checked again under the lock: the same files submitted at the same time under
        # another method name must not publish a second record.
        existing = _existing_submission(results_dir, split.name, key, method_name)
        if existing is not None:
            logger.info("an identical submission was published first: %s", existing.path)
            return existing
        return _publish(result, split, metadata, key, record_id, folder, method_name, topk,
                        digests, checksum_s, submitted_at)


def _publish(result, split, metadata, key, record_id, folder, method_name, topk, digests,
             checksum_s, submitted_at) -> Submission:
    from harness.provenance import utc_now
    from harness.results import FileDigest

    predictions = None
    sidecar_created = False
    if topk is not None:
        sidecar = folder / f"{record_id}{PREDICTIONS_SUFFIX}"
        data = topk_bytes(topk)
        sidecar_created = publish_bytes(sidecar, data)
        if not sidecar_created:  # a racing identical submission published it first: adopt it
            data = sidecar.read_bytes()
        predictions = PredictionsRef(
            sidecar.name, hashlib.sha256(data).hexdigest(), len(data), int(topk.indices.shape[1])
        )
    core = dataclasses.replace(
        result,
        features=tuple(FileDigest(d.path, d.sha256, d.bytes) for d in digests),
        timings=dataclasses.replace(result.timings, checksum_s=checksum_s),
        predictions=None,
        prediction_data=None,
    )
    record = LeaderboardRecord(
        id=record_id,
        method=method_name,
        split=split.name,
        submitted_at=submitted_at or utc_now(),
        submission_key=key,
        metadata=metadata,
        result=core,
        predictions=predictions,
    )
    path = folder / f"{record_id}{RECORD_SUFFIX}"
    try:
        created = publish_bytes(path, record_to_json(record))
    except BaseException:
        if sidecar_created:
            (folder / f"{record_id}{PREDICTIONS_SUFFIX}").unlink(missing_ok=True)
        raise
    if not created:
        logger.info("an identical submission was published first: %s", path)
        return Submission(read_record(path), path, created=False)
    logger.info(
        "submitted %s on %s: recall@1 %.4f -> %s", method_name, split.name, record.main_score, path
    )
    return Submission(read_record(path), path, created=True)
