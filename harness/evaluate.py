"""Evaluate feature files on a split: validate, stream the exact search, score, record.

The path of one evaluation: ``harness eval`` (:mod:`harness.commands.evaluate`) ->
:func:`evaluate` -> :func:`search_and_hash` (validation, the streamed exact search and the
sha256 of the files in one pass: a :class:`~harness.record.SearchOutput`) ->
:func:`harness.record.build_record` (metrics, then the :class:`~harness.results.EvalResult`).

Entry points::

    evaluate(features, split, config=EvalConfig(), *, method=None) -> EvalResult
    search_features(features, split, config, *, partial_database=False) -> SearchOutput
    search_and_hash(features, split, config, *, partial_database=False) -> SearchOutput
    build_record(split, output, config, *, method=None) -> EvalResult   (harness.record)

A sharded (SLURM) evaluation runs :func:`search_and_hash` with ``partial_database=True`` on
the query file plus a subset of the database shards in each job, merges the partial top-K with
:func:`harness.search.merge_topk` into one :class:`~harness.record.SearchOutput`, and passes
it to :func:`~harness.record.build_record`: the record is identical (scores, protocol, counts)
to a single :func:`evaluate` run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from harness.config import EvalConfig
from harness.digests import RememberedDigests, StreamedDigests
from harness.efficiency import extraction_summary
from harness.errors import HarnessError, ValidationError
from harness.features import OpenFiles, expand_feature_paths, read_descriptors
from harness.ground_truth import positives_within_radius
from harness.hardware import reset_peak_rss
from harness.record import SearchOutput, build_record
from harness.results import EvalResult
from harness.search import (
    BlockSource,
    SearchStats,
    default_block_rows,
    float16_converter,
    iter_feature_blocks,
    resolve_backend,
    search_blocks,
    settle_kernel_rates,
    streams_from_mapping,
)
from harness.sources.rankings import evaluate_ranking
from harness.splits import Split, get_split

logger = logging.getLogger(__name__)

_ATTR_TYPES = (str, int, float, bool)


class _BlockInspector:
    """Value checks (finite, non-zero rows, L2 norm) of every streamed block.

    Runs in the reading thread, so the check costs no extra pass over the files.
    """

    def __init__(self, database_bytes: int = 0):
        self._tolerance = NORM_TOLERANCE
        self._lock = threading.Lock()
        self._database_bytes = database_bytes
        self._widen = None
        self._local = threading.local()
        self.problems: dict[Path, list[str]] = {}
        self.unnormalised: dict[Path, int] = {}

    def _as_float32(self, descriptors: np.ndarray) -> np.ndarray:
        """float16 pieces (a backend that widens on its GPU gets blocks as stored) are widened
        into a per-thread scratch buffer with the fast converter."""
        if descriptors.dtype != np.float16:
            return descriptors
        if self._widen is None:
            self._widen = float16_converter("auto", stored_bytes=self._database_bytes)
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or scratch.size < descriptors.size:
            scratch = self._local.scratch = np.empty(descriptors.size, dtype=np.float32)
        out = scratch[: descriptors.size].reshape(descriptors.shape)
        self._widen(np.ascontiguousarray(descriptors), out)
        return out

    def __call__(
        self, source: BlockSource, start: int, descriptors: np.ndarray, dtype: str = "float32"
    ):
        check = inspect_block(self._as_float32(descriptors),
                              self._tolerance.get(dtype, self._tolerance["float32"]))
        notes = []
        if check.nonfinite_rows.size:
            notes.append(f"{check.nonfinite_rows.size} /{source.part} rows hold NaN or Inf "
                         f"(first at stored row {start + int(check.nonfinite_rows[0])})")
        if check.zero_rows.size:
            notes.append(f"{check.zero_rows.size} /{source.part} rows are all zero "
                         f"(first at stored row {start + int(check.zero_rows[0])})")
        with self._lock:
            if notes:
                self.problems.setdefault(source.path, []).extend(notes)
            if check.unnormalised_rows:
                self.unnormalised[source.path] = (
                    self.unnormalised.get(source.path, 0) + check.unnormalised_rows
                )

    def raise_problems(self) -> None:
        problems = [f"{path}: {note}" for path, notes in self.problems.items() for note in notes]
        if problems:
            raise ValidationError(problems)

    def warnings(self) -> list[str]:
        return [
            f"{path}: {count} rows are not L2-normalised (inner product then differs from L2 "
            "ranking)"
            for path, count in self.unnormalised.items()
        ]


def plain_attrs(attrs: Mapping[str, object]) -> dict:
    """HDF5 attributes as JSON values (numpy scalars unwrapped, anything else as text)."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value if isinstance(value, _ATTR_TYPES) else str(value)
    return out


def mixed_precisions(infos) -> list[str]:
    """``["bf16: q.h5", "fp32: db.h5"]`` when files record different precisions, else ``[]``."""
    recorded = {}
    for info in infos:
        value = info.attrs.get("extraction_precision")
        if value is not None:
            recorded[Path(info.path).name] = str(value)
    if len(set(recorded.values())) < 2:
        return []
    return [f"{value}: {name}" for name, value in sorted(recorded.items())]


def search_features(
    features: Sequence[str | os.PathLike],
    split: Split,
    config: EvalConfig = EvalConfig(),
    *,
    partial_database: bool = False,
    database_ranges: Mapping[str | os.PathLike, tuple[int, int] | None] | None = None,
    on_stored_block=None,
    files: OpenFiles | None = None,
) -> SearchOutput:
    """Validate ``features`` against ``split`` and search every query's exact top-K.

    ``features`` are files or directories: exactly one file holds ``/query``; ``/database``
    rows come from one or more files. With ``partial_database`` the database files may cover
    only part of the split's database (one job of a sharded evaluation); ``database_ranges``
    then maps each file whose ``/database`` is searched to the stored rows ``(first, end)``
    searched in it (``None``: all of them); other files' database parts are not searched (the
    query file may hold a database part that another job searches). ``on_stored_block``
    is handed to :func:`harness.search.iter_feature_blocks` (``evaluate`` hashes the files
    with it while they stream). ``files``: the open handles to share (each file is then opened
    once for validation, reading and streaming); without it they are opened here.
    """
    if files is None:
        with OpenFiles() as opened:
            return search_features(features, split, config, partial_database=partial_database,
                                   database_ranges=database_ranges,
                                   on_stored_block=on_stored_block, files=opened)
    started = time.perf_counter()
    paths = tuple(expand_feature_paths(features))
    if not paths:
        raise HarnessError("no feature files given")
    report = check_features(paths, split, check_values=False,
                            require_complete_database=not partial_database, files=files)
    query_part, database_parts, dim, method = (
        report.query,
        list(report.database),
        report.dim,
        report.method,
    )
    ranges: dict[Path, tuple[int, int] | None] = {}
    if database_ranges is not None:
        wanted = {Path(p).resolve(): span for p, span in database_ranges.items()}
        database_parts = [part for part in database_parts if Path(part.path).resolve() in wanted]
        for part in database_parts:
            span = wanted[Path(part.path).resolve()]
            if span is not None and not 0 <= span[0] < span[1] <= part.count:
                raise HarnessError(f"rows {span[0]}:{span[1]} are not within the file's "
                                   f"{part.count} database rows", part.path)
            ranges[Path(part.path)] = span
    spans = {Path(part.path): ranges.get(Path(part.path)) or (0, part.count)
             for part in database_parts}
    database_rows = sum(stop - start for start, stop in spans.values())
    warnings = list(report.warnings)
    info = next(i for i in report.infos if i.path == query_part.path)
    attrs = plain_attrs(info.attrs)
    precisions = mixed_precisions(report.infos)
    if precisions:
        # The record takes the query file's attributes: say that the database differs.
        attrs["extraction_precision"] = "mixed: " + ", ".join(precisions)
        warnings.append(
            f"feature files were extracted in different precisions ({', '.join(precisions)})")
    searched = {Path(query_part.path)} | {Path(part.path) for part in database_parts}
    extraction = extraction_summary(
        (i.path, i.attrs) for i in report.infos if Path(i.path) in searched)

    database_bytes = sum(
        part.count * part.dim * np.dtype(part.dtype).itemsize for part in database_parts
    )
    inspector = _BlockInspector(database_bytes) if config.validate else None
    queries = np.empty((split.num_queries, dim), dtype=np.float32)
    stored = read_descriptors(query_part.path, "query", files=files)
    queries[query_part.rows] = stored
    del stored
    if inspector is not None:
        inspector(
            BlockSource(query_part.path, query_part.rows, "query"), 0, queries, query_part.dtype
        )
    load_s = time.perf_counter() - started

    protocol = config.protocol(split)
    backend = resolve_backend(config.ngpu, config.cpu_backend, config.query_batch_rows,
                              database_rows=database_rows, num_queries=split.num_queries)
    block_rows = config.block_rows or default_block_rows(dim, backend.block_bytes)
    sources = []
    for part in database_parts:
        start, stop = spans[Path(part.path)]
        sources.append(BlockSource(part.path, part.rows[start:stop], "database", first_row=start,
                                   stored_rows=part.count, handle=files.get(part.path)))
    dtypes = {part.dtype for part in database_parts}
    on_block = None
    if inspector is not None:
        dtype_of = {part.path: part.dtype for part in database_parts}
        on_block = lambda source, start, block: inspector(
            source, start, block, dtype_of[source.path]
        )  # noqa: E731
    stats = SearchStats()
    blocks = iter_feature_blocks(
        sources, block_rows, prefetch_blocks=config.prefetch, on_block=on_block,
        as_stored=backend.accepts_float16, on_stored_block=on_stored_block,
    )
    topk = search_blocks(
        queries,
        blocks,
        protocol.k,
        backend=backend,
        total_rows=database_rows,
        progress=config.progress,
        stats=stats,
    )
    if inspector is not None:
        inspector.raise_problems()
        for warning in inspector.warnings():
            logger.warning("%s", warning)
            warnings.append(warning)
    logger.info(
        "searched %d queries x %d database rows (dim %d) with %s in %.2f s "
        "(%.2f s waiting for reads)", split.num_queries, stats.database_rows, dim,
        stats.backend, stats.total_s, stats.wait_s,
    )
    return SearchOutput(
        topk=topk,
        paths=paths,
        method=method,
        method_attrs=attrs,
        descriptor_dim=int(dim),
        descriptor_dtype=dtypes.pop() if len(dtypes) == 1 else "float16",
        search_backend=stats.backend,
        load_s=load_s,
        search_s=stats.total_s,
        warnings=tuple(warnings),
        database_rows=int(database_rows),
        descriptor_dtypes=tuple(sorted({part.dtype for part in database_parts})),
        extraction=extraction,
    )


def out_of_memory(exc: MemoryError, config: EvalConfig, paths) -> HarnessError:
    """The one-line error of an evaluation that ran out of memory: what to lower."""
    detail = " ".join(str(exc).split())[:200] or "MemoryError"
    block = config.block_rows if config.block_rows is not None else "auto (~128 MB)"
    where = paths[0] if len(paths) == 1 else None
    return HarnessError(
        f"out of memory during the evaluation ({detail}); lower --block-rows (database rows "
        f"per streamed block, now {block})", where)


def _handle_or_none(files: OpenFiles, path: Path):
    """The shared handle of ``path``, or None when it does not open (validation reports it)."""
    try:
        return files.get(path)
    except HarnessError:
        return None


def search_and_hash(
    features: Sequence[str | os.PathLike],
    split: Split,
    config: EvalConfig = EvalConfig(),
    *,
    partial_database: bool = False,
    database_ranges: Mapping[str | os.PathLike, tuple[int, int] | None] | None = None,
    hashed: Sequence[str | os.PathLike] | None = None,
) -> SearchOutput:
    """:func:`search_features`, with the sha256 of every file (when ``config.checksums``)
    computed beside the search from the bytes it streams (``output.digests``,
    ``output.checksum_s``). ``hashed``: only these files (default: every file); a file searched
    in part is hashed from the rows streamed, the rest read from the file.

    ``evaluate`` and each task of a sharded SLURM evaluation run exactly this.
    """
    paths = expand_feature_paths(features)
    if config.checksums:
        # Before the hashing thread competes with the measurement:
        settle_kernel_rates(config.cpu_backend, split.num_database, split.num_queries)
    with OpenFiles() as files:
        hashing = None
        if config.checksums:
            searched = None if database_ranges is None else {Path(p).resolve()
                                                             for p in database_ranges}
            if hashed is not None:
                wanted = {Path(p).resolve() for p in hashed}
                paths = [path for path in paths if path.resolve() in wanted]
            known = RememberedDigests(paths, reuse=config.reuse_digests)
            to_hash = known.to_hash
            streamed = [path for path in to_hash
                        if (searched is None or path.resolve() in searched)
                        and streams_from_mapping(path, "database", _handle_or_none(files, path))]
            hashing = StreamedDigests(to_hash, streamed) if to_hash else None
        try:
            output = search_features(features, split, config, partial_database=partial_database,
                                     database_ranges=database_ranges,
                                     on_stored_block=hashing.on_stored_block if hashing else None,
                                     files=files)
        except BaseException as exc:
            if hashing is not None:
                hashing.cancel()
            if isinstance(exc, MemoryError):
                raise out_of_memory(exc, config, paths) from None
            raise
    if not config.checksums:
        return dataclasses.replace(output, digests=(), checksum_s=0.0)
    fresh, checksum_s = hashing.result() if hashing is not None else ((), 0.0)
    digests = known.combine(fresh)
    logger.info("sha256 of %d files: %.2f s of hashing; %.2f GB hashed from the search's "
                "own reads, %.2f GB read only to hash; %d remembered from an earlier hashing",
                len(fresh), checksum_s, hashing.streamed_bytes / 1e9 if hashing else 0.0,
                hashing.read_bytes / 1e9 if hashing else 0.0, len(known.remembered))
    return dataclasses.replace(output, digests=digests, checksum_s=checksum_s)


def evaluate(
    features: Sequence[str | os.PathLike],
    split: Split,
    config: EvalConfig = EvalConfig(),
    *,
    method: str | None = None,
) -> EvalResult:
    """Evaluate feature files on ``split``: the exact top-K, Recall@N, mAP@K, one record.

    Args:
        features: feature files or directories (one file holds ``/query``; the database may be
            sharded over several files).
        split: the split (names map stored rows to split rows; any row order works).
        config: protocol overrides and search settings.
        method: the method name to record (default: the files' ``method`` attribute).

    Returns:
        The :class:`EvalResult`; its ``prediction_data`` holds the rankings for the sidecar.

    Raises:
        HarnessError / ValidationError: bad files (nothing is written).
    """
    started = time.perf_counter()
    scope = "evaluation" if reset_peak_rss() else "process"
    # Before any thread of ours competes with the measurement:
    settle_kernel_rates(config.cpu_backend, split.num_database, split.num_queries)
    # The positives depend on the split alone: they (and scipy's import) are ready when the
    # search ends, computed while the GEMMs leave the interpreter free.
    with ThreadPoolExecutor(1, thread_name_prefix="harness-positives") as pool:
        positives = pool.submit(positives_within_radius, split.database_utm, split.query_utm,
                                config.protocol(split).radius_m)
        output = search_and_hash(features, split, config)
        return build_record(split, output, config, method=method, started=started,
                            peak_scope=scope, positives=positives.result())


def evaluate_files_or_ranking(features=None, split=None, config=None, *, ranking=None,
                              method: str | None = None,
                              data_root: str | os.PathLike | None = None, **options):
    """Evaluate feature files (or a ranking file) on a split; returns the record.

    Args:
        features: a feature file, a folder of shards, or a list of them.
        split: a split name, a ``.split.npz`` path or a :class:`harness.splits.Split`.
        config: a :class:`harness.config.EvalConfig`; or give its fields as keywords
            (``recall_ns=(1, 5, 10)``, ``ngpu=0``...).
        ranking: a ranking file instead of ``features`` (re-ranking methods).
        method: the method name to record.

    Returns:
        :class:`harness.results.EvalResult`: ``result.scores["recall@1"]``, ``result.recall(5)``,
        ``result.write("r.json")``.
    """
    if split is None:
        raise HarnessError("evaluate needs a split (a name, a path or a Split)")
    if (features is None) == (ranking is None):
        raise HarnessError("give either features or ranking")
    split = split if isinstance(split, Split) else get_split(split, data_root)
    if config is None:
        config = EvalConfig.from_dict(options)
    elif options:
        config = config.replace(**options)
    if ranking is not None:
        return evaluate_ranking(ranking, split, config, method=method)
    paths = [features] if isinstance(features, (str, os.PathLike)) else list(features)
    return evaluate(paths, split, config, method=method)


class _CallableModule(type(os)):
    """``harness.evaluate`` is this module once imported (Python sets submodules as package
    attributes); calling it runs :func:`evaluate_files_or_ranking` (``harness.evaluate(...)``)."""

    def __call__(self, *args, **kwargs):
        return evaluate_files_or_ranking(*args, **kwargs)


import sys as _sys  # noqa: E402

from harness.validate import NORM_TOLERANCE, check_features, inspect_block

_sys.modules[__name__].__class__ = _CallableModule
