"""Sharded evaluation: each task searches one share of the database for every query and
writes its partial top-K; a merge scores the union exactly.

With at most as many tasks as database files, a task searches a group of whole files; with
more tasks than files (one 6.4M-row file, say) the database is cut into contiguous row ranges
of similar size, which may end inside a file. The task holding the first row of a file also
computes that file's sha256 (from its own reads, then the rest of the file).

The launcher validates every feature file against the split first (names, dimensions, the
method), so a task can only fail on values or I/O. Task ``i`` writes
``partials/shard-<i>-of-<n>.npz`` (scores, split database indices, and what the record needs
about its files) atomically; the merge (:func:`merge_eval`) combines the parts with
:func:`harness.search.merge_topk` and scores them with :func:`harness.record.build_record`,
so the record (scores and per-query predictions) equals that of one ``harness eval`` run on the
same files. Rerunning the same command reopens the same launch: shards whose partial exists
are not searched again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.config import EvalConfig
from harness.errors import HarnessError
from harness.io import atomic_path
from harness.results import EvalResult, FileDigest
from harness.splits import Split
from slurm.executor import Resources
from slurm.launch import Launch, TaskSpec

logger = logging.getLogger(__name__)

PARTIAL_FORMAT_VERSION = 1
KIND = "eval"
SPLIT_FILE = "split.split.npz"


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Which files each task searches.

    ``paths`` are all feature files in the order the record lists them (the order
    ``harness eval`` would use); ``query`` is the one holding ``/query``; ``groups[i]`` what
    task ``i`` searches: ``(file, first stored row, end row)`` pieces, contiguous and balanced
    by rows.
    """

    paths: tuple[Path, ...]
    query: Path
    groups: tuple[tuple[tuple[Path, int, int], ...], ...]
    database_rows: tuple[int, ...]
    method: str


def plan_eval(features: Sequence[str | os.PathLike], split: Split,
              shards: int | None = None, block_rows: int | None = None) -> EvalPlan:
    """Validate ``features`` against ``split`` and cut the database into ``shards`` tasks.

    Default: one task per database file. Up to the number of files, tasks search groups of
    whole files; beyond it, contiguous row ranges cut at the search's blocks (``block_rows``,
    default the CPU search's), so the merged scores are the single search's bit for bit.
    """
    from harness.features import expand_feature_paths
    from harness.search import default_block_rows
    from harness.validate import check_features

    paths = tuple(Path(p).resolve() for p in expand_feature_paths(features))
    if not paths:
        raise HarnessError("no feature files given")
    report = check_features(paths, split, check_values=False)
    database = list(report.database)
    if not database:
        raise HarnessError("no file holds /database", paths[0])
    if shards is None:
        shards = len(database)
    if shards < 1:
        raise HarnessError(f"--shards must be >= 1, got {shards}")
    counts = [part.count for part in database]
    if shards > sum(counts):
        raise HarnessError(f"{shards} shards asked for, but the database has only "
                           f"{sum(counts)} rows", database[0].path)
    if shards <= len(database):
        groups = [[(i, 0, counts[i]) for i in group]
                  for group in _balanced_groups(counts, shards)]
    else:
        try:
            groups = _row_ranges(counts, shards,
                                 align=block_rows or default_block_rows(report.dim))
        except HarnessError as exc:  # bad input: the one-line error names the database
            raise HarnessError(exc.message, database[0].path) from None
    return EvalPlan(
        paths=paths,
        query=Path(report.query.path),
        groups=tuple(tuple((Path(database[i].path), start, stop) for i, start, stop in group)
                     for group in groups),
        database_rows=tuple(sum(stop - start for _, start, stop in group) for group in groups),
        method=report.method,
    )


def _row_ranges(counts: Sequence[int], shards: int,
                align: int = 1) -> list[list[tuple[int, int, int]]]:
    """Cut the rows of files ``counts`` (in order) into ``shards`` contiguous ranges of similar
    size: per task, ``(file index, first row, end row)`` pieces.

    Cuts fall on multiples of ``align`` rows within a file (or on file ends): with ``align``
    the search's block size, every block a task searches is a block of the single-process
    search, so the scores carry the same bits.
    """
    total = sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    candidates = np.unique(np.concatenate(
        [np.arange(offsets[i], offsets[i + 1], max(1, align)) for i in range(len(counts))]
        + [offsets]))
    candidates = candidates[(candidates > 0) & (candidates < total)]
    if len(candidates) < shards - 1:
        raise HarnessError(f"{shards} shards asked for, but cut at blocks of {align} rows the "
                           f"database gives at most {len(candidates) + 1}; ask for fewer shards "
                           "or give a smaller --block-rows")
    bounds, previous = [0], 0
    for task in range(1, shards):
        # the candidate nearest to the ideal cut that leaves one for every later task
        allowed = candidates[np.searchsorted(candidates, previous, side="right"):
                             len(candidates) - (shards - 1 - task)]
        ideal = task * total / shards
        previous = int(allowed[np.argmin(np.abs(allowed - ideal))])
        bounds.append(previous)
    bounds.append(total)
    groups = []
    for begin, end in zip(bounds, bounds[1:]):
        pieces = []
        for index, count in enumerate(counts):
            low, high = max(begin, offsets[index]), min(end, offsets[index] + count)
            if low < high:
                pieces.append((index, int(low - offsets[index]), int(high - offsets[index])))
        groups.append(pieces)
    return groups


def _balanced_groups(counts: Sequence[int], shards: int) -> list[list[int]]:
    """Cut ``counts`` (in order) into ``shards`` non-empty contiguous groups of similar sums."""
    total = sum(counts)
    groups: list[list[int]] = []
    current: list[int] = []
    done = 0
    for index, count in enumerate(counts):
        remaining_files = len(counts) - index
        remaining_groups = shards - len(groups)
        target = total * (len(groups) + 1) / shards
        # Close the group when it reaches its share, or when every later file must start a
        # group of its own.
        if current and (done >= target or remaining_files == remaining_groups - 1):
            groups.append(current)
            current = []
        current.append(index)
        done += count
    groups.append(current)
    assert len(groups) == shards and all(groups), (counts, shards, groups)
    return groups


def file_identity(path: str | os.PathLike) -> list[int]:
    """[size, mtime_ns]: a file rewritten since a partial result was computed differs."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def prepare_eval(
    features: Sequence[str | os.PathLike],
    split: Split,
    config: EvalConfig = EvalConfig(),
    *,
    shards: int | None = None,
    cluster: str,
    resources: Resources = Resources(),
    log_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    method: str | None = None,
) -> Launch:
    """Create (or reopen) the launch of a sharded evaluation without submitting anything.

    Args:
        features: feature files or directories (one holds ``/query``; the database sharded).
        split: the split (a copy goes into the launch directory, for the tasks).
        config: as for ``harness eval``.
        shards: tasks (default: one per database file).
        cluster: ``slurm``, ``local`` or ``debug``.
        resources: per task.
        log_dir: shared folder for the launch record, partial results and logs.
        out: record path (default: ``<launch>/result.json``); the predictions sidecar beside.
        predictions: sidecar path (default: beside ``out``).
        method: the method name to record (default: the files' attribute).

    Returns:
        The :class:`Launch`; submit it with :func:`submit_and_finish`.

    Raises:
        HarnessError: invalid files (checked here, before any task runs).
    """
    plan = plan_eval(features, split, shards, config.block_rows)
    config = dataclasses.replace(config, progress=False)
    params = {
        "split": split.name,
        "split_sha256": split.sha256,
        "features": [str(p) for p in plan.paths],
        "query": str(plan.query),
        "config": config.to_dict(),
        "shards": len(plan.groups),
        "out": str(Path(out).resolve()) if out else None,
        "predictions": str(Path(predictions).resolve()) if predictions else None,
        "method": method or plan.method,
    }
    n = len(plan.groups)
    tasks = [
        TaskSpec(
            label=f"shard {i + 1}/{n} ({plan.database_rows[i]} rows)",
            output=f"partials/shard-{i:05d}-of-{n:05d}.npz",
            params={"database": [[str(p), start, stop] for p, start, stop in group]},
        )
        for i, group in enumerate(plan.groups)
    ]
    launch = Launch.create(
        log_dir, kind=KIND, label=split.name, cluster=cluster, resources=resources,
        params=params, tasks=tasks, runner="slurm.evaluate:run_shard",
        finalizer="slurm.evaluate:merge_eval",
    )
    store_split(launch, split)
    # The files as they are now; a partial result counts only for the files it searched.
    launch.record["files"] = {str(p): file_identity(p) for p in plan.paths}
    launch.save()
    return launch


def launch_eval(
    features: Sequence[str | os.PathLike],
    split: Split,
    config: EvalConfig = EvalConfig(),
    *,
    shards: int | None = None,
    cluster: str,
    resources: Resources = Resources(),
    log_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    method: str | None = None,
    wait: bool = True,
    progress: bool = False,
) -> Launch:
    """Search the database shards in parallel tasks and merge them into one record.

    Args:
        features, split, config, shards, cluster, resources, log_dir, out, predictions,
            method: as for :func:`prepare_eval`.
        wait: wait for the tasks and merge here. Without waiting (SLURM only) a merge job is
            submitted that starts when every task has succeeded.

    Returns:
        The :class:`Launch`; with ``wait``, :func:`result_path` then holds the record.

    Raises:
        HarnessError: invalid files; with ``wait``, any task that did not complete (the
            message names each one with its log file and how to resubmit it).
    """
    launch = prepare_eval(features, split, config, shards=shards, cluster=cluster,
                          resources=resources, log_dir=log_dir, out=out,
                          predictions=predictions, method=method)
    return submit_and_finish(launch, wait=wait, progress=progress)


def submit_and_finish(launch: Launch, *, wait: bool, progress: bool = False) -> Launch:
    """Submit what is not finished; with ``wait`` also wait and run the finalizer here."""
    if not wait and launch.cluster != "slurm":
        raise HarnessError("only --cluster slurm can return before the tasks finish")
    unfinished = [i for i in range(len(launch.tasks)) if not _partial_done(launch, i)]
    active = {t.index for t in launch.status().tasks if t.active}
    to_submit = [i for i in unfinished if i not in active]
    skipped = len(launch.tasks) - len(unfinished)
    if skipped:
        logger.info("%d of %d shard(s) already searched: skipped", skipped, len(launch.tasks))
    job_ids = launch.submit(to_submit) if to_submit else []
    if not wait:
        launch.submit_finalizer(job_ids if job_ids else ())
        return launch
    status = launch.wait(progress=progress)
    if not status.all_completed:
        raise HarnessError(f"not every task completed:\n{status.format()}", launch.dir)
    launch.run_finalizer_here()
    return launch


def _partial_path(launch: Launch, index: int) -> Path:
    return launch.resolve(launch.tasks[index]["output"])


def _partial_done(launch: Launch, index: int) -> bool:
    """A partial result exists and was computed from the files as they are now."""
    path = _partial_path(launch, index)
    if not path.is_file():
        return False
    try:
        _, meta = _read_partial(path, launch, index)
    except HarnessError as exc:
        logger.warning("%s: %s; searching this shard again", path, exc.message)
        return False
    try:
        current = {name: file_identity(name) for name in meta["files"]}
    except OSError:
        return False
    if current != meta["files"]:
        logger.info("shard %d: its files changed since it was searched; searching it again", index)
        return False
    return True


def result_path(launch: Launch) -> Path:
    """Where the merged record of an eval launch is (or will be) written."""
    out = launch.params.get("out")
    return Path(out) if out else launch.dir / "result.json"


def store_split(launch: Launch, split: Split) -> Path:
    """Keep a copy of the split in the launch directory: the tasks load it from there."""
    from harness.splits import save_split

    path = launch.dir / SPLIT_FILE
    if not path.is_file():
        save_split(split, path)
    return path


def _load_split(launch: Launch) -> Split:
    from harness.splits import load_split

    split = load_split(launch.dir / SPLIT_FILE)
    if split.sha256 != launch.params["split_sha256"]:
        raise HarnessError(
            f"split {split.name} differs from the launch's (sha256 {split.sha256[:12]} != "
            f"{launch.params['split_sha256'][:12]})", launch.dir / SPLIT_FILE)
    return split


def _config(launch: Launch) -> EvalConfig:
    return EvalConfig.from_dict(launch.params["config"])


# --------------------------------------------------------------------------------------------
# On the node


def run_shard(launch: Launch, index: int) -> dict:
    """Task ``index``: the exact top-K of every query within this task's database files.

    The same validation, value checks, streamed search and hashing as ``harness eval``
    (:func:`harness.evaluate.search_and_hash`), on the query file and this task's shards.
    """
    from harness.evaluate import search_and_hash
    from harness.hardware import peak_rss_bytes, reset_peak_rss

    reset_peak_rss()

    split = _load_split(launch)
    config = _config(launch)
    protocol = config.protocol(split)
    query_path = Path(launch.params["query"])
    pieces = task_pieces(launch.task_params(index)["database"])
    database_paths = [path for path, _, _ in pieces]
    identities = _check_unchanged(launch, [query_path] + database_paths)
    files = list(dict.fromkeys([query_path, *database_paths]))  # the query file may hold a shard
    # Task 0 hashes the query file; the task holding a file's first row hashes that file.
    hashed = [path for path, start, _ in pieces if not start]
    hashed += [query_path] if index == 0 and query_path not in hashed else []
    output = search_and_hash(
        files, split, config, partial_database=True,
        database_ranges={path: None if start is None else (start, stop)
                         for path, start, stop in pieces},
        hashed=hashed)
    keep = {str(p) for p in hashed}
    topk = output.topk
    meta = {
        "format_version": PARTIAL_FORMAT_VERSION,
        "split_sha256": split.sha256,
        "task": index,
        "k": protocol.k,
        "database_rows": output.database_rows,
        "digests": {d.path: dataclasses.asdict(d) for d in output.digests if d.path in keep},
        "files": identities,
        "descriptor_dim": output.descriptor_dim,
        "descriptor_dtypes": list(output.descriptor_dtypes),
        "search_backend": output.search_backend,
        "load_s": output.load_s,
        "search_s": output.search_s,
        "checksum_s": output.checksum_s,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    path = _partial_path(launch, index)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, scores=topk.scores, indices=topk.indices,
                     meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
    logger.info("shard %d: %d queries x %d database rows in %.2f s -> %s", index,
                split.num_queries, meta["database_rows"], output.search_s, path)
    return {"partial": str(path.relative_to(launch.dir)), "database_rows": meta["database_rows"]}


def task_pieces(params: Sequence) -> list[tuple[Path, int | None, int | None]]:
    """A task's ``database`` parameter as ``(file, first row, end row)``; a bare path (a launch
    made before row ranges existed) is the whole file (``None, None``)."""
    pieces = []
    for item in params:
        if isinstance(item, str):
            pieces.append((Path(item), None, None))
        else:
            path, start, stop = item
            pieces.append((Path(path), int(start), int(stop)))
    return pieces


def _check_unchanged(launch: Launch, paths: Sequence[Path]) -> dict[str, list[int]]:
    """Identities of ``paths``; a file rewritten since the launch is an error."""
    recorded = launch.record.get("files", {})
    current = {}
    for path in paths:
        current[str(path)] = file_identity(path)
        if str(path) in recorded and current[str(path)] != recorded[str(path)]:
            raise HarnessError("feature file changed since the launch (size or modification "
                               "time); run the same command again to search it anew", path)
    return current


def _read_partial(path: Path, launch: Launch, index: int):
    from harness.io import NPZ_ERRORS, npz_member
    from harness.search import TopK

    try:
        with np.load(path, allow_pickle=False) as data:
            scores, indices = npz_member(data, "scores"), npz_member(data, "indices")
            meta = json.loads(npz_member(data, "meta").tobytes().decode())
        if not isinstance(meta, dict):
            raise ValueError(f"meta is a {type(meta).__name__}, not an object")
    except NPZ_ERRORS + (RecursionError,) as exc:
        raise HarnessError(f"unreadable partial result ({exc})", path) from None
    if meta.get("format_version") != PARTIAL_FORMAT_VERSION or meta.get("task") != index:
        raise HarnessError(f"partial result is not task {index}'s (format or task differ)", path)
    if meta.get("split_sha256") != launch.params["split_sha256"]:
        raise HarnessError("partial result was computed on another split", path)
    try:
        return TopK(scores, indices), meta
    except ValueError as exc:
        raise HarnessError(f"unreadable partial result ({exc})", path) from None


# --------------------------------------------------------------------------------------------
# The merge


def merge_eval(launch: Launch, _index: Any = None) -> dict:
    """Merge every task's partial top-K, score it and write the record; returns its path."""
    from harness.features import read_info
    from harness.record import SearchOutput, build_record
    from harness.search import merge_topk

    started = time.perf_counter()
    split = _load_split(launch)
    config = _config(launch)
    parts, metas = [], []
    missing = [i for i in range(len(launch.tasks)) if not _partial_path(launch, i).is_file()]
    if missing:
        raise HarnessError(f"tasks {missing} have not written their partial results", launch.dir)
    for index in range(len(launch.tasks)):
        topk, meta = _read_partial(_partial_path(launch, index), launch, index)
        parts.append(topk)
        metas.append(meta)
    recorded = launch.record.get("files", {})
    for index, meta in enumerate(metas):
        stale = [name for name, identity in meta["files"].items() if recorded.get(name) != identity]
        if stale:
            raise HarnessError(f"task {index} searched {stale[0]} as it was before the latest "
                               "launch; run the same command again", launch.dir)
    merged = merge_topk(parts, k=config.protocol(split).k)
    covered = sum(m["database_rows"] for m in metas)
    if covered != split.num_database:
        raise HarnessError(f"the shards cover {covered} of {split.num_database} database rows",
                           launch.dir)
    digests: dict[str, dict] = {}
    for meta in metas:
        digests.update(meta["digests"])
    features = tuple(FileDigest(**digests[path]) for path in launch.params["features"]
                     if path in digests) if config.checksums else ()
    query_path = Path(launch.params["query"])
    from harness.efficiency import extraction_summary
    from harness.evaluate import plain_attrs  # the record's method attributes, as eval writes them

    dtypes = {d for m in metas for d in m["descriptor_dtypes"]}
    extraction = extraction_summary((path, read_info(path).attrs)
                                    for path in launch.params["features"])
    merged_output = SearchOutput(
        topk=merged,
        paths=tuple(Path(p) for p in launch.params["features"]),
        method=launch.params["method"],
        method_attrs=plain_attrs(read_info(query_path).attrs),
        descriptor_dim=metas[0]["descriptor_dim"],
        descriptor_dtype=dtypes.pop() if len(dtypes) == 1 else "float16",
        search_backend=metas[0]["search_backend"],
        load_s=max(m["load_s"] for m in metas),
        search_s=max(m["search_s"] for m in metas),
        database_rows=covered,
        extraction=extraction,
        digests=features,
        checksum_s=sum(m["checksum_s"] for m in metas),
    )
    result = build_record(split, merged_output, config, started=started,
                          peak_scope="largest task",
                          peak_bytes=max(int(m.get("peak_rss_bytes", 0)) for m in metas))
    out = result_path(launch)
    predictions = launch.params.get("predictions")
    result.write(out, predictions_path=predictions)
    return {"result": str(out), "scores": dict(result.scores)}


def read_merged_result(launch: Launch) -> EvalResult:
    """The merged record of a finished eval launch."""
    from harness.results import read_result

    path = result_path(launch)
    if not path.is_file():
        raise HarnessError("no merged result yet (are all tasks and the merge finished?)", path)
    return read_result(path)
