"""A launch task's state: its own status file, the scheduler's view of its job, and the two
combined into a :class:`TaskStatus` (a :class:`LaunchStatus` for a whole launch).

A task writes ``tasks/<index>.json`` (the finalizer ``finalize.json``) itself: RUNNING, then
COMPLETED, FAILED or CANCELLED. The scheduler (``sacct``/``squeue`` on SLURM, the process for
local runs) is what reveals tasks that ended before they could write anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.io import write_json_atomic
from slurm.scheduler import (
    ACTIVE_STATES,
    PROBLEM_STATES,
    VANISHED_AFTER_S,
    slurm_queue_states,
    slurm_states,
)

FINALIZE = "finalize"


def utc_now() -> str:
    """Now, UTC, to the second (the launch records' time format)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_s(timestamp: str) -> float:
    """Seconds since a :func:`utc_now` timestamp."""
    then = _dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def status_path(launch_dir: Path, index: int | str) -> Path:
    """Where task ``index`` (or the finalizer) writes its own status."""
    if index == FINALIZE:
        return launch_dir / "finalize.json"
    return launch_dir / "tasks" / f"{int(index):05d}.json"


def write_status(path: Path, state: str, **fields) -> None:
    """Write a status file (atomically): ``state``, the time, and ``fields``."""
    write_json_atomic(path, {"state": state, "time": utc_now(), **fields})


def read_status(launch_dir: Path, index: int | str) -> dict | None:
    """A task's own status file, or None (none yet, or not readable yet)."""
    path = status_path(launch_dir, index)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-visible on a slow shared filesystem: ask again
        return None
    return data if isinstance(data, dict) else None


def writer_alive(status: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a RUNNING status file still runs (True if unknowable:
    another host, or no pid recorded)."""
    import psutil

    pid, host = status.get("pid"), status.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = status.get("started")
        if isinstance(started, str):  # a recycled pid started after the status was written
            then = _dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=_dt.timezone.utc).timestamp()
            return process.create_time() <= then + 2.0
        return True
    except (psutil.Error, ValueError):
        return False



@dataclass(frozen=True)
class TaskStatus:
    """One task's state as far as anything can tell now."""

    index: int | str
    label: str
    state: str
    job_id: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    output: Any = None
    attempts: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def problem(self) -> bool:
        return self.state in PROBLEM_STATES

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"


@dataclass(frozen=True)
class LaunchStatus:
    """The state of every task of a launch (and of its finalizer, if it has one)."""

    launch_dir: Path
    kind: str
    cluster: str
    tasks: tuple[TaskStatus, ...]
    finalizer: TaskStatus | None = None

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def active(self) -> tuple[TaskStatus, ...]:
        return tuple(t for t in self.tasks if t.active)

    @property
    def problems(self) -> tuple[TaskStatus, ...]:
        return tuple(t for t in self.tasks if t.problem)

    @property
    def all_completed(self) -> bool:
        return all(t.completed for t in self.tasks)

    @property
    def done(self) -> bool:
        """No task (nor the finalizer) is still queued or running."""
        return not self.active and not (self.finalizer is not None and self.finalizer.active)

    def task(self, index: int) -> TaskStatus:
        for task in self.tasks:
            if task.index == index:
                return task
        raise KeyError(index)

    def format(self, *, all_tasks: bool = False) -> str:
        """A human summary: counts, then one line per task with a problem (or every task)."""
        summary = ", ".join(f"{n} {state.lower()}" for state, n in self.counts.items())
        lines = [f"{self.kind} launch {self.launch_dir.name} ({self.cluster}): "
                 f"{len(self.tasks)} tasks: {summary}"]
        shown = self.tasks if all_tasks else self.problems
        for task in shown:
            lines.append(f"  task {task.index:>4} {task.label:<24} {task.state:<13} "
                         f"job {task.job_id or '-'}")
            if task.error:
                lines.append(f"       error: {task.error}")
            if task.problem or all_tasks:
                lines.append(f"       log:   {task.stderr or '-'}")
        if self.finalizer is not None:
            f = self.finalizer
            lines.append(f"  finalize {f.label:<24} {f.state:<13} job {f.job_id or '-'}")
            if f.error:
                lines.append(f"       error: {f.error}")
            if f.problem:
                lines.append(f"       log:   {f.stderr or '-'}")
        if self.problems:
            indices = ",".join(str(t.index) for t in self.problems)
            lines.append(
                f"resubmit them: harness slurm resubmit {self.launch_dir} --tasks {indices}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def one(task: TaskStatus) -> dict:
            return {k: getattr(task, k) for k in ("index", "label", "state", "job_id", "stdout",
                                                  "stderr", "error", "output", "attempts")}

        return {
            "launch_dir": str(self.launch_dir),
            "kind": self.kind,
            "cluster": self.cluster,
            "counts": self.counts,
            "tasks": [one(t) for t in self.tasks],
            "finalizer": one(self.finalizer) if self.finalizer else None,
        }


def slurm_scheduler_view(slurm_attempts: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """job id -> the scheduler's state of the latest SLURM attempts (one ``sacct`` call, and
    ``squeue`` for what ``sacct`` cannot settle)."""
    scheduler: dict[str, str] = {}
    if slurm_attempts:
        scheduler = slurm_states(a["job_id"] for a in slurm_attempts)
        # squeue for what sacct cannot settle: jobs it does not list yet, and jobs it
        # calls ended that may still be stopping (scancel's SIGTERM is only a warning to
        # a submitit job; its processes run on until SIGKILL, KillWait seconds later).
        unsettled = [a for a in slurm_attempts
                     if scheduler.get(a["job_id"], "UNLISTED") in PROBLEM_STATES | {"UNLISTED"}]
        if unsettled:
            queued = slurm_queue_states(a["job_id"] for a in unsettled)
            for attempt in unsettled:
                job_id = attempt["job_id"]
                if job_id in queued:
                    listed = job_id in scheduler
                    scheduler[job_id] = "COMPLETING" if listed else queued[job_id]
                elif (job_id not in scheduler
                      and age_s(attempt["submitted"]) > VANISHED_AFTER_S):
                    # A pending array task cancelled before it started leaves no
                    # accounting record: once sacct's lag is long past, it is gone.
                    scheduler[job_id] = "VANISHED"
    return scheduler


def combine_task_state(
    index: int | str,
    label: str,
    attempt: Mapping[str, Any] | None,
    attempts: int,
    scheduled: str | None,
    own: dict | None,
    *,
    queued: bool,
) -> TaskStatus:
    """A task's state from the scheduler's view of its latest ``attempt`` (``scheduled``; None
    when not submitted) and its own status file (``own``); ``queued``: waiting for a local slot.

    Read the scheduler first and the file second: a task that finishes in between is then
    seen as finished, never as "ended without an outcome".
    """
    if own is not None and attempt and own.get("job_id") and own["job_id"] != attempt["job_id"]:
        own = None  # written by an earlier attempt (one still stopping, say): not this one's
    job_id = attempt["job_id"] if attempt else (own or {}).get("job_id")
    base = dict(index=index, label=label, job_id=job_id, attempts=attempts,
                stdout=attempt["stdout"] if attempt else None,
                stderr=attempt["stderr"] if attempt else None)
    if own is not None and own.get("state") in ("COMPLETED", "FAILED", "CANCELLED"):
        return TaskStatus(state=own["state"], error=own.get("error"), output=own.get("output"),
                          **base)
    if scheduled is None:
        state = "QUEUED" if queued else "NOT_SUBMITTED"
        if own is not None and own.get("state") == "RUNNING":
            # Run in a process of its own making (the finalizer run here, a debug task):
            # no scheduler watches it, so a RUNNING file whose process died (killed with
            # its launcher) would otherwise be waited for forever.
            if not writer_alive(own):
                return TaskStatus(state="LOST", error=(
                    f"its process (pid {own.get('pid')} on {own.get('host')}) ended without "
                    "recording an outcome"), **base)
            state = "RUNNING"
        return TaskStatus(state=state, **base)
    state = scheduled
    if own is not None and own.get("state") == "RUNNING" and state in ("SUBMITTED", "PENDING"):
        state = "RUNNING"
    error = None
    if state == "COMPLETED":  # the job ended, yet the task never wrote its outcome
        state, error = "LOST", "the job ended without recording an outcome (see its log)"
    elif state == "INTERRUPTED":
        error = "the task's process ended without recording an outcome (see its log)"
    elif state == "VANISHED":
        state, error = "LOST", ("the scheduler no longer knows the job (cancelled while "
                                "pending?) and it recorded no outcome")
    elif state in PROBLEM_STATES:
        error = f"the scheduler reports {state}"
    return TaskStatus(state=state, error=error, **base)
