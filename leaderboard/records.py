"""Leaderboard records: the core result record, the method's metadata, a content checksum.

A record is one JSON file, ``<results>/<split>/<method>/<id>.json``, never rewritten once
published. Layout of schema version 1::

    {
      "record_schema_version": 1,
      "id": "<16 hex digits: the start of submission_key>",
      "method": "<method name>",
      "split": "<split name>",
      "submitted_at": "2025-01-31T12:00:00Z",
      "submission_key": "<sha256 of the split checksum and the sorted feature checksums>",
      "metadata": {MethodMetadata fields},
      "result": {the core record, harness.results.EvalResult, feature paths reduced to
                 file names; its full-depth predictions stay with the submitter},
      "predictions": {"file": "<id>.topk.npz", "sha256": "...", "bytes": 123, "top_k": 20} | null,
      "content_sha256": "<sha256 of this object without this key, canonical JSON>"
    }

The committed sidecar ``<id>.topk.npz`` (npz, no pickle; :func:`read_topk`) keeps each
query's first ``PREDICTIONS_TOP_K`` database rows of the evaluated ranking (after spatial NMS
where the protocol has it), the rank of its first positive and whether it has one: about
``Q x 20 x 4`` bytes, small enough to commit (Pitts30k test: ~0.5 MB), enough for the
retrieval grids and to recompute every Recall@N of the record. The full-depth rankings with
scores (``harness.results`` sidecar, often tens of MB) stay with the submitter.

The content checksum makes a hand-edited score visible to ``harness leaderboard check``:
editing a number without recomputing it breaks the checksum, recomputing it shows up as
a score change between commits. Every schema version that ever existed keeps a reader in
:data:`_READERS`; a new version adds one and never changes the old ones (mteb#1899).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from harness.errors import HarnessError, ValidationError
from harness.features import MAX_DESCRIPTOR_DIM
from harness.versions import is_version
from leaderboard.escape import unsafe_characters, url_problem

logger = logging.getLogger(__name__)

RECORD_SCHEMA_VERSION = 1
RECORD_SUFFIX = ".json"
PREDICTIONS_SUFFIX = ".topk.npz"
PREDICTIONS_TOP_K = 20
PREDICTIONS_MAX_BYTES = 8 << 20
#: A record is a few KB and a meta file less; anything far larger is refused unread.
RECORD_MAX_BYTES = 4 << 20
METADATA_MAX_BYTES = 1 << 20
#: An hour per image: anything larger is a typo or a hostile number, not a measurement.
MAX_EXTRACTION_MS = 3.6e6
TOPK_FORMAT = "iovpr-leaderboard-topk"
TOPK_FORMAT_VERSION = 1
ID_LENGTH = 16
METHOD_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}")


@dataclass(frozen=True)
class MethodMetadata:
    """What a submitter declares about a method (the ``--meta-file`` JSON).

    Unknown keys are rejected. ``descriptor_dim``/``descriptor_dtype`` are filled in from the
    feature files; when the meta file gives them they must agree with the files.
    ``extraction_ms_per_image`` may come from the meta file or from a feature-file attribute
    of the same name (methods' extractors write it).
    """

    paper: str = ""
    code_url: str = ""
    backbone: str = ""
    descriptor_dim: int | None = None
    descriptor_dtype: str | None = None
    training_data: str = ""
    checkpoint_sha256: str = ""
    license: str = ""
    extraction_ms_per_image: float | None = None
    description: str = ""

    def problems(self) -> list[str]:
        """Every field that breaks its rule, one line each (empty when valid)."""
        found = []
        for name in (
            "paper",
            "code_url",
            "backbone",
            "training_data",
            "checkpoint_sha256",
            "license",
            "description",
        ):
            value = getattr(self, name)
            if not isinstance(value, str):
                found.append(f"{name} must be a string, got {type(value).__name__}")
            elif len(value) > 2000 or "\n" in value:
                found.append(f"{name} must be one line of at most 2000 characters")
            elif unsafe_characters(value):
                found.append(
                    f"{name} holds control or text-direction characters "
                    f"({', '.join(unsafe_characters(value)[:5])})"
                )
        if isinstance(self.code_url, str) and self.code_url and url_problem(self.code_url):
            found.append(
                f"code_url must be an http(s) URL: {url_problem(self.code_url)} "
                f"(got {self.code_url[:200]!r})"
            )
        if (
            isinstance(self.checkpoint_sha256, str)
            and self.checkpoint_sha256
            and not _SHA256.fullmatch(self.checkpoint_sha256)
        ):
            found.append("checkpoint_sha256 must be 64 lowercase hex digits")
        if self.descriptor_dim is not None and (
            isinstance(self.descriptor_dim, bool)
            or not isinstance(self.descriptor_dim, int)
            or not 1 <= self.descriptor_dim <= MAX_DESCRIPTOR_DIM
        ):
            shown = repr(self.descriptor_dim)
            shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} characters)"
            found.append(
                f"descriptor_dim must be an integer from 1 to {MAX_DESCRIPTOR_DIM}, got {shown}")
        if self.descriptor_dtype is not None and self.descriptor_dtype not in (
            "float32",
            "float16",
        ):
            found.append(
                f"descriptor_dtype must be float32 or float16, got {self.descriptor_dtype!r}"
            )
        value = self.extraction_ms_per_image
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 <= value <= MAX_EXTRACTION_MS
        ):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} characters)"
            found.append(f"extraction_ms_per_image must be a non-negative number of at most "
                         f"{MAX_EXTRACTION_MS:g}, got {shown}")
        return found

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], path: str | os.PathLike | None = None
    ) -> "MethodMetadata":
        """Build and validate; unknown keys and bad values raise :class:`ValidationError`."""
        if not isinstance(data, Mapping):
            raise ValidationError(
                [f"method metadata must be a JSON object, got {type(data).__name__}"], path
            )
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValidationError(
                [f"unknown metadata keys {unknown}; valid keys are {valid}"], path
            )
        meta = cls(**dict(data))
        problems = meta.problems()
        if problems:
            raise ValidationError(problems, path)
        return meta


def read_method_metadata(path: str | os.PathLike) -> MethodMetadata:
    """Read a ``--meta-file`` (JSON object); every problem names the file."""
    from harness.io import parse_json, read_text_bounded

    path = Path(path)
    text = read_text_bounded(path, METADATA_MAX_BYTES, "metadata file")
    data = parse_json(text, path, "metadata file", invalid="not a readable JSON file")
    return MethodMetadata.from_dict(data, path)


@dataclass(frozen=True)
class PredictionsRef:
    """The committed top-k sidecar of a record: ``<id>.topk.npz`` in the record's folder."""

    file: str
    sha256: str
    bytes: int
    top_k: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, record_id: str) -> "PredictionsRef":
        if not isinstance(data, Mapping) or set(data) != {"file", "sha256", "bytes", "top_k"}:
            raise ValueError(f"expected an object with file, sha256, bytes, top_k; got {data!r}")
        ref = cls(str(data["file"]), str(data["sha256"]), int(data["bytes"]), int(data["top_k"]))
        if ref.file != f"{record_id}{PREDICTIONS_SUFFIX}":
            raise ValueError(f"file must be {record_id}{PREDICTIONS_SUFFIX}, got {ref.file!r}")
        if not _SHA256.fullmatch(ref.sha256) or ref.top_k < 1 or ref.bytes < 1:
            raise ValueError(f"invalid sha256, top_k or bytes in {data!r}")
        return ref


@dataclass(frozen=True)
class LeaderboardRecord:
    """One submission of one method on one split (see the module docstring for the JSON)."""

    id: str
    method: str
    split: str
    submitted_at: str
    submission_key: str
    metadata: MethodMetadata
    result: Any  # harness.results.EvalResult
    predictions: PredictionsRef | None = None
    schema_version: int = RECORD_SCHEMA_VERSION
    content_sha256: str = field(default="", compare=False)

    @property
    def scores(self) -> dict[str, float]:
        return dict(self.result.scores)

    @property
    def main_score(self) -> float:
        return float(self.result.main_score_value)

    def relative_path(self) -> Path:
        return Path(self.split) / self.method / f"{self.id}{RECORD_SUFFIX}"

    def to_dict(self) -> dict:
        """The JSON object of the current schema, with its content checksum."""
        body = {
            "record_schema_version": RECORD_SCHEMA_VERSION,
            "id": self.id,
            "method": self.method,
            "split": self.split,
            "submitted_at": self.submitted_at,
            "submission_key": self.submission_key,
            "metadata": self.metadata.to_dict(),
            "result": self.result.to_dict(),
            "predictions": None if self.predictions is None else self.predictions.to_dict(),
        }
        body["content_sha256"] = content_checksum(body)
        return body


def canonical_json(data: Any) -> bytes:
    """The bytes the content checksum is computed over (sorted keys, no whitespace)."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_checksum(record_dict: Mapping[str, Any]) -> str:
    """sha256 of the record without its ``content_sha256`` key."""
    body = {k: v for k, v in record_dict.items() if k != "content_sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def record_to_json(record: LeaderboardRecord) -> bytes:
    """The file's bytes: indented, key-sorted JSON (what ``write_json_atomic`` writes)."""
    return (
        json.dumps(record.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode("utf-8")


# --- readers, one per schema version --------------------------------------------------------

_READERS: dict[int, Callable[[dict, Path | None], LeaderboardRecord]] = {}


def register_reader(version: int):
    """Register the reader of one record schema version (duplicates raise)."""

    def decorate(function):
        if version in _READERS:
            raise ValueError(f"a reader for record schema version {version} is already registered")
        _READERS[version] = function
        return function

    return decorate


def list_schema_versions() -> list[int]:
    return sorted(_READERS)


def _require(data: Mapping, key: str, kind, problems: list[str]):
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        problems.append(f"{key} is missing or not a {getattr(kind, '__name__', kind)}")
        return None
    return value


@register_reader(1)
def _read_v1(data: dict, path: Path | None) -> LeaderboardRecord:
    from harness.results import EvalResult

    keys = {
        "record_schema_version",
        "id",
        "method",
        "split",
        "submitted_at",
        "submission_key",
        "metadata",
        "result",
        "predictions",
        "content_sha256",
    }
    problems = []
    unknown = sorted(set(data) - keys)
    if unknown:
        problems.append(f"unknown record keys {unknown}")
    missing = sorted(keys - set(data))
    if missing:
        problems.append(f"missing record keys {missing}")
    if problems:
        raise ValidationError(problems, path)
    for key in ("id", "method", "split", "submitted_at", "submission_key", "content_sha256"):
        if not isinstance(data[key], str):
            problems.append(f"{key} must be a string, got {data[key]!r}")
    if problems:
        raise ValidationError(problems, path)
    if not _ID.fullmatch(data["id"]):
        problems.append(f"id must be {ID_LENGTH} lowercase hex digits, got {data['id']!r}")
    if not re.fullmatch(METHOD_NAME_PATTERN, data["method"]):
        problems.append(f"invalid method name {data['method']!r}")
    if not _SHA256.fullmatch(data["submission_key"]):
        problems.append("submission_key must be a sha256")
    elif not data["submission_key"].startswith(data["id"]):
        problems.append("id is not the start of submission_key")
    metadata = None
    try:
        metadata = MethodMetadata.from_dict(data["metadata"], path)
    except ValidationError as exc:
        problems.extend(f"metadata: {p}" for p in exc.problems)
    except TypeError as exc:
        problems.append(f"metadata: {exc}")
    result = None
    try:
        result = EvalResult.from_dict(data["result"])
    except HarnessError as exc:
        problems.append(f"result: {exc.message}")
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"result: {type(exc).__name__}: {exc}")
    if result is not None:
        problems.extend(_result_problems(data, result))
    predictions = None
    if data["predictions"] is not None:
        try:
            predictions = PredictionsRef.from_dict(data["predictions"], data["id"])
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"predictions: {exc}")
    if problems:
        raise ValidationError(problems, path)
    return LeaderboardRecord(
        id=data["id"],
        method=data["method"],
        split=data["split"],
        submitted_at=data["submitted_at"],
        submission_key=data["submission_key"],
        metadata=metadata,
        result=result,
        predictions=predictions,
        schema_version=1,
        content_sha256=data["content_sha256"],
    )


def _result_problems(data: Mapping, result) -> list[str]:
    """Consistency of the envelope with the core record it carries."""
    problems = []
    if result.split != data["split"]:
        problems.append(
            f"result.split {result.split!r} differs from the record's split {data['split']!r}"
        )
    if not result.features:
        problems.append("result names no feature files")
    for digest in result.features:
        if "/" in digest.path or "\\" in digest.path:
            problems.append(f"result.features path {digest.path!r} must be a file name")
    if result.features and data["submission_key"] != submission_key(
        result.split_sha256, [d.sha256 for d in result.features]
    ):
        problems.append(
            "submission_key does not match the split and feature checksums of the result"
        )
    if result.predictions is not None:
        problems.append(
            "result.predictions must be null (the committed top-k sidecar is `predictions`)"
        )
    meta = data.get("metadata") or {}
    for key in ("descriptor_dim", "descriptor_dtype"):
        if (
            isinstance(meta, Mapping)
            and meta.get(key) is not None
            and meta.get(key) != getattr(result, key)
        ):
            problems.append(
                f"metadata.{key} {meta.get(key)!r} differs from the result's "
                f"{getattr(result, key)!r}"
            )
    return problems


def submission_key(split_sha256: str, feature_sha256s) -> str:
    """What identifies a submission: the split's content and the feature files' contents."""
    body = {"split_sha256": split_sha256, "features": sorted(feature_sha256s)}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def record_from_dict(
    data: Any, path: str | os.PathLike | None = None, *, verify_checksum: bool = True
) -> LeaderboardRecord:
    """Read a record of any schema version that ever existed.

    Raises:
        ValidationError: unknown version, structure problems, or (``verify_checksum``) a
            content checksum that does not match the content.
    """
    path = None if path is None else Path(path)
    if not isinstance(data, dict):
        raise ValidationError(["a record must be a JSON object"], path)
    version = data.get("record_schema_version")
    reader = _READERS.get(version) if is_version(version, _READERS) else None
    if reader is None:
        raise ValidationError(
            [
                f"record_schema_version {version!r} is not one this harness reads "
                f"({list_schema_versions()}); "
                "a newer harness may read it"
            ],
            path,
        )
    if verify_checksum:
        stored = data.get("content_sha256")
        try:
            actual = content_checksum(data)
        except ValueError as exc:  # NaN or infinity: never written by the harness
            raise ValidationError([f"record holds a non-finite number ({exc})"], path) from None
        if stored != actual:
            raise ValidationError(
                [
                    "content checksum mismatch: the record was edited by hand or is corrupt "
                    "(records are immutable; submit again instead)"
                ],
                path,
            )
    return reader(data, path)


def read_record(path: str | os.PathLike, *, verify_checksum: bool = True) -> LeaderboardRecord:
    """Read and validate one record file."""
    from harness.io import parse_json, read_text_bounded

    path = Path(path)
    text = read_text_bounded(path, RECORD_MAX_BYTES, "record")
    data = parse_json(text, path, "record")
    return record_from_dict(data, path, verify_checksum=verify_checksum)


def iter_record_paths(results_dir: str | os.PathLike) -> Iterator[Path]:
    """Every ``<split>/<method>/<id>.json`` under ``results_dir``, sorted."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise HarnessError("results directory not found", results_dir)
    yield from sorted(
        p for p in results_dir.glob(f"*/*/*{RECORD_SUFFIX}") if not p.name.startswith(".")
    )


def load_records(results_dir: str | os.PathLike) -> list[LeaderboardRecord]:
    """Read every record; the first invalid one raises (``leaderboard check`` lists them all)."""
    return [read_record(path) for path in iter_record_paths(results_dir)]


@dataclass(frozen=True, eq=False)
class TopK:
    """A committed top-k sidecar: row ``i`` is split query ``i``.

    ``indices`` (Q, k) int32 database rows of the evaluated ranking, -1 padded;
    ``first_positive_rank`` (Q,) int32, 0-based, -1 when no positive was retrieved within the
    record's search depth; ``has_positive`` (Q,) bool.
    """

    indices: np.ndarray
    first_positive_rank: np.ndarray
    has_positive: np.ndarray
    spatial_nms: bool = False

    def __post_init__(self):
        q = self.indices.shape[0]
        assert self.indices.ndim == 2, self.indices.shape
        assert self.first_positive_rank.shape == (q,) and self.has_positive.shape == (q,)

    def recall_at(self, ns, no_positive: str) -> dict[str, float]:
        """Recall@N from the stored first-positive ranks (no features needed)."""
        from harness.metrics import recall_at_n

        evaluated = self.has_positive if no_positive == "exclude" else None
        return {
            f"recall@{n}": v
            for n, v in recall_at_n(self.first_positive_rank, ns, evaluated).items()
        }


def topk_bytes(topk: TopK) -> bytes:
    """The sidecar's bytes (deterministic: same arrays, same bytes)."""
    from leaderboard.publish import npz_bytes

    meta = {
        "format": TOPK_FORMAT,
        "format_version": TOPK_FORMAT_VERSION,
        "k": int(topk.indices.shape[1]),
        "spatial_nms": bool(topk.spatial_nms),
    }
    return npz_bytes(
        {
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            "indices": np.ascontiguousarray(topk.indices, dtype=np.int32),
            "first_positive_rank": np.ascontiguousarray(topk.first_positive_rank, dtype=np.int32),
            "has_positive": np.ascontiguousarray(topk.has_positive, dtype=bool),
        }
    )


def read_topk(path: str | os.PathLike) -> TopK:
    """Read a top-k sidecar (no pickle); any other file is a :class:`HarnessError` naming it."""
    from harness.io import NPZ_ERRORS, npz_member, npz_shapes, require_regular_file

    path = require_regular_file(path, "predictions file")
    try:
        npz_shapes(path, PREDICTIONS_MAX_BYTES + 4096)  # no member may inflate past the cap
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(npz_member(archive, "meta").tobytes().decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a {type(meta).__name__}, not an object")
            if meta.get("format") != TOPK_FORMAT or not is_version(
                meta.get("format_version"), TOPK_FORMAT_VERSION
            ):
                raise ValueError(f"not a {TOPK_FORMAT} v{TOPK_FORMAT_VERSION} file: {meta}")
            topk = TopK(
                indices=npz_member(archive, "indices"),
                first_positive_rank=npz_member(archive, "first_positive_rank"),
                has_positive=npz_member(archive, "has_positive"),
                spatial_nms=bool(meta.get("spatial_nms", False)),
            )
    except FileNotFoundError:
        raise HarnessError("predictions file not found", path) from None
    except NPZ_ERRORS + (AssertionError, RecursionError) as exc:
        raise HarnessError(
            f"not a readable top-k predictions file ({type(exc).__name__}: {exc})", path
        ) from None
    if (
        topk.indices.dtype.kind != "i"
        or topk.first_positive_rank.dtype.kind != "i"
        or topk.has_positive.dtype != bool
    ):
        raise HarnessError("top-k predictions have wrong dtypes", path)
    return topk
