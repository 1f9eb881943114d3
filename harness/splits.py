"""Splits: frozen metadata plus the query/database image lists and their UTM positions.

A split is stored under the data root as one ``<name>.split.npz`` file (no pickle: names are
one UTF-8 blob, positions float64 arrays, metadata a JSON string), which loads a
6.4M-image database in seconds. Built-in definitions (which ``.mat`` files a split comes
from) live as data in ``splits/builtin.toml``; :func:`prepare_builtin_splits` builds them
from NetVLAD ``.mat`` files read by :mod:`harness.matfile`, :func:`import_split` any other.
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
from typing import Sequence

import numpy as np

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml

from harness.errors import HarnessError
from harness.io import atomic_path
from harness.versions import is_version, version_problem

logger = logging.getLogger(__name__)

SPLIT_FORMAT_VERSION = 1
SPLIT_SUFFIX = ".split.npz"
DEFAULT_RECALL_NS = (1, 5, 10, 20, 50, 100)
NO_POSITIVE_POLICIES = ("miss", "exclude")
DATA_ROOT_ENV = "HARNESS_DATA"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


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
        if not _NAME_PATTERN.fullmatch(self.name or "") or self.name.endswith(SPLIT_SUFFIX):
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
        from harness.ground_truth import positives_within_radius

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
    from harness.canonical import check_canonical

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


# ----------------------------------------------------------------------------- building

DEFINITIONS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SplitDefinition:
    """How to build one split from NetVLAD ``.mat`` files (an entry of ``splits/builtin.toml``).

    Either ``mat`` (queries and database from one file) or both ``queries_mat`` and
    ``database_mat``; paths and image roots are relative to the dataset root.
    """

    name: str
    description: str
    radius_m: float
    mat: str | None = None
    queries_mat: str | None = None
    database_mat: str | None = None
    query_root: str = ""
    database_root: str = ""
    recall_ns: tuple[int, ...] = DEFAULT_RECALL_NS
    spatial_nms: bool = False
    no_positive: str = "miss"

    def __post_init__(self):
        if self.mat is not None and (self.queries_mat or self.database_mat):
            raise HarnessError(f"split {self.name}: give either mat or queries_mat + database_mat")
        if self.mat is None and not (self.queries_mat and self.database_mat):
            raise HarnessError(
                f"split {self.name}: needs mat, or both queries_mat and database_mat"
            )
        if self.no_positive not in NO_POSITIVE_POLICIES:
            raise HarnessError(
                f"split {self.name}: no_positive must be one of {NO_POSITIVE_POLICIES}"
            )
        if not float(self.radius_m) > 0:
            raise HarnessError(f"split {self.name}: radius_m must be > 0")
        object.__setattr__(self, "recall_ns", tuple(int(n) for n in self.recall_ns))

    @property
    def queries_file(self) -> str:
        return self.mat if self.mat is not None else self.queries_mat  # type: ignore[return-value]

    @property
    def database_file(self) -> str:
        return self.mat if self.mat is not None else self.database_mat  # type: ignore[return-value]

    @property
    def mat_files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.queries_file, self.database_file)))


_DEFINITION_KEYS = tuple(f.name for f in dataclasses.fields(SplitDefinition) if f.name != "name")
_DEFINITION_TYPES = {
    "description": str,
    "radius_m": (int, float),
    "mat": str,
    "queries_mat": str,
    "database_mat": str,
    "query_root": str,
    "database_root": str,
    "recall_ns": list,
    "spatial_nms": bool,
    "no_positive": str,
}


def parse_split_definitions(text: str, source: str = "<string>") -> dict[str, SplitDefinition]:
    """Parse a split-definition TOML document (the ``splits/builtin.toml`` format).

    Unknown keys, at the top level or in a split, raise :class:`HarnessError` listing the
    valid ones.
    """
    try:
        document = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise HarnessError(f"invalid TOML ({exc})", source) from None
    unknown = sorted(set(document) - {"format_version", "splits"})
    if unknown:
        raise HarnessError(
            f"unknown top-level keys {unknown}; valid keys are ['format_version', 'splits']", source
        )
    if not is_version(document.get("format_version"), DEFINITIONS_FORMAT_VERSION):
        raise HarnessError(
            f"format_version must be {DEFINITIONS_FORMAT_VERSION}, "
            f"got {document.get('format_version')!r}",
            source,
        )
    definitions = {}
    for name, entry in document.get("splits", {}).items():
        if not isinstance(entry, dict):
            raise HarnessError(f"[splits.{name}] must be a table", source)
        unknown = sorted(set(entry) - set(_DEFINITION_KEYS))
        if unknown:
            raise HarnessError(
                f"[splits.{name}]: unknown keys {unknown}; "
                f"valid keys are {sorted(_DEFINITION_KEYS)}",
                source,
            )
        for key in ("description", "radius_m"):
            if key not in entry:
                raise HarnessError(f"[splits.{name}]: {key} is required", source)
        for key, value in entry.items():
            expected = _DEFINITION_TYPES[key]
            wrong = not isinstance(value, expected) or (
                isinstance(value, bool) and expected != bool
            )
            if wrong or (key == "recall_ns" and not all(type(n) is int for n in value)):
                raise HarnessError(
                    f"[splits.{name}]: {key} has the wrong type "
                    f"({type(value).__name__}: {value!r})",
                    source,
                )
        try:
            definition = SplitDefinition(name=name, **entry)
        except HarnessError as exc:
            raise HarnessError(exc.message, source) from None
        except (TypeError, ValueError) as exc:
            raise HarnessError(f"[splits.{name}]: {exc}", source) from None
        if not _NAME_PATTERN.fullmatch(name):
            raise HarnessError(f"[splits.{name}]: invalid split name", source)
        definitions[name] = definition
    return definitions


@functools.lru_cache(maxsize=1)
def _builtin_definitions() -> tuple[tuple[str, SplitDefinition], ...]:
    from importlib import resources

    resource = resources.files("splits").joinpath("builtin.toml")
    return tuple(
        parse_split_definitions(resource.read_text(encoding="utf-8"), str(resource)).items()
    )


def builtin_definitions() -> dict[str, SplitDefinition]:
    """The built-in split definitions shipped in ``splits/builtin.toml``, in file order."""
    return dict(_builtin_definitions())


def get_definition(name: str) -> SplitDefinition:
    """A built-in definition by name; unknown names suggest close matches."""
    definitions = builtin_definitions()
    if name in definitions:
        return definitions[name]
    close = difflib.get_close_matches(name, list(definitions), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise HarnessError(
        f"unknown built-in split {name!r}{hint} (built-ins: {', '.join(definitions)})"
    )


def build_split(
    name: str,
    *,
    queries,
    database,
    radius_m: float,
    recall_ns: Sequence[int] = DEFAULT_RECALL_NS,
    spatial_nms: bool = False,
    no_positive: str = "miss",
    query_root: str = "",
    database_root: str = "",
    description: str = "",
    source: Sequence[str] = (),
) -> Split:
    """A :class:`Split` from the queries of one ``DbStruct`` and the database of another.

    Both lists are put in sorted name order (the OpenIBL convention), positions permuted
    with them; duplicate names are an error (they would make rows ambiguous).
    """
    parts = {}
    for part, struct, names, utm in (
        ("query", queries, queries.q_images, queries.utm_q),
        ("database", database, database.db_images, database.utm_db),
    ):
        order = _sorted_order(names)
        sorted_names = tuple(names[i] for i in order) if order is not None else tuple(names)
        duplicate = next((a for a, b in zip(sorted_names, sorted_names[1:]) if a == b), None)
        if duplicate is not None:
            raise HarnessError(f"{part} image {duplicate!r} is listed more than once", struct.path)
        empty = next((n for n in sorted_names[:1] if n == ""), None)
        if empty is not None:
            raise HarnessError(f"a {part} image name is empty", struct.path)
        parts[part] = (sorted_names, utm if order is None else utm[order])
    return Split(
        name=name,
        query_names=parts["query"][0],
        database_names=parts["database"][0],
        query_utm=parts["query"][1],
        database_utm=parts["database"][1],
        radius_m=float(radius_m),
        recall_ns=tuple(recall_ns),
        spatial_nms=bool(spatial_nms),
        no_positive=no_positive,
        query_root=query_root,
        database_root=database_root,
        description=description,
        source=tuple(source),
    )


def _sorted_order(names: Sequence[str]) -> np.ndarray | None:
    """Permutation that sorts ``names`` (Python string order), or None if already sorted."""
    if all(a <= b for a, b in zip(names, names[1:])):
        return None
    return np.asarray(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)


def _resolve(root: Path | None, relative: str) -> Path:
    path = Path(relative).expanduser()
    return path if path.is_absolute() or root is None else root / path


class _MatCache:
    """Reads each ``.mat`` once (Indoor-Ams 1 and 2 share the Outdoor-Ams database file).

    Both image lists come back already in sorted order, so the three splits built on the
    6.4M-image Outdoor-Ams database sort it once.
    """

    def __init__(self):
        self._structs: dict[Path, object] = {}

    def read(self, path: Path):
        from harness.matfile import read_dbstruct

        key = path.resolve()
        if key not in self._structs:
            logger.info("reading %s", path)
            struct = read_dbstruct(path)
            changes = {}
            for names_field, utm_field, time_field in (
                ("q_images", "utm_q", "q_timestamps"),
                ("db_images", "utm_db", "db_timestamps"),
            ):
                names = getattr(struct, names_field)
                order = _sorted_order(names)
                if order is not None:
                    changes[names_field] = tuple(names[i] for i in order)
                    changes[utm_field] = getattr(struct, utm_field)[order]
                    if getattr(struct, time_field) is not None:
                        changes[time_field] = getattr(struct, time_field)[order]
            self._structs[key] = dataclasses.replace(struct, **changes) if changes else struct
        return self._structs[key]


def split_from_definition(
    definition: SplitDefinition,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    _cache: _MatCache | None = None,
) -> Split:
    """Build the split ``definition`` describes from the files under dataset ``root``."""
    root = Path(root).expanduser().resolve()
    cache = _cache or _MatCache()
    queries_path = _resolve(root, definition.queries_file)
    database_path = _resolve(root, definition.database_file)
    queries = cache.read(queries_path)
    database = cache.read(database_path)
    for struct in {id(queries): queries, id(database): database}.values():
        if abs(struct.pos_dist_thr - definition.radius_m) > 1e-9:
            logger.debug(
                "%s: posDistThr is %g m; split %s uses %g m (its definition)",
                struct.path,
                struct.pos_dist_thr,
                name or definition.name,
                definition.radius_m,
            )
    query_root = _resolve(root, definition.query_root)
    database_root = _resolve(root, definition.database_root)
    for label, folder in (("query", query_root), ("database", database_root)):
        if not folder.is_dir():
            logger.warning(
                "split %s: %s image folder %s does not exist",
                name or definition.name,
                label,
                folder,
            )
    source = [f"{definition.queries_file}:qImage", f"{definition.database_file}:dbImage"]
    return build_split(
        name or definition.name,
        queries=queries,
        database=database,
        radius_m=definition.radius_m,
        recall_ns=definition.recall_ns,
        spatial_nms=definition.spatial_nms,
        no_positive=definition.no_positive,
        query_root=str(query_root),
        database_root=str(database_root),
        description=definition.description,
        source=source,
    )


@dataclass(frozen=True)
class PrepareOutcome:
    """What :func:`prepare_builtin_splits` did with one built-in split."""

    name: str
    registered: bool
    path: Path | None = None
    reason: str = ""


def prepare_builtin_splits(
    root: str | os.PathLike,
    *,
    prefix: str = "",
    data_root: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
) -> list[PrepareOutcome]:
    """Register every built-in split whose ``.mat`` files exist under ``root``.

    Args:
        root: dataset root (holding ``raw/...``).
        prefix: prepended to each registered name (``synth-`` gives ``synth-outdoor-ams``).
        data_root: where splits are registered (default :func:`default_data_root`).
        names: only these built-ins (default: all).

    Returns:
        One :class:`PrepareOutcome` per built-in considered, registered or skipped with why.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError("dataset root is not a directory", root)
    definitions = builtin_definitions()
    selected = list(definitions) if names is None else [get_definition(n).name for n in names]
    cache = _MatCache()
    outcomes = []
    for builtin in selected:
        definition = definitions[builtin]
        target = prefix + builtin
        missing = [f for f in definition.mat_files if not _resolve(root, f).is_file()]
        if missing:
            reason = "missing " + ", ".join(str(_resolve(root, f)) for f in missing)
            logger.debug("skipped %s: %s", target, reason)
            outcomes.append(PrepareOutcome(target, False, reason=reason))
            continue
        split = split_from_definition(definition, root, name=target, _cache=cache)
        path = register_split(split, data_root)
        outcomes.append(PrepareOutcome(target, True, path=path))
    return outcomes


def import_split(
    name: str,
    *,
    mat: str | os.PathLike | None = None,
    queries_mat: str | os.PathLike | None = None,
    database_mat: str | os.PathLike | None = None,
    radius_m: float | None = None,
    recall_ns: Sequence[int] = DEFAULT_RECALL_NS,
    spatial_nms: bool = False,
    no_positive: str = "miss",
    query_root: str | os.PathLike = "",
    database_root: str | os.PathLike = "",
    description: str = "",
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Build a split from ``.mat`` file(s) and register it; returns the split file's path.

    Without ``radius_m`` the files' ``posDistThr`` is used (they must agree).
    """
    if mat is not None and (queries_mat is not None or database_mat is not None):
        raise HarnessError("give either --mat or --queries-mat with --database-mat, not both")
    if mat is None and (queries_mat is None or database_mat is None):
        raise HarnessError("give --mat, or both --queries-mat and --database-mat")
    cache = _MatCache()
    queries_path = Path(mat if mat is not None else queries_mat).expanduser()
    database_path = Path(mat if mat is not None else database_mat).expanduser()
    queries = cache.read(queries_path)
    database = cache.read(database_path)
    if radius_m is None:
        radii = {queries.pos_dist_thr, database.pos_dist_thr}
        if len(radii) != 1:
            raise HarnessError(
                f"the .mat files disagree on posDistThr ({sorted(radii)}); give --radius-m"
            )
        radius_m = radii.pop()
        logger.info("split %s: radius %g m from posDistThr", name, radius_m)
    split = build_split(
        name,
        queries=queries,
        database=database,
        radius_m=radius_m,
        recall_ns=recall_ns,
        spatial_nms=spatial_nms,
        no_positive=no_positive,
        query_root=str(Path(query_root).expanduser().resolve()) if query_root else "",
        database_root=str(Path(database_root).expanduser().resolve()) if database_root else "",
        description=description,
        source=[f"{queries_path.resolve()}:qImage", f"{database_path.resolve()}:dbImage"],
    )
    return register_split(split, data_root)


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
