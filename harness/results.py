"""Versioned evaluation records (JSON) and their per-query prediction sidecars (.npz).

One record is one evaluation of one method on one split. It is a frozen :class:`EvalResult`
written as key-sorted JSON with floats rounded to 6 decimals; the exact per-query rankings go
into a sidecar ``<record>.predictions.npz`` (no pickle) that the record names with its sha256.

API for readers (the leaderboard)::

    read_result(path) -> EvalResult          # validates; HarnessError on a bad file
    iter_results(folder) -> Iterator[tuple[Path, EvalResult]]   # every *.json below, sorted
    EvalResult.from_dict(d) / .to_dict()     # reads every schema version that ever existed
    result.split, result.split_sha256, result.method, result.date
    result.main_score  ("recall@1")  and  result.main_score_value
    result.scores      {"recall@1": 0.81, "recall@5": ..., "map@100": ...}   (fractions 0..1)
    result.protocol    radius_m, recall_ns, map_k, k, spatial_nms, nms_pool, no_positive
    result.counts      queries, database, queries_without_positive, evaluated_queries
    result.features    tuple of FileDigest(path, sha256, bytes)
    result.predictions FileDigest of the sidecar (path relative to the record) or None
    result.intervals   {"recall@1": (low, high), ...}  bootstrap intervals (empty: schema 1)
    result.bootstrap   how they were computed (harness.stats.BootstrapSettings) or None
    result.breakdowns  {"condition": ..., "window_fraction": ..., "radius": ...} (see
                       harness.breakdowns)
    read_predictions(record_path, result=None) -> Predictions   # checks the sidecar's sha256

Schema history (add a reader to ``_READERS`` for each new version; never drop one):

* 1: the original layout.
* 2: adds ``intervals`` (score name -> [low, high], fractions), ``bootstrap`` (resamples,
  confidence, seed, method, unit) and ``breakdowns``. A schema-1 record reads as schema 2
  with no intervals and no breakdowns.

* 3: adds ``efficiency`` (:mod:`harness.efficiency`: bytes per descriptor, the search's
  machine-independent cost, extraction ms/image as the harness measured it, search seconds and
  the evaluation's own peak memory with the hardware). Schema 1 and 2 records read as schema 3
  with an empty ``efficiency``.

Prediction sidecar formats: 1 (indices, scores, first_positive_rank, has_positive); 2 adds
``average_precision`` (per-query AP@K, so that mAP can be compared query by query).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from harness.errors import HarnessError
from harness.io import (
    NPZ_ERRORS,
    atomic_path,
    npz_member,
    sha256_file,
    write_json_atomic,
)
from harness.provenance import harness_git_commit, utc_now  # noqa: F401  (re-exported)
from harness.stats import BootstrapSettings
from harness.strict_json import (
    as_bool,
    as_float,
    as_int,
    as_json_object,
    as_optional_str,
    as_str,
    build_dataclass,
    fail,
    list_of,
)
from harness.versions import is_version, version_problem

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
MAIN_SCORE = "recall@1"
FLOAT_DECIMALS = 6
PREDICTIONS_SUFFIX = ".predictions.npz"
PREDICTIONS_FORMAT_VERSION = 2
_PREDICTIONS_FORMATS = (1, 2)
#: A result record is a few KB; anything far larger is refused unread.
RESULT_MAX_BYTES = 16 << 20
_SCORE_NAME = re.compile(r"^(recall|map)@([1-9][0-9]*)$")
#: A sha256 as records carry it: 64 lowercase hex digits.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# Parts of a record


@dataclass(frozen=True)
class FileDigest:
    """A file the record depends on: its path (as given, or relative to the record) and sha256."""

    path: str
    sha256: str
    bytes: int

    def __post_init__(self):
        if not SHA256_HEX.fullmatch(self.sha256):
            raise HarnessError(f"{self.path}: sha256 must be 64 lowercase hex digits")

    @classmethod
    def of(cls, path: str | os.PathLike, shown_as: str | None = None) -> "FileDigest":
        path = Path(path)
        return cls(shown_as if shown_as is not None else str(path), sha256_file(path),
                   path.stat().st_size)


@dataclass(frozen=True)
class Protocol:
    """What was measured: the numbers are only comparable under the same protocol."""

    radius_m: float
    recall_ns: tuple[int, ...]
    map_k: int
    k: int  # ranks searched per query (max N, or max N x 12 with spatial NMS)
    spatial_nms: bool
    nms_pool: int  # predictions NMS looks at (0 when off)
    no_positive: str  # "miss" or "exclude"
    metric: str = "inner_product"

    def __post_init__(self):
        object.__setattr__(self, "recall_ns", tuple(int(n) for n in self.recall_ns))
        if (
            not self.recall_ns
            or list(self.recall_ns) != sorted(set(self.recall_ns))
            or self.recall_ns[0] < 1
        ):
            raise HarnessError(
                f"recall_ns must be increasing positive integers, got {self.recall_ns}"
            )
        if self.no_positive not in ("miss", "exclude"):
            raise HarnessError(f"no_positive must be 'miss' or 'exclude', got {self.no_positive!r}")
        if not self.radius_m > 0 or self.map_k < 1 or self.k < 1:
            raise HarnessError("radius_m, map_k and k must be positive")


@dataclass(frozen=True)
class Counts:
    queries: int
    database: int
    queries_without_positive: int
    evaluated_queries: int  # the recall denominator


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds."""

    load_s: float  # reading names, validation, queries
    checksum_s: float  # sha256 of the feature files
    search_s: float
    metrics_s: float
    total_s: float


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_cores: int
    gpus: tuple[str, ...]
    blas: str
    platform: str = ""
    python: str = ""
    numpy: str = ""


@dataclass(frozen=True, eq=False)
class Predictions:
    """Per-query ranked predictions, row i = split query i.

    ``indices``/``scores`` (Q, K) are the searched top-K (before spatial NMS, so every metric
    can be recomputed); ``first_positive_rank`` (Q,) int32 is the 0-based rank of the first
    positive in the evaluated ranking (after NMS when on), -1 when none was found;
    ``has_positive`` (Q,) bool says whether the query has any positive in the database;
    ``average_precision`` (Q,) float32 is each query's AP@K (None in format-1 sidecars).
    """

    indices: np.ndarray
    scores: np.ndarray
    first_positive_rank: np.ndarray
    has_positive: np.ndarray
    average_precision: np.ndarray | None = None

    def __post_init__(self):
        q = self.indices.shape[0]
        assert self.indices.ndim == 2 and self.scores.shape == self.indices.shape
        assert self.first_positive_rank.shape == (q,) and self.has_positive.shape == (q,)
        assert self.average_precision is None or self.average_precision.shape == (q,)


# --------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of one method on one split (schema version :data:`SCHEMA_VERSION`).

    ``scores`` are fractions in [0, 1] named ``recall@N`` and ``map@K``; ``main_score`` names the
    headline one. ``intervals`` hold the bootstrap interval of each score (``bootstrap`` says
    how), ``breakdowns`` the scores per query condition and per radius
    (:mod:`harness.breakdowns`). ``prediction_data`` (not serialised) carries the rankings
    until :meth:`write` stores them in the sidecar.
    """

    split: str
    split_sha256: str
    method: str
    scores: Mapping[str, float]
    protocol: Protocol
    counts: Counts
    features: tuple[FileDigest, ...]
    descriptor_dim: int
    descriptor_dtype: str
    search_backend: str
    timings: Timings
    peak_rss_bytes: int
    hardware: Hardware
    harness_version: str
    git_commit: str | None
    date: str
    main_score: str = MAIN_SCORE
    predictions: FileDigest | None = None
    method_attrs: Mapping[str, Any] = field(default_factory=dict)
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    bootstrap: Mapping[str, Any] | None = None
    breakdowns: Mapping[str, Any] = field(default_factory=dict)
    efficiency: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    prediction_data: Predictions | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.schema_version != SCHEMA_VERSION:
            raise HarnessError(
                f"EvalResult holds schema_version {SCHEMA_VERSION}, got {self.schema_version}"
            )
        scores = {}
        for name, value in dict(self.scores).items():
            if not _SCORE_NAME.match(name):
                raise HarnessError(f"invalid score name {name!r} (expected recall@N or map@K)")
            value = float(value)
            if not (0.0 <= value <= 1.0):
                raise HarnessError(f"score {name} = {value} is outside [0, 1]")
            scores[name] = value
        object.__setattr__(self, "scores", dict(sorted(scores.items(), key=_score_order)))
        if self.main_score not in self.scores:
            raise HarnessError(
                f"main_score {self.main_score!r} is not among the scores {sorted(self.scores)}"
            )
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "method_attrs", dict(self.method_attrs))
        intervals = {}
        for name, bounds in dict(self.intervals).items():
            if name not in self.scores:
                raise HarnessError(f"interval for {name!r}, which is not among the scores")
            low, high = (float(v) for v in bounds)
            # Rounded to the record's precision, so a written and re-read record is equal.
            low, high = round(low, FLOAT_DECIMALS), round(high, FLOAT_DECIMALS)
            if not (0.0 <= low <= high <= 1.0):
                raise HarnessError(f"interval of {name} [{low}, {high}] is not within [0, 1]")
            intervals[name] = (low, high)
        object.__setattr__(self, "intervals", dict(sorted(intervals.items(), key=_score_order)))
        if intervals and self.bootstrap is None:
            raise HarnessError(
                "a record with intervals must say how they were computed (bootstrap)")
        object.__setattr__(self, "breakdowns", dict(self.breakdowns))
        if self.descriptor_dtype not in ("float32", "float16"):
            raise HarnessError(
                f"descriptor_dtype must be float32 or float16, got {self.descriptor_dtype!r}"
            )

    @property
    def main_score_value(self) -> float:
        return self.scores[self.main_score]

    def recall(self, n: int) -> float:
        return self.scores[f"recall@{n}"]

    def interval(self, name: str) -> tuple[float, float] | None:
        """The bootstrap interval of a score, None when the record has none (schema 1)."""
        return self.intervals.get(name)

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-ready dict (floats rounded to 6 decimals; ``prediction_data`` left out)."""
        data = {}
        for f in dataclasses.fields(self):
            if f.name == "prediction_data":
                continue
            data[f.name] = _plain(getattr(self, f.name))
        return _round_floats(data)

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvalResult":
        """Validate and build a record of any schema version this harness knows."""
        if not isinstance(data, Mapping):
            raise HarnessError(f"a result record must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        reader = _READERS.get(version) if is_version(version, _READERS) else None
        if reader is None:
            raise HarnessError(
                f"unsupported schema_version {version!r}; this harness reads "
                f"{sorted(_READERS)} (a newer harness may have written it)"
            )
        return reader(data)

    def write(
        self, path: str | os.PathLike, predictions_path: str | os.PathLike | None = None
    ) -> Path:
        """Write the record atomically; with ``prediction_data``, the sidecar first.

        The sidecar goes to ``predictions_path`` or ``<path minus .json>.predictions.npz``; the
        written record names it (relative to the record when in the same folder) with its
        sha256. Returns ``path``.
        """
        path = Path(path)
        record = self
        if self.prediction_data is not None:
            sidecar = Path(predictions_path) if predictions_path else default_predictions_path(path)
            write_predictions(sidecar, self.prediction_data, result=self)
            shown = (
                os.path.relpath(sidecar, path.parent)
                if sidecar.parent.resolve() == path.parent.resolve()
                else str(sidecar.resolve())
            )
            record = dataclasses.replace(self, predictions=FileDigest.of(sidecar, shown))
        write_json_atomic(path, record.to_dict())
        logger.info("wrote %s", path)
        return path


def _score_order(item):
    kind, n = _SCORE_NAME.match(item[0]).groups()
    return (kind != "recall", int(n))


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _round_floats(value):
    if isinstance(value, float):
        if not math.isfinite(value):
            raise HarnessError(f"non-finite number {value} cannot be written to a record")
        return round(value, FLOAT_DECIMALS)
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round_floats(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Reading, with strict validation


def _digest(value, where):
    converters = {"path": as_str, "sha256": as_str, "bytes": as_int}
    return build_dataclass(FileDigest, converters, value, where)


def _scores(value, where):
    value = as_json_object(value, where)
    return {as_str(k, where): as_float(v, f"{where}.{k}") for k, v in value.items()}


def _interval_map(value, where):
    value = as_json_object(value, where)
    out = {}
    for name, bounds in value.items():
        if not isinstance(bounds, list) or len(bounds) != 2:
            fail(f"{where}.{name}", f"expected [low, high], got {bounds!r}")
        out[as_str(name, where)] = (as_float(bounds[0], f"{where}.{name}[0]"),
                                  as_float(bounds[1], f"{where}.{name}[1]"))
    return out


def _bootstrap_settings(value, where):
    if value is None:
        return None
    try:
        return BootstrapSettings.from_dict(as_json_object(value, where)).to_dict()
    except (HarnessError, TypeError) as exc:
        fail(where, str(getattr(exc, "message", exc)))


def _v1_converters() -> dict[str, Callable]:
    return {
        "split": as_str,
        "split_sha256": as_str,
        "method": as_str,
        "scores": _scores,
        "protocol": lambda v, w: build_dataclass(Protocol, {
            "radius_m": as_float, "recall_ns": list_of(as_int), "map_k": as_int, "k": as_int,
            "spatial_nms": as_bool, "nms_pool": as_int, "no_positive": as_str, "metric": as_str,
        }, v, w),
        "counts": lambda v, w: build_dataclass(Counts, {
            "queries": as_int, "database": as_int, "queries_without_positive": as_int,
            "evaluated_queries": as_int,
        }, v, w),
        "features": list_of(_digest),
        "descriptor_dim": as_int,
        "descriptor_dtype": as_str,
        "search_backend": as_str,
        "timings": lambda v, w: build_dataclass(Timings, {
            "load_s": as_float, "checksum_s": as_float, "search_s": as_float, "metrics_s": as_float,
            "total_s": as_float,
        }, v, w),
        "peak_rss_bytes": as_int,
        "hardware": lambda v, w: build_dataclass(Hardware, {
            "cpu_model": as_str, "cpu_cores": as_int, "gpus": list_of(as_str), "blas": as_str,
            "platform": as_str, "python": as_str, "numpy": as_str,
        }, v, w),
        "harness_version": as_str,
        "git_commit": as_optional_str,
        "date": as_str,
        "main_score": as_str,
        "predictions": lambda v, w: None if v is None else _digest(v, w),
        "method_attrs": as_json_object,
        "schema_version": as_int,
    }


def _read_v1(data: Mapping) -> EvalResult:
    """Schema 1: no intervals, no breakdowns; read as the current schema."""
    converters = _v1_converters()
    converters["schema_version"] = lambda value, where: SCHEMA_VERSION
    skip = ("prediction_data", "intervals", "bootstrap", "breakdowns", "efficiency")
    return build_dataclass(EvalResult, converters, data, "record", skip=skip)


def _v2_converters() -> dict[str, Callable]:
    converters = _v1_converters()
    converters.update(intervals=_interval_map, bootstrap=_bootstrap_settings,
                      breakdowns=as_json_object)
    return converters


def _read_v2(data: Mapping) -> EvalResult:
    """Schema 2: no efficiency section; read as the current schema."""
    converters = _v2_converters()
    converters["schema_version"] = lambda value, where: SCHEMA_VERSION
    return build_dataclass(EvalResult, converters, data, "record",
                  skip=("prediction_data", "efficiency"))


def _read_v3(data: Mapping) -> EvalResult:
    converters = _v2_converters()
    converters["efficiency"] = as_json_object
    return build_dataclass(EvalResult, converters, data, "record")


#: One reader per schema version that ever existed.
_READERS: dict[int, Callable[[Mapping], EvalResult]] = {1: _read_v1, 2: _read_v2, 3: _read_v3}


def read_result(path: str | os.PathLike) -> EvalResult:
    """Read and validate a record; any problem is a one-line :class:`HarnessError` naming
    ``path``."""
    from harness.io import parse_json, read_text_bounded

    path = Path(path)
    data = parse_json(read_text_bounded(path, RESULT_MAX_BYTES, "result record"), path,
                      "result record", invalid="not a readable JSON record")
    try:
        return EvalResult.from_dict(data)
    except HarnessError as exc:
        raise HarnessError(exc.message, path) from None


def iter_results(folder: str | os.PathLike) -> Iterator[tuple[Path, EvalResult]]:
    """Every ``*.json`` record below ``folder`` (sorted paths), validated."""
    for path in sorted(Path(folder).rglob("*.json")):
        yield path, read_result(path)


# --------------------------------------------------------------------------------------------
# Prediction sidecars


def default_predictions_path(record_path: str | os.PathLike) -> Path:
    record_path = Path(record_path)
    stem = (
        record_path.name[: -len(".json")]
        if record_path.name.endswith(".json")
        else record_path.name
    )
    return record_path.with_name(stem + PREDICTIONS_SUFFIX)


def write_predictions(path: str | os.PathLike, predictions: Predictions,
                      result: EvalResult | None = None) -> Path:
    """Write the sidecar (.npz, no pickle) atomically."""
    meta = {"format_version": PREDICTIONS_FORMAT_VERSION}
    if result is not None:
        meta.update(split=result.split, split_sha256=result.split_sha256, method=result.method,
                    k=int(predictions.indices.shape[1]))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
                indices=np.ascontiguousarray(predictions.indices, dtype=np.int64),
                scores=np.ascontiguousarray(predictions.scores, dtype=np.float32),
                first_positive_rank=np.ascontiguousarray(
                    predictions.first_positive_rank, dtype=np.int32
                ),
                has_positive=np.ascontiguousarray(predictions.has_positive, dtype=bool),
                **(
                    {}
                    if predictions.average_precision is None
                    else {
                        "average_precision": np.ascontiguousarray(
                            predictions.average_precision, dtype=np.float32
                        )
                    }
                ),
            )
    return path


def read_predictions(
    record_path: str | os.PathLike, result: EvalResult | None = None
) -> Predictions:
    """The sidecar a record names, after checking its sha256 against the record."""
    record_path = Path(record_path)
    result = result if result is not None else read_result(record_path)
    if result.predictions is None:
        raise HarnessError("the record names no predictions file", record_path)
    path = Path(result.predictions.path)
    if not path.is_absolute():
        path = record_path.parent / path
    if not path.is_file():
        raise HarnessError("predictions file named by the record is missing", path)
    if sha256_file(path) != result.predictions.sha256:
        raise HarnessError("predictions file does not match the sha256 in its record", path)
    from harness.io import npz_shapes

    try:
        # Members may not declare more than the record's own counts allow (or deflate give).
        depth = max(1, min(int(result.protocol.k), int(result.counts.database)))
        npz_shapes(path, int(result.counts.queries) * depth * 8 + (1 << 16))
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(npz_member(archive, "meta").tobytes().decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a {type(meta).__name__}, not an object")
            version = meta.get("format_version")
            problem = version_problem("predictions format_version", version, _PREDICTIONS_FORMATS)
            if problem:
                raise ValueError(problem)
            return Predictions(
                indices=npz_member(archive, "indices"),
                scores=npz_member(archive, "scores"),
                first_positive_rank=npz_member(archive, "first_positive_rank"),
                has_positive=npz_member(archive, "has_positive"),
                average_precision=npz_member(archive, "average_precision")
                if version >= 2 and "average_precision" in archive.files else None,
            )
    except NPZ_ERRORS + (AssertionError, RecursionError) as exc:
        raise HarnessError(f"not a readable predictions file ({exc})", path) from None
