"""The :class:`Split` (frozen metadata plus image lists and UTM positions), its ``.split.npz``
file, and the data root where splits are registered by name.

A split is stored under the data root as one ``<name>.split.npz`` file (no pickle: names are
one UTF-8 blob, positions float64 arrays, metadata a JSON string), which loads a
6.4M-image database in seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.canonical import check_canonical
from harness.errors import HarnessError
from harness.ground_truth import positives_within_radius
from harness.io import atomic_path
from harness.versions import is_version, version_problem

logger = logging.getLogger(__name__)

SPLIT_FORMAT_VERSION = 1
SPLIT_SUFFIX = ".split.npz"
DEFAULT_RECALL_NS = (1, 5, 10, 20, 50, 100)
NO_POSITIVE_POLICIES = ("miss", "exclude")
DATA_ROOT_ENV = "HARNESS_DATA"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def default_data_root() -> Path:
    """``$HARNESS_DATA`` if set, else ``~/.cache/iovpr-harness``."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "iovpr-harness"


@dataclass(frozen=True, eq=False)
class Split:
    """One evaluation (or training) split.

    Positions are UTM (easting, northing) in metres, shape ``(n, 2)`` float64; names are
    image paths relative to ``query_root`` / ``database_root``. Order is the sorted order of
    the names, as in the OpenIBL lineage, so row ``i`` of every array is image ``i``.
    """

    name: str
    query_names: tuple[str, ...]
    database_names: tuple[str, ...]
    query_utm: np.ndarray
    database_utm: np.ndarray
    radius_m: float = 25.0
    recall_ns: tuple[int, ...] = DEFAULT_RECALL_NS
    spatial_nms: bool = False
    no_positive: str = "miss"
    query_root: str = ""
    database_root: str = ""
    description: str = ""
    source: tuple[str, ...] = ()

    def __post_init__(self):
        if not NAME_PATTERN.fullmatch(self.name or "") or self.name.endswith(SPLIT_SUFFIX):
            raise HarnessError(
                f"invalid split name {self.name!r}: use letters, digits and . _ + - "
                "(it becomes a file name)"
            )
        if self.no_positive not in NO_POSITIVE_POLICIES:
            raise HarnessError(
                f"split {self.name}: no_positive must be one of {NO_POSITIVE_POLICIES}, "
                f"got {self.no_positive!r}"
            )
        if not self.radius_m > 0:
            raise HarnessError(f"split {self.name}: radius_m must be > 0, got {self.radius_m}")
        if not self.recall_ns or any(int(n) < 1 for n in self.recall_ns):
            raise HarnessError(f"split {self.name}: recall_ns must be positive integers")
        for part, names, utm in (
            ("query", self.query_names, self.query_utm),
            ("database", self.database_names, self.database_utm),
        ):
            if utm.shape != (len(names), 2):
                raise HarnessError(
                    f"split {self.name}: {part} positions have shape {utm.shape}, "
                    f"expected ({len(names)}, 2)"
                )
            if not np.all(np.isfinite(utm)):
                raise HarnessError(f"split {self.name}: {part} positions are not all finite")
        object.__setattr__(self, "query_utm", np.ascontiguousarray(self.query_utm, np.float64))
        object.__setattr__(
            self, "database_utm", np.ascontiguousarray(self.database_utm, np.float64)
        )
        object.__setattr__(self, "recall_ns", tuple(sorted({int(n) for n in self.recall_ns})))

    @property
    def num_queries(self) -> int:
        return len(self.query_names)

    @property
    def num_database(self) -> int:
        return len(self.database_names)

    @functools.cached_property
    def sha256(self) -> str:
        """Checksum of the canonical content: names, positions and radius (not paths)."""
        digest = hashlib.sha256()
        header = {"format": SPLIT_FORMAT_VERSION, "radius_m": float(self.radius_m)}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for names, utm in (
            (self.query_names, self.query_utm),
            (self.database_names, self.database_utm),
        ):
            digest.update(len(names).to_bytes(8, "little"))
            digest.update(_join_names(names).tobytes())
            digest.update(np.ascontiguousarray(utm, "<f8").tobytes())
        return digest.hexdigest()

    @functools.cached_property
    def query_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.query_names)}

    @functools.cached_property
    def database_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.database_names)}

    @functools.cached_property
    def positives(self):
        """Ground truth (:class:`harness.ground_truth.Positives`) at this split's radius."""
        return positives_within_radius(self.database_utm, self.query_utm, self.radius_m)

    def metadata(self) -> dict:
        """The JSON-serialisable metadata (everything but the per-image arrays)."""
        return {
            "name": self.name,
            "radius_m": float(self.radius_m),
            "recall_ns": list(self.recall_ns),
            "spatial_nms": bool(self.spatial_nms),
            "no_positive": self.no_positive,
            "query_root": self.query_root,
            "database_root": self.database_root,
            "description": self.description,
            "source": list(self.source),
        }

    def replace(self, **changes) -> "Split":
        return dataclasses.replace(self, **changes)


_META_KEYS = {f.name for f in dataclasses.fields(Split)} - {
    "query_names",
    "database_names",
    "query_utm",
    "database_utm",
}


def _join_names(names) -> np.ndarray:
    for name in names:
        if "\n" in name:
            raise HarnessError(f"image name contains a newline: {name!r}")
    return np.frombuffer("\n".join(names).encode("utf-8"), dtype=np.uint8)


def _split_names(blob: np.ndarray, count: int) -> tuple[str, ...]:
    if count == 0:
        return ()
    names = tuple(blob.tobytes().decode("utf-8").split("\n"))
    if len(names) != count:
        raise ValueError(f"expected {count} names, found {len(names)}")
    return names


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` to ``path`` (``.split.npz``) atomically."""
    meta = dict(split.metadata(), format_version=SPLIT_FORMAT_VERSION, sha256=split.sha256)
    meta["num_queries"] = split.num_queries
    meta["num_database"] = split.num_database
    # Stored so that `harness splits list` need not load the arrays; never trusted for scoring.
    meta["num_queries_without_positive"] = split.positives.num_without_positive
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
                query_names=_join_names(split.query_names),
                database_names=_join_names(split.database_names),
                query_utm=split.query_utm,
                database_utm=split.database_utm,
            )
    return path


#: The largest member a split file may declare (Outdoor-Ams's 6.4M names take ~0.5 GB).
SPLIT_MEMBER_MAX_BYTES = 4 << 30


def _check_split_members(path: Path) -> None:
    """Refuse, from the zip and .npy headers, members larger than their bytes or the cap."""
    from harness.io import npz_shapes, require_regular_file

    require_regular_file(path, "split file")
    shapes = npz_shapes(path, SPLIT_MEMBER_MAX_BYTES)
    meta = shapes.get("meta")
    if meta is None or len(meta[0]) != 1 or meta[0][0] > 1 << 20:
        raise ValueError("member 'meta' is missing or larger than 1 MiB")


def load_split(path: str | os.PathLike) -> Split:
    """Read a ``.split.npz`` file; a corrupt or foreign file is a :class:`HarnessError`."""
    path = Path(path)
    try:
        _check_split_members(path)
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
            if not is_version(meta.get("format_version"), SPLIT_FORMAT_VERSION):
                raise ValueError(version_problem(
                    "split format_version", meta.get("format_version"), SPLIT_FORMAT_VERSION))
            kwargs = {k: meta[k] for k in _META_KEYS if k in meta}
            kwargs["recall_ns"] = tuple(kwargs.get("recall_ns", DEFAULT_RECALL_NS))
            kwargs["source"] = tuple(kwargs.get("source", ()))
            split = Split(
                query_names=_split_names(archive["query_names"], meta["num_queries"]),
                database_names=_split_names(archive["database_names"], meta["num_database"]),
                query_utm=archive["query_utm"],
                database_utm=archive["database_utm"],
                **kwargs,
            )
    except HarnessError:
        raise
    except FileNotFoundError:
        raise HarnessError("split file not found", path) from None
    except Exception as exc:  # zip, JSON, key and shape errors all mean "not a split file"
        raise HarnessError(
            f"not a readable split file ({type(exc).__name__}: {exc})", path
        ) from None
    if meta.get("sha256") and meta["sha256"] != split.sha256:
        raise HarnessError("split checksum mismatch: the file was modified or is corrupt", path)
    return split


def read_split_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored in a ``.split.npz`` (counts, radius, sha256...) without its arrays."""
    path = Path(path)
    try:
        _check_split_members(path)
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
    except HarnessError:
        raise
    except FileNotFoundError:
        raise HarnessError("split file not found", path) from None
    except Exception as exc:
        raise HarnessError(
            f"not a readable split file ({type(exc).__name__}: {exc})", path
        ) from None
    if not isinstance(meta, dict) or not is_version(meta.get("format_version"),
                                                    SPLIT_FORMAT_VERSION):
        raise HarnessError("not a split file of a supported format version", path)
    return meta


def split_path(name: str, data_root: str | os.PathLike | None = None) -> Path:
    root = Path(data_root) if data_root is not None else default_data_root()
    return root / "splits" / f"{name}{SPLIT_SUFFIX}"


def list_splits(data_root: str | os.PathLike | None = None) -> list[str]:
    """Names of the splits imported under ``data_root``, sorted."""
    folder = split_path("x", data_root).parent
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SPLIT_SUFFIX)] for p in folder.glob(f"*{SPLIT_SUFFIX}"))


def get_split(name_or_path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Split:
    """Load an imported split by name (or a ``.split.npz`` path); unknown names suggest others."""
    text = os.fspath(name_or_path)
    if text.endswith(SPLIT_SUFFIX) or os.sep in text:
        return load_split(text)
    path = split_path(text, data_root)
    if path.is_file():
        return load_split(path)
    known = list_splits(data_root)
    close = difflib.get_close_matches(text, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = path.parent
    listing = f" (imported: {', '.join(known)})" if known and not close else ""
    raise HarnessError(
        f"unknown split {text!r} under {where}{hint}{listing}; "
        "import it with `harness splits prepare` or `harness splits import`"
    )


def register_split(split: Split, data_root: str | os.PathLike | None = None) -> Path:
    """Save ``split`` under the data root so :func:`get_split` finds it by name.

    A canonical benchmark name (``splits/canonical.toml``) only takes a matching split.
    """
    check_canonical(split)
    path = save_split(split, split_path(split.name, data_root))
    logger.info(
        "registered split %s: %d queries, %d database images, radius %.1f m -> %s",
        split.name,
        split.num_queries,
        split.num_database,
        split.radius_m,
        path,
    )
    return path


def split_from_metadata(meta: dict, **arrays) -> Split:
    """Build a Split from a metadata dict that must not hold unknown keys."""
    unknown = sorted(set(meta) - _META_KEYS)
    if unknown:
        raise HarnessError(f"unknown split keys {unknown}; valid keys are {sorted(_META_KEYS)}")
    meta = dict(meta)
    for key in ("recall_ns", "source"):
        if key in meta:
            meta[key] = tuple(meta[key])
    return Split(**meta, **arrays)



@dataclass(frozen=True)
class SplitSummary:
    """What ``harness splits list/show`` print about one split."""

    name: str
    num_queries: int
    num_database: int
    radius_m: float
    spatial_nms: bool
    no_positive: str
    num_queries_without_positive: int | None
    sha256: str
    description: str


def summarize_split(path: str | os.PathLike) -> SplitSummary:
    """Summary of a registered split from its stored metadata (fast: no arrays loaded)."""
    meta = read_split_metadata(path)
    return SplitSummary(
        name=meta["name"],
        num_queries=int(meta["num_queries"]),
        num_database=int(meta["num_database"]),
        radius_m=float(meta["radius_m"]),
        spatial_nms=bool(meta.get("spatial_nms", False)),
        no_positive=meta.get("no_positive", "miss"),
        num_queries_without_positive=meta.get("num_queries_without_positive"),
        sha256=meta.get("sha256", ""),
        description=meta.get("description", ""),
    )

