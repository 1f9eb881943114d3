"""Summarise launches, resubmit the tasks that did not complete, cancel the ones running.

A task that failed, was cancelled, timed out, ran out of memory or lost its node is reported
with its log file and can be resubmitted alone: the launch record keeps its parameters, so a
resubmission runs exactly that task again (optionally with other resources, e.g. more time
after a TIMEOUT). Finished tasks are never rerun unless asked to.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError
from slurm.launch import RECORD_NAME, Launch, LaunchStatus

logger = logging.getLogger(__name__)


def launch_status(launch_dir: str | os.PathLike) -> LaunchStatus:
    """The state of every task of the launch in ``launch_dir``."""
    return Launch.open(launch_dir).status()


@dataclass(frozen=True)
class LaunchSummary:
    """One line of ``harness slurm status`` without a launch: what is in the log directory."""

    launch_dir: Path
    kind: str
    label: str
    cluster: str
    created: str
    tasks: int


def list_launches(log_dir: str | os.PathLike) -> list[LaunchSummary]:
    """Launches under ``log_dir``, newest first (records only; no scheduler query)."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return []
    found = []
    for record in log_dir.glob(f"*/{RECORD_NAME}"):
        try:
            launch = Launch.open(record.parent)
        except HarnessError as exc:
            logger.warning("%s", exc.one_line())
            continue
        found.append(LaunchSummary(
            launch.dir, launch.kind, str(launch.record.get("label", "")), launch.cluster,
            str(launch.record.get("created", "")), len(launch.tasks)))
    return sorted(found, key=lambda s: (s.created, s.launch_dir.name), reverse=True)


def parse_task_list(text: str | None) -> list[int] | None:
    """``"1,3,5-7"`` -> ``[1, 3, 5, 6, 7]``; ``None``/empty -> ``None``."""
    if not text:
        return None
    indices: list[int] = []
    for piece in text.replace(" ", "").split(","):
        if not piece:
            continue
        low, sep, high = piece.partition("-")
        try:
            if sep:
                indices.extend(range(int(low), int(high) + 1))
            else:
                indices.append(int(piece))
        except ValueError:
            raise HarnessError(f"task list must look like 1,3,5-7; got {text!r}") from None
    return sorted(set(indices))


def resubmit(
    launch_dir: str | os.PathLike,
    tasks: Sequence[int] | None = None,
    *,
    force: bool = False,
    resources: Mapping[str, Any] | None = None,
    cluster: str | None = None,
    wait: bool | None = None,
    progress: bool = False,
) -> Launch:
    """Submit the given tasks again (default: every task that ended without completing).

    Active tasks are refused (cancel them first); completed ones too unless ``force``.
    ``resources`` overrides fields of the recorded resources (``{"time_min": 240}``), and
    ``cluster`` the cluster. With a finalizer (the merge of a sharded eval) it runs again once
    the tasks are done: here when waiting, else as a dependent SLURM job. Waiting is the
    default except on SLURM; local runs always wait.
    """
    from slurm.executor import CLUSTERS

    launch = Launch.open(launch_dir)
    if cluster is not None:
        if cluster not in CLUSTERS:
            raise HarnessError(f"unknown cluster {cluster!r} (valid: {', '.join(CLUSTERS)})")
        launch.record["cluster"] = cluster
    if resources:
        launch.record["resources"] = launch.resources.replace(**dict(resources)).to_dict()
    status = launch.status()
    if tasks is None:
        chosen = [t.index for t in status.tasks if t.problem]
    else:
        chosen = sorted(set(int(i) for i in tasks))
        for index in chosen:
            if not 0 <= index < len(status.tasks):
                raise HarnessError(f"no task {index} (the launch has {len(status.tasks)})",
                                   launch.dir)
            task = status.task(index)
            if task.state == "COMPLETING":
                raise HarnessError(f"task {index} (job {task.job_id}) is still stopping; try again "
                                   "in a few seconds", launch.dir)
            if task.active:
                raise HarnessError(
                    f"task {index} is still {task.state} (job {task.job_id}); cancel it first "
                    f"(harness slurm cancel {launch.dir} --tasks {index})", launch.dir)
            if task.completed and not force:
                raise HarnessError(f"task {index} already completed; pass --force to run it again",
                                   launch.dir)
    launch.save()
    wait = (launch.cluster != "slurm") if wait is None else bool(wait)
    if launch.cluster == "local":
        wait = True
    finalizer_due = bool(launch.record.get("finalizer")) and (
        chosen or status.finalizer is None or not status.finalizer.completed)
    if not chosen and not finalizer_due:
        logger.info("nothing to resubmit: %s", ", ".join(
            f"{n} {s.lower()}" for s, n in status.counts.items()))
        return launch
    job_ids = launch.submit(chosen) if chosen else []
    if chosen:
        logger.info("resubmitted task(s) %s of %s", ",".join(map(str, chosen)), launch.dir.name)
    if not wait:
        if finalizer_due:
            launch.submit_finalizer(job_ids)
        return launch
    final = launch.wait(progress=progress)
    if not final.all_completed:
        raise HarnessError(f"not every task completed:\n{final.format()}", launch.dir)
    if finalizer_due:
        launch.run_finalizer_here()
    return launch


def cancel(launch_dir: str | os.PathLike, tasks: Sequence[int] | None = None) -> list[int]:
    """Cancel the active tasks (default: all) of a launch; returns the indices cancelled."""
    launch = Launch.open(launch_dir)
    cancelled = launch.cancel(tasks)
    status = launch.status()
    if status.finalizer is not None and status.finalizer.active and tasks is None:
        launch.cancel_finalizer()
    return cancelled
