"""Check feature files against a split before anything is evaluated.

:func:`validate_features` reads one query file and any number of database shard files (a file
may hold both parts) and returns a :class:`ValidationReport`: *problems* make the files
unusable, *warnings* do not. Every message is one line that names the file. On success the
report also carries, per file and part, the split row of every stored row
(:class:`PartRows`), so the evaluator can place streamed blocks without re-reading names.

Decisions:
- The root ``split`` attribute must equal the split's name. Empty is a warning (names are
  still checked). A different name is a warning, not a problem, for database-only files whose
  names match the split exactly: the Outdoor-Ams database is shared by ``outdoor-ams`` and
  ``indoor-ams-{1,2}``, and 6.4M descriptors are extracted once.
- Files that disagree on the ``method`` attribute are a problem (the scores would be
  meaningless); an empty method is a warning.
- Descriptors must be float32 or float16; every value finite; no all-zero row. Rows whose L2
  norm is not 1 (within 1e-3, 1e-2 for float16) give a warning. Values are scanned in blocks
  of about 64 MiB, never a whole part at once.
- Nothing is unpickled: names are read as HDF5 strings, descriptors as numeric arrays.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from harness.errors import HarnessError, ValidationError
from harness.features import (
    DESCRIPTOR_DTYPES,
    PARTS,
    FeatureFileInfo,
    OpenFiles,
    iter_descriptor_blocks,
    read_info,
    read_names,
)
from harness.splits import Split

logger = logging.getLogger(__name__)

NORM_TOLERANCE = {"float32": 1e-3, "float16": 1e-2}
BLOCK_BYTES = 64 << 20
_SHOW = 3  # names listed per problem


@dataclass(frozen=True)
class PartRows:
    """Where one file's ``part`` rows go in the split.

    ``rows[i]`` is the split row (query or database index) of stored row ``i``.
    """

    path: Path
    part: str
    rows: np.ndarray
    dim: int
    dtype: str

    @property
    def count(self) -> int:
        return int(self.rows.size)


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`validate_features`; ``query``/``database`` are set only when valid."""

    split: str
    paths: tuple[Path, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    query: PartRows | None = None
    database: tuple[PartRows, ...] = ()
    dim: int | None = None
    method: str = ""
    infos: tuple[FeatureFileInfo, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_invalid(self) -> "ValidationReport":
        """Return ``self``, or raise :class:`ValidationError` carrying every problem."""
        if self.problems:
            path = self.paths[0] if len(self.paths) == 1 else None
            problems = list(self.problems)
            if path is not None:  # the error prints the path once
                prefix = f"{path}: "
                problems = [p[len(prefix) :] if p.startswith(prefix) else p for p in problems]
            raise ValidationError(problems, path)
        return self


def check_features(paths: Sequence[str | os.PathLike], split: Split, **options) -> ValidationReport:
    """:func:`validate_features`, raising :class:`ValidationError` if anything is wrong.

    Warnings are logged.
    """
    report = validate_features(paths, split, **options)
    for warning in report.warnings:
        logger.warning("%s", warning)
    return report.raise_if_invalid()


class _Collector:
    def __init__(self):
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, where, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def warning(self, where, message: str) -> None:
        self.warnings.append(f"{where}: {message}")


def _bare(exc: HarnessError) -> str:
    """The message of ``exc`` without its path prefix (the report adds the path itself)."""
    text = exc.message
    prefix = f"{exc.path}: "
    while exc.path and text.startswith(prefix):
        text = text[len(prefix) :]
    return text


def _first(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOW])
    return shown + (", ..." if len(names) > _SHOW else "")


def validate_features(
    paths: Sequence[str | os.PathLike],
    split: Split,
    *,
    check_values: bool = True,
    block_bytes: int = BLOCK_BYTES,
    require_complete_database: bool = True,
    files: OpenFiles | None = None,
) -> ValidationReport:
    """Check feature files (one query part, database in one or more shards) against ``split``.

    Args:
        paths: feature files (directories are not expanded here; see
            :func:`harness.features.expand_feature_paths`).
        split: the split the features are for.
        check_values: scan descriptors for non-finite values, zero rows and norms (reads every
            value, block by block); the evaluator may instead check blocks as it streams them
            with :func:`inspect_block`.
        block_bytes: size of the blocks read during the value scan.
        require_complete_database: every split database image must have a descriptor. With
            False the database files may cover part of the database (one job of a sharded
            evaluation); their names must still be known, unique and in one file only.
        files: share open handles with the caller (:class:`harness.features.OpenFiles`).

    Returns:
        A :class:`ValidationReport` (never raises for bad files; see :func:`check_features`).
    """
    collect = _Collector()
    paths = tuple(Path(p) for p in paths)
    if not paths:
        collect.problem(split.name, "no feature files given")
        return ValidationReport(split.name, paths, tuple(collect.problems), ())
    seen_paths: dict[Path, Path] = {}
    infos: list[FeatureFileInfo] = []
    for path in paths:
        key = path.resolve()
        if key in seen_paths:
            collect.problem(path, "given more than once")
            continue
        seen_paths[key] = path
        try:
            infos.append(read_info(path, files))
        except HarnessError as exc:
            collect.problem(path, _bare(exc))

    _check_attributes(infos, split, collect)
    method = next((info.method for info in infos if info.method), "")

    part_files = {part: [info for info in infos if part in info.parts] for part in PARTS}
    if infos and not part_files["query"]:
        collect.problem(_where(infos), "no file holds /query (the split's queries)")
    if len(part_files["query"]) > 1:
        collect.problem(
            part_files["query"][1].path,
            f"/query is also in {part_files['query'][0].path}; "
            "exactly one file may hold the queries",
        )
    if infos and not part_files["database"]:
        collect.problem(_where(infos), "no file holds /database (the split's database)")

    dims = _check_types(infos, collect)
    dim = dims[0] if len(set(dims)) == 1 else None

    query_rows = None
    if len(part_files["query"]) == 1:
        query_rows = _map_part(
            part_files["query"], "query", split.query_names, lambda: split.query_index, collect,
            files=files,
        )
        query_rows = query_rows[0] if query_rows else None
    database_rows = ()
    if part_files["database"]:
        database_rows = _map_part(
            part_files["database"],
            "database",
            split.database_names,
            lambda: split.database_index,
            collect,
            require_complete=require_complete_database,
            files=files,
        )

    if check_values and not collect.problems:
        for part_rows in ((query_rows,) if query_rows else ()) + tuple(database_rows):
            _scan_values(part_rows, collect, block_bytes)

    ok = not collect.problems
    return ValidationReport(
        split=split.name,
        paths=paths,
        problems=tuple(collect.problems),
        warnings=tuple(collect.warnings),
        query=query_rows if ok else None,
        database=tuple(database_rows) if ok else (),
        dim=dim if ok else None,
        method=method,
        infos=tuple(infos),
    )


def _where(infos: Sequence[FeatureFileInfo]) -> str:
    if len(infos) == 1:
        return str(infos[0].path)
    return f"{infos[0].path} (+{len(infos) - 1} more files)"


def _check_attributes(infos: list[FeatureFileInfo], split: Split, collect: _Collector) -> None:
    for info in infos:
        if not info.split:
            collect.warning(info.path, f"has no split attribute; checked against {split.name!r}")
        elif info.split != split.name:
            if "query" in info.parts:
                collect.problem(
                    info.path, f"was written for split {info.split!r}, not {split.name!r}"
                )
            else:
                # A database-only file serves every split with the same database (Indoor-Ams
                # 1 and 2 search the Outdoor-Ams database): its names decide, checked below.
                logger.info("%s was written for split %r; used for %r because its database "
                            "names belong to it", info.path, info.split, split.name)
        if not info.method:
            collect.warning(info.path, "has no method attribute")
    methods = {info.method for info in infos if info.method}
    if len(methods) > 1:
        listing = ", ".join(f"{info.path.name}: {info.method}" for info in infos if info.method)
        collect.problem(_where(infos), f"files disagree on the method ({listing})")


def _check_types(infos: list[FeatureFileInfo], collect: _Collector) -> list[int]:
    dims = []
    for info in infos:
        for part, part_info in info.parts.items():
            if part_info.dtype not in DESCRIPTOR_DTYPES:
                collect.problem(
                    info.path,
                    f"/{part}/descriptors has dtype {part_info.dtype}; "
                    f"must be one of {', '.join(DESCRIPTOR_DTYPES)}",
                )
            if part_info.dim < 1:
                collect.problem(info.path, f"/{part}/descriptors has dimension {part_info.dim}")
            dims.append(part_info.dim)
    if len(set(dims)) > 1:
        # The query part (or the first file's first part) is the reference dimension.
        reference = next(
            ((i, "query") for i in infos if "query" in i.parts),
            (infos[0], next(iter(infos[0].parts))),
        )
        reference_dim = reference[0].parts[reference[1]].dim
        for info in infos:
            for part, part_info in info.parts.items():
                if part_info.dim != reference_dim:
                    collect.problem(
                        info.path,
                        f"/{part}/descriptors has dimension {part_info.dim}, but "
                        f"/{reference[1]}/descriptors in {reference[0].path.name} "
                        f"has {reference_dim}",
                    )
    return dims


def map_names_to_rows(names: Sequence[str], split_names: Sequence[str], index) -> np.ndarray:
    """Split row of each name (``-1`` if the split does not list it), int64.

    Fast path: ``names`` equal a contiguous run of the (sorted) split names, which is what
    extraction writes, shard by shard; otherwise ``index`` (a callable returning the split's
    name -> row dict) is used.
    """
    count = len(names)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    start = bisect.bisect_left(split_names, names[0])
    if start + count <= len(split_names) and list(split_names[start : start + count]) == list(
        names
    ):
        return np.arange(start, start + count, dtype=np.int64)
    lookup = index()
    return np.fromiter((lookup.get(name, -1) for name in names), dtype=np.int64, count=count)


def _map_part(infos, part, split_names, index, collect: _Collector,
              require_complete: bool = True, files: OpenFiles | None = None) -> list[PartRows]:
    total = len(split_names)
    owner = np.full(total, -1, dtype=np.int32)
    mapped: list[PartRows] = []
    for number, info in enumerate(infos):
        part_info = info.parts[part]
        if part_info.count > 2 * total + 1024:
            # Refused from the declared shape: the names of a part far larger than the split
            # are never read (a few extra rows are read and reported name by name below).
            collect.problem(
                info.path,
                f"/{part}/descriptors has {part_info.count} rows but the split has only "
                f"{total} {part} images",
            )
            continue
        try:
            names = read_names(info.path, part, files, count=part_info.count)
        except HarnessError as exc:
            collect.problem(info.path, _bare(exc))
            continue
        if len(names) != part_info.count:
            collect.problem(
                info.path,
                f"/{part}/names has {len(names)} entries but /{part}/descriptors has "
                f"{part_info.count} rows",
            )
            continue
        rows = map_names_to_rows(names, split_names, index)
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            collect.problem(
                info.path,
                f"{unknown.size} {part} names are not in the split "
                f"(first: {_first([names[i] for i in unknown[:_SHOW + 1]])})",
            )
        known = rows[rows >= 0]
        counts = np.bincount(known, minlength=total) if known.size else np.zeros(total, np.int64)
        repeated = np.flatnonzero(counts > 1)
        if repeated.size:
            collect.problem(
                info.path,
                f"{repeated.size} {part} names occur more than once "
                f"(first: {_first([split_names[i] for i in repeated[:_SHOW + 1]])})",
            )
        overlap = known[owner[known] >= 0]
        if overlap.size:
            other = infos[int(owner[overlap[0]])].path
            collect.problem(
                info.path,
                f"{overlap.size} {part} rows are also in {other} "
                f"(first: {_first([split_names[i] for i in overlap[:_SHOW + 1]])})",
            )
        owner[known] = number
        mapped.append(PartRows(info.path, part, rows, part_info.dim, part_info.dtype))
    if require_complete and len(mapped) == len(infos):
        missing = np.flatnonzero(owner < 0)
        if missing.size:
            collect.problem(
                _where(infos),
                f"{missing.size} of {total} split {part} images have no descriptor "
                f"(first: {_first([split_names[i] for i in missing[:_SHOW + 1]])})",
            )
    return mapped


@dataclass(frozen=True)
class BlockCheck:
    """Value checks of one block of descriptors (row positions are within the block)."""

    nonfinite_rows: np.ndarray
    zero_rows: np.ndarray
    unnormalised_rows: int
    norm_min: float
    norm_max: float


def inspect_block(
    descriptors: np.ndarray, tolerance: float = NORM_TOLERANCE["float32"]
) -> BlockCheck:
    """Non-finite rows, all-zero rows and L2 norms of a ``(n, D)`` float block."""
    assert descriptors.ndim == 2, f"descriptors must be 2-D, got {descriptors.shape}"
    block = np.asarray(descriptors, dtype=np.float32)
    squared = np.einsum("ij,ij->i", block, block)
    suspicious = np.flatnonzero(~np.isfinite(squared))
    # A huge finite value overflows the float32 square: only NaN/Inf in the row count.
    nonfinite = (
        suspicious[~np.isfinite(block[suspicious]).all(axis=1)] if suspicious.size else suspicious
    )
    zero = np.flatnonzero(squared == 0)
    finite = np.isfinite(squared) & (squared > 0)
    norms = np.sqrt(squared[finite])
    if norms.size:
        unnormalised = int(np.count_nonzero(np.abs(norms - 1) > tolerance))
        norm_min, norm_max = float(norms.min()), float(norms.max())
    else:
        unnormalised, norm_min, norm_max = 0, float("nan"), float("nan")
    return BlockCheck(nonfinite, zero, unnormalised, norm_min, norm_max)


def _scan_values(part_rows: PartRows, collect: _Collector, block_bytes: int) -> None:
    tolerance = NORM_TOLERANCE.get(part_rows.dtype, NORM_TOLERANCE["float32"])
    block_rows = max(1, block_bytes // max(1, part_rows.dim * 4))
    nonfinite: list[int] = []
    zero: list[int] = []
    num_nonfinite = num_zero = num_unnormalised = 0
    norm_min, norm_max = np.inf, -np.inf
    blocks = iter_descriptor_blocks(part_rows.path, part_rows.part, block_rows)
    total_blocks = -(-part_rows.count // block_rows)
    progress = tqdm(
        blocks,
        total=total_blocks,
        desc=f"checking {part_rows.path.name}:{part_rows.part}",
        unit="block",
        disable=total_blocks < 8,
        leave=False,
    )
    try:
        for start, block in progress:
            result = inspect_block(block, tolerance)
            num_nonfinite += result.nonfinite_rows.size
            num_zero += result.zero_rows.size
            nonfinite.extend(
                (start + result.nonfinite_rows[: _SHOW + 1 - len(nonfinite)]).tolist())
            zero.extend((start + result.zero_rows[: _SHOW + 1 - len(zero)]).tolist())
            num_unnormalised += result.unnormalised_rows
            if np.isfinite(result.norm_min):
                norm_min = min(norm_min, result.norm_min)
                norm_max = max(norm_max, result.norm_max)
    except HarnessError as exc:
        # A block that cannot be read (a corrupt chunk) is a finding of the report, not a crash.
        collect.problem(part_rows.path, " ".join(str(exc.message).split()))
        return
    if not (num_nonfinite or num_zero or num_unnormalised):
        return
    names = read_names(part_rows.path, part_rows.part)
    if num_nonfinite:
        collect.problem(
            part_rows.path,
            f"{num_nonfinite} /{part_rows.part} rows hold NaN or Inf "
            f"(first: {_first([names[i] for i in nonfinite])})",
        )
    if num_zero:
        collect.problem(
            part_rows.path,
            f"{num_zero} /{part_rows.part} rows are all zero "
            f"(first: {_first([names[i] for i in zero])})",
        )
    if num_unnormalised:
        collect.warning(
            part_rows.path,
            f"{num_unnormalised} of {part_rows.count} /{part_rows.part} rows are not L2-normalised "
            f"(norms {norm_min:.4g} to {norm_max:.4g})",
        )
