"""Sharded extraction: a job array, one database shard per task.

Task ``i`` of ``n`` runs :func:`methods.extract.extract` with ``shard=(i, n)``: it writes
``<out>/database-<i>-of-<n>.h5`` (and task 0 also ``<out>/query.h5``). Before submitting, the
launcher checks which shard files are already complete (same method fingerprint, weights,
split and dtype) and submits only the others, so rerunning the command after a failure, a
cancellation or a timeout extracts only what is missing. The output folder is then ready for
``harness slurm eval --features <out> --shards n`` (or ``harness eval --features <out>``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from harness.errors import HarnessError
from harness.splits import Split
from slurm.executor import Resources
from slurm.launch import Launch, TaskSpec

logger = logging.getLogger(__name__)

KIND = "extract"
SPLIT_FILE = "split.split.npz"


def _weights_identity(weights: str | None) -> list | None:
    if not weights:
        return None
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise HarnessError("weights file not found", path)
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _method(params: Mapping):
    from methods.registry import get_method

    return get_method(params["method"], dict(params["options"]), weights=params["weights"])


def _extract_options(params: Mapping):
    from methods.extract import ExtractOptions

    return ExtractOptions(
        device=params["device"], batch_size=params["batch_size"], workers=params["workers"],
        dtype=params["dtype"], precision=params.get("precision", "fp32"), progress=False,
    )


def shard_outputs(out_dir: Path, index: int, shards: int) -> list[Path]:
    """The files task ``index`` writes (the query file belongs to task 0)."""
    from methods.extract import shard_file

    files = [shard_file(out_dir, "database", (index, shards))]
    if index == 0:
        files.insert(0, shard_file(out_dir, "query", (index, shards)))
    return files


def finished_shards(launch: Launch) -> list[int]:
    """Tasks whose every output file is complete for this method, weights, split and dtype."""
    from methods.extract import is_complete

    params = launch.params
    fingerprint = _method(params).fingerprint_sha256()
    out_dir = Path(params["out"])
    done = []
    for index in range(len(launch.tasks)):
        files = shard_outputs(out_dir, index, params["shards"])
        if all(
            is_complete(path, fingerprint=fingerprint, dtype=params["dtype"],
                        split_sha256=params["split_sha256"],
                        precision=params.get("precision", "fp32"),
                        parts=("query",) if path.name.startswith("query") else ("database",))
            for path in files
        ):
            done.append(index)
    return done


def launch_extract(
    method: str,
    split: Split,
    out: str | os.PathLike,
    *,
    shards: int,
    cluster: str,
    log_dir: str | os.PathLike,
    resources: Resources = Resources(),
    weights: str | None = None,
    options: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    dtype: str = "float32",
    precision: str = "fp32",
    wait: bool = True,
    progress: bool = False,
) -> Launch:
    """Extract ``method``'s features of ``split`` into ``out`` with ``shards`` array tasks.

    Args:
        method: a registered method name; ``options`` and ``weights`` configure it.
        split: the split (a copy goes into the launch directory for the tasks).
        out: output folder (shared with the nodes).
        shards: database shards, one task each.
        cluster, log_dir, resources: see :mod:`slurm.executor`.
        device, batch_size, workers, dtype, precision: extraction settings (``dtype``
            float32/float16 storage; ``precision`` fp32/bf16/fp16 of the network).
        wait: wait for the tasks (local runs always wait).

    Returns:
        The :class:`Launch`. Shards already complete in ``out`` are not submitted again.

    Raises:
        HarnessError: bad method, options or weights; with ``wait``, any task that did not
            complete (named with its log file and the command that resubmits it).
    """
    from harness.splits import save_split

    if shards < 1:
        raise HarnessError(f"--shards must be >= 1, got {shards}")
    if shards > max(1, split.num_database):
        raise HarnessError(f"{shards} shards for {split.num_database} database images")
    out_dir = Path(out).expanduser().resolve()
    if out_dir.suffix in (".h5", ".hdf5"):
        raise HarnessError("--out is a folder for the shard files", out_dir)
    params = {
        "method": method,
        "options": dict(options or {}),
        "weights": str(Path(weights).expanduser().resolve()) if weights else None,
        "weights_identity": _weights_identity(weights),
        "split": split.name,
        "split_sha256": split.sha256,
        "out": str(out_dir),
        "shards": int(shards),
        "dtype": dtype,
        "precision": precision,
        "device": device,
        "batch_size": batch_size,
        "workers": workers,
    }
    instance = _method(params)  # unknown method, options or missing weights fail here
    if params["dtype"] not in ("float32", "float16"):
        raise HarnessError(f"dtype must be float32 or float16, got {dtype!r}")
    from methods.precision import check_precision

    check_precision(precision)
    from methods.extract import shard_rows

    identity = {k: v for k, v in params.items() if k not in ("device", "batch_size", "workers")}
    tasks = []
    for index in range(shards):
        rows = shard_rows(split.num_database, (index, shards))
        label = f"shard {index + 1}/{shards} ({len(rows)} images)"
        outputs = shard_outputs(out_dir, index, shards)
        tasks.append(TaskSpec(label=label, output=str(outputs[-1])))
    launch = Launch.create(
        log_dir, kind=KIND, label=f"{instance.name}-{split.name}", cluster=cluster,
        resources=resources, params=identity, tasks=tasks, runner="slurm.extract:run_shard",
    )
    # Settings that do not change the descriptors may differ between runs of a launch.
    launch.record["settings"] = {"device": device, "batch_size": batch_size, "workers": workers}
    launch.save()
    if not (launch.dir / SPLIT_FILE).is_file():
        save_split(split, launch.dir / SPLIT_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    return submit_missing(launch, wait=wait, progress=progress)


def submit_missing(launch: Launch, *, wait: bool, progress: bool = False) -> Launch:
    """Submit every shard that is neither complete on disk nor running; optionally wait."""
    done = set(finished_shards(launch))
    if done:
        logger.info("%d of %d shard(s) already extracted: skipped", len(done), len(launch.tasks))
    active = {t.index for t in launch.status().tasks if t.active}
    todo = [i for i in range(len(launch.tasks)) if i not in done and i not in active]
    if todo:
        launch.submit(todo)
    if wait or launch.cluster != "slurm":
        status = launch.wait(progress=progress)
        missing = [t for t in status.tasks if t.index not in done and not t.completed]
        if missing:
            raise HarnessError(f"not every shard was extracted:\n{status.format()}", launch.dir)
    return launch


def output_files(launch: Launch) -> list[Path]:
    """Every file of the extraction (query first), for ``harness eval --features``."""
    out_dir = Path(launch.params["out"])
    shards = launch.params["shards"]
    return [p for i in range(shards) for p in shard_outputs(out_dir, i, shards)]


# --------------------------------------------------------------------------------------------
# On the node


def run_shard(launch: Launch, index: int) -> dict:
    """Task ``index``: extract database shard ``index`` (and, for task 0, the queries)."""
    from harness.splits import load_split
    from methods.extract import extract

    params = dict(launch.params)
    params.update(launch.record.get("settings", {}))
    split = load_split(launch.dir / SPLIT_FILE)
    if split.sha256 != params["split_sha256"]:
        raise HarnessError("the launch's split copy does not match its record",
                           launch.dir / SPLIT_FILE)
    recorded = params["weights_identity"]
    if recorded and _weights_identity(params["weights"]) != recorded:
        raise HarnessError("weights changed since the launch (size or modification time)",
                           params["weights"])
    method = _method(params)
    shards = int(params["shards"])
    path = extract(
        method, split=split, out=params["out"], parts=("query", "database"),
        shard=(index, shards), options=_extract_options(params),
    )
    return {"files": [str(p) for p in shard_outputs(Path(params["out"]), index, shards)],
            "database": str(path)}

