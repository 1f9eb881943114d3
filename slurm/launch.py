"""A launch: tasks submitted through submitit, recorded on disk so that any process can follow,
summarise, cancel or resubmit them later.

Layout of a launch directory (under the log directory, on a filesystem the nodes share)::

    <log_dir>/<launch id>/
        launch.json            what was launched: kind, cluster, resources, parameters, and
                               per task its label, output and every submission (job id, logs)
        tasks/00003.json       written by the task itself: RUNNING, then COMPLETED (with its
                               output), FAILED (error and traceback) or CANCELLED
        finalize.json          the same for the finalizer (e.g. the merge of a sharded eval)
        submitit/<job id>/     submitit's files and the task logs (``*_log.out``/``*_log.err``)

What is submitted is always :func:`run_task` (or :class:`CheckpointableTask`) with the launch
directory and a task index: two strings, never user objects. The task reads its parameters
from ``launch.json`` and calls the kind's runner, a module-level function named in the record
(``"slurm.evaluate:run_shard"``). A task's state combines its own status file (exact, and
immediate) with the scheduler's view (``sacct`` for SLURM, the process for local runs), which
is what reveals tasks that were cancelled, timed out or killed before they could write
anything. ``sacct`` lags the jobs by seconds, so callers poll (:meth:`Launch.wait`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from harness.errors import HarnessError
from harness.io import write_json_atomic
from slurm.executor import CLUSTERS, Resources, make_executor
from slurm.scheduler import pid_running, split_array_id
from slurm.task_state import (
    FINALIZE,
    LaunchStatus,
    TaskStatus,
    combine_task_state,
    read_status,
    slurm_scheduler_view,
    status_path,
    utc_now,
    write_status,
)

# Re-exported: a task's state (status files, scheduler view) lives in slurm.task_state.
__all__ = [
    "FINALIZE",
    "LAUNCH_FORMAT_VERSION",
    "RECORD_NAME",
    "CheckpointableTask",
    "Launch",
    "LaunchStatus",
    "TaskSpec",
    "TaskStatus",
    "import_object",
    "launch_id",
    "run_task",
    "utc_now",
]

logger = logging.getLogger(__name__)

LAUNCH_FORMAT_VERSION = 1
RECORD_NAME = "launch.json"


def launch_id(kind: str, label: str, params: Mapping[str, Any]) -> str:
    """A deterministic id: the same command with the same inputs finds the same launch."""
    text = json.dumps(params, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"{kind}-{safe}-{digest}"


def import_object(spec: str):
    """``"package.module:attr"`` -> the object (module-level functions and classes only)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or "." in attr:
        raise HarnessError(f"not a module-level reference: {spec!r} (expected 'module:name')")
    return getattr(importlib.import_module(module_name), attr)


# --------------------------------------------------------------------------------------------
# What runs on the node


def _job_environment() -> tuple[str, int]:
    """(job id, global rank) of the current submitit task; ("", 0) outside submitit."""
    try:
        env = submitit.JobEnvironment()
        return str(env.job_id), int(env.global_rank)
    except Exception:  # not inside a submitit job (a direct call)
        return "", 0


def _configure_task_logging() -> None:
    # A task in a job process is an entry point of its own: its log is the job's stderr file.
    # In-process runs (the debug cluster) keep the caller's logging as it is.
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def run_task(launch_dir: str, index: int | str) -> Any:
    """Run task ``index`` (or the finalizer, ``"finalize"``) of the launch in ``launch_dir``.

    This is what every job executes. It records RUNNING, then COMPLETED with the runner's
    output, or FAILED with the error (and re-raises, so the scheduler marks the job failed),
    or CANCELLED on an interrupt. Only rank 0 of a multi-process task writes the status.
    """
    _configure_task_logging()
    launch = Launch.open(launch_dir)
    job_id, rank = _job_environment()
    path = status_path(launch.dir, index)
    writes = rank == 0
    common = {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid()}
    if writes:
        write_status(path, "RUNNING", started=utc_now(), **common)
    spec = launch.record["finalizer"] if index == FINALIZE else launch.record["runner"]
    try:
        runner = import_object(spec)
        output = runner(launch, index) if index == FINALIZE else runner(launch, int(index))
    except KeyboardInterrupt:
        if writes:
            write_status(path, "CANCELLED", error="interrupted", **common)
        raise
    except SystemExit:
        # submitit exits this way after requeueing a checkpointable task (timeout or
        # preemption): the task is not over, the scheduler's state says what comes next.
        raise
    except BaseException as exc:
        if writes:
            error = (exc.one_line() if isinstance(exc, HarnessError)
                     else f"{type(exc).__name__}: {exc}")
            write_status(path, "FAILED", error=" ".join(error.split()),
                         traceback=traceback.format_exc(), **common)
        raise
    if writes:
        write_status(path, "COMPLETED", output=output, **common)
    return output


class CheckpointableTask(Checkpointable):
    """:func:`run_task` as a submitit ``Checkpointable``: requeued on timeout or preemption.

    On the timeout or preemption signal submitit calls :meth:`checkpoint`, which resubmits the
    same task; the runner itself resumes from its last checkpoint file, so nothing is pickled
    but the launch directory and the index.
    """

    def __init__(self, launch_dir: str, index: int):
        self.launch_dir = str(launch_dir)
        self.index = int(index)

    def __call__(self) -> Any:
        return run_task(self.launch_dir, self.index)

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        logger.warning("task %d of %s: timeout or preemption; requeued, it resumes from its last "
                       "checkpoint", self.index, self.launch_dir)
        return DelayedSubmission(CheckpointableTask(self.launch_dir, self.index))


# --------------------------------------------------------------------------------------------
# The launch


@dataclass
class TaskSpec:
    """One task of a new launch: a label for humans and the output it promises."""

    label: str
    output: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


class Launch:
    """A launch directory and its record; see the module docstring.

    Create one with :meth:`create` (or reopen the same one: a launch id is deterministic),
    submit tasks with :meth:`submit`, follow them with :meth:`status` / :meth:`wait`.
    """

    def __init__(self, launch_dir: Path, record: dict):
        self.dir = Path(launch_dir)
        self.record = record
        self._jobs: dict[str, Any] = {}  # job id -> submitit Job (this process only)
        self._queued: list[int] = []  # local runs: tasks waiting for a free slot

    # ---- record

    @property
    def path(self) -> Path:
        return self.dir / RECORD_NAME

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def cluster(self) -> str:
        return self.record["cluster"]

    @property
    def params(self) -> dict:
        return self.record["params"]

    @property
    def resources(self) -> Resources:
        return Resources.from_dict(self.record["resources"], str(self.path))

    @property
    def tasks(self) -> list[dict]:
        return self.record["tasks"]

    @property
    def submitit_dir(self) -> Path:
        return self.dir / "submitit"

    def task_params(self, index: int) -> dict:
        return dict(self.tasks[index].get("params", {}))

    def resolve(self, relative: str | os.PathLike) -> Path:
        """A path stored relative to the launch directory, made absolute."""
        path = Path(relative)
        return path if path.is_absolute() else self.dir / path

    def save(self) -> None:
        write_json_atomic(self.path, self.record)

    @classmethod
    def open(cls, launch_dir: str | os.PathLike) -> "Launch":
        """Read an existing launch; a missing or malformed record is a clear error."""
        launch_dir = Path(launch_dir)
        path = launch_dir / RECORD_NAME
        if not path.is_file():
            raise HarnessError(f"not a launch directory (no {RECORD_NAME})", launch_dir)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise HarnessError(f"cannot read launch record ({exc})", path) from None
        required = {"format_version", "kind", "cluster", "resources", "params", "tasks", "runner"}
        if not isinstance(record, dict) or not required <= set(record):
            missing = sorted(required - set(record) if isinstance(record, dict) else required)
            raise HarnessError(f"launch record lacks {missing}", path)
        if record["format_version"] != LAUNCH_FORMAT_VERSION:
            raise HarnessError(
                f"launch format_version {record['format_version']} is not supported "
                f"(this harness reads {LAUNCH_FORMAT_VERSION})", path)
        return cls(launch_dir, record)

    @classmethod
    def create(
        cls,
        log_dir: str | os.PathLike,
        *,
        kind: str,
        label: str,
        cluster: str,
        resources: Resources,
        params: Mapping[str, Any],
        tasks: Sequence[TaskSpec],
        runner: str,
        finalizer: str | None = None,
        tasks_per_node: int = 1,
        checkpointable: bool = False,
    ) -> "Launch":
        """Make the launch directory, or reopen it when the same launch was made before.

        The id hashes ``kind``, ``label`` and ``params`` (not the cluster or the resources): a
        second run of the same command reopens the launch, keeps what its tasks finished and
        records the new cluster and resources for what is submitted next.
        """
        if cluster not in CLUSTERS:
            raise HarnessError(f"unknown cluster {cluster!r} (valid: {', '.join(CLUSTERS)})")
        for spec in (runner,) + ((finalizer,) if finalizer else ()):
            import_object(spec)  # fail in the launcher, not on every node
        ident = launch_id(kind, label, params)
        launch_dir = Path(log_dir) / ident
        plain_params = json.loads(json.dumps(params, default=str))
        if (launch_dir / RECORD_NAME).is_file():
            launch = cls.open(launch_dir)
            if launch.params != plain_params or len(launch.tasks) != len(tasks):
                raise HarnessError("launch directory exists with other parameters; remove it",
                                   launch_dir)
            launch.record["cluster"] = cluster
            launch.record["resources"] = resources.to_dict()
            launch.save()
            logger.info("resuming launch %s", launch_dir)
            return launch
        record = {
            "format_version": LAUNCH_FORMAT_VERSION,
            "id": ident,
            "kind": kind,
            "label": label,
            "cluster": cluster,
            "created": utc_now(),
            "resources": resources.to_dict(),
            "params": plain_params,
            "runner": runner,
            "finalizer": finalizer,
            "tasks_per_node": int(tasks_per_node),
            "checkpointable": bool(checkpointable),
            "tasks": [
                {"index": i, "label": t.label, "output": t.output, "params": dict(t.params),
                 "attempts": []}
                for i, t in enumerate(tasks)
            ],
            "finalize_attempts": [],
        }
        (launch_dir / "tasks").mkdir(parents=True, exist_ok=True)
        launch = cls(launch_dir, record)
        launch.save()
        logger.info("new launch %s (%d tasks)", launch_dir, len(tasks))
        return launch

    # ---- submission

    def _executor(self, name_suffix: str = "", extra_slurm: Mapping[str, Any] | None = None):
        return make_executor(
            self.cluster, self.submitit_dir, self.resources,
            name=f"iovpr-{self.kind}{name_suffix}",
            tasks_per_node=int(self.record.get("tasks_per_node", 1)),
            extra_slurm=extra_slurm,
        )

    def submit(self, indices: Sequence[int] | None = None) -> list[str]:
        """Submit tasks (default: every task not completed and not active); return job ids.

        On SLURM the tasks go out as one job array. Local runs start at most
        ``array_parallelism`` tasks now and the rest from :meth:`wait`. The debug cluster runs
        each task here, in this process (with pdb on an error only when stdin is a terminal).
        """
        if indices is None:
            status = self.status()
            indices = [t.index for t in status.tasks if not t.completed and not t.active]
        indices = sorted(set(int(i) for i in indices))
        for index in indices:
            if not 0 <= index < len(self.tasks):
                raise HarnessError(f"no task {index} (the launch has {len(self.tasks)})", self.dir)
        if not indices:
            return []
        for index in indices:  # an old attempt's status must not speak for the new one
            with contextlib.suppress(FileNotFoundError):
                status_path(self.dir, index).unlink()
        if self.cluster == "local":
            self._queued.extend(i for i in indices if i not in self._queued)
            return self._start_queued()
        return self._submit_now(indices)

    def _submit_now(self, indices: Sequence[int]) -> list[str]:
        executor = self._executor()
        jobs = self._map(executor, indices)
        ids = []
        for index, job in zip(indices, jobs):
            self._record_attempt(self.tasks[index]["attempts"], job)
            self._jobs[str(job.job_id)] = job
            ids.append(str(job.job_id))
        self.save()
        if self.cluster == "debug":
            for job in jobs:
                _run_debug_job(job)
        logger.info("submitted %d task(s) of %s: %s", len(indices), self.dir.name,
                    _compact(ids))
        return ids

    def _map(self, executor, indices: Sequence[int]) -> list:
        if self.record.get("checkpointable"):
            with executor.batch():
                jobs = [executor.submit(CheckpointableTask(str(self.dir), i)) for i in indices]
            return jobs
        return executor.map_array(run_task, [str(self.dir)] * len(indices), list(indices))

    def _start_queued(self) -> list[str]:
        running = sum(1 for job in self._jobs.values() if job.state == "RUNNING")
        free = max(0, self.resources.array_parallelism - running)
        batch, self._queued = self._queued[:free], self._queued[free:]
        return self._submit_now(batch) if batch else []

    def _record_attempt(self, attempts: list, job) -> None:
        cluster = self.cluster
        attempts.append({
            "job_id": str(job.job_id),
            "cluster": cluster,
            "submitted": utc_now(),
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
        })

    def submit_finalizer(self, after_job_ids: Sequence[str] = ()) -> str | None:
        """Submit the finalizer as a job that starts when ``after_job_ids`` all succeeded.

        On SLURM it depends on them (``afterok``; cancelled if one fails). Elsewhere it runs
        now, so call it only once the tasks are done.
        """
        if not self.record.get("finalizer"):
            return None
        with contextlib.suppress(FileNotFoundError):
            status_path(self.dir, FINALIZE).unlink()
        extra = None
        if self.cluster == "slurm" and after_job_ids:
            parents = sorted({split_array_id(j)[0] for j in after_job_ids})
            extra = {"dependency": "afterok:" + ":".join(parents), "kill_on_invalid_dep": "yes"}
        executor = self._executor("-finalize", extra_slurm=extra)
        executor.update_parameters(tasks_per_node=1, gpus_per_node=0)
        job = executor.submit(run_task, str(self.dir), FINALIZE)
        self._record_attempt(self.record.setdefault("finalize_attempts", []), job)
        self._jobs[str(job.job_id)] = job
        self.save()
        if self.cluster == "debug":
            _run_debug_job(job)
        return str(job.job_id)

    def run_finalizer_here(self) -> Any:
        """Run the finalizer in this process (after every task completed); returns its output."""
        if not self.record.get("finalizer"):
            return None
        return run_task(str(self.dir), FINALIZE)

    def cancel(self, indices: Sequence[int] | None = None) -> list[int]:
        """Cancel tasks (default: every active one); returns the indices asked to stop."""
        status = self.status()
        chosen = [t for t in status.tasks if t.active and (indices is None or t.index in indices)]
        slurm_ids = []
        for task in chosen:
            if task.state == "QUEUED":
                self._queued.remove(task.index)
                write_status(status_path(self.dir, task.index), "CANCELLED",
                             error="cancelled before it started")
            elif self.cluster == "slurm":
                slurm_ids.append(task.job_id)
            else:
                if task.job_id in self._jobs:
                    self._jobs[task.job_id].cancel(check=False)
                elif task.job_id:
                    import signal

                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(task.job_id), signal.SIGINT)
                # No scheduler remembers a local cancellation: record it (unless the task got
                # to record an outcome of its own first).
                own = self._read_status(task.index)
                if own is None or own.get("state") not in ("COMPLETED", "FAILED", "CANCELLED"):
                    write_status(status_path(self.dir, task.index), "CANCELLED",
                                 error="cancelled", job_id=task.job_id)
        if slurm_ids:
            subprocess.run(["scancel", *slurm_ids], check=False)
            # A pending array task cancelled before it started leaves no accounting record:
            # record the cancellation of tasks that had not started ourselves.
            for task in chosen:
                if task.job_id in slurm_ids and self._read_status(task.index) is None:
                    write_status(status_path(self.dir, task.index), "CANCELLED",
                                 error="cancelled before it started", job_id=task.job_id)
        return [t.index for t in chosen]

    def cancel_finalizer(self) -> bool:
        """Cancel a submitted finalizer job that has not finished; True if one was asked to stop."""
        attempt = self._latest(self.record.get("finalize_attempts", []))
        if attempt is None:
            return False
        job_id = attempt["job_id"]
        if attempt.get("cluster") == "slurm":
            subprocess.run(["scancel", job_id], check=False)
            return True
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel(check=False)
            return True
        return False

    def _reap_local(self, timeout_s: float = 30.0) -> None:
        """Wait until the local processes this launch started have exited (after a cancel
        they take a moment); nothing started here outlives :meth:`wait`."""
        deadline = time.monotonic() + timeout_s
        for job in list(self._jobs.values()):
            if self.cluster != "local":
                break
            while job.state == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.1)

    # ---- state

    def _latest(self, attempts: list) -> dict | None:
        return attempts[-1] if attempts else None

    def status(self) -> LaunchStatus:
        """Every task's state now (one ``sacct`` call on SLURM)."""
        latest = [self._latest(t["attempts"]) for t in self.tasks]
        final_attempt = self._latest(self.record.get("finalize_attempts", []))
        slurm_attempts = [a for a in latest + [final_attempt] if a and a.get("cluster") == "slurm"]
        scheduler = slurm_scheduler_view(slurm_attempts)
        tasks = tuple(
            self._task_status(i, t["label"], latest[i], len(t["attempts"]), scheduler)
            for i, t in enumerate(self.tasks)
        )
        finalizer = None
        if self.record.get("finalizer") and final_attempt is not None:
            finalizer = self._task_status(FINALIZE, "finalize", final_attempt,
                                          len(self.record["finalize_attempts"]), scheduler)
        elif self.record.get("finalizer") and status_path(self.dir, FINALIZE).is_file():
            finalizer = self._task_status(FINALIZE, "finalize (here)", None, 0, scheduler)
        return LaunchStatus(self.dir, self.kind, self.cluster, tasks, finalizer)

    def _read_status(self, index) -> dict | None:
        return read_status(self.dir, index)

    def _task_status(self, index, label, attempt, attempts, scheduler) -> TaskStatus:
        # The scheduler first, the task's own file second: a task that finishes in between
        # is then seen as finished, never as "ended without an outcome".
        scheduled = self._scheduler_state(attempt, scheduler) if attempt else None
        own = self._read_status(index)
        return combine_task_state(index, label, attempt, attempts, scheduled, own,
                                  queued=index in self._queued)

    def _scheduler_state(self, attempt: Mapping[str, Any], scheduler: Mapping[str, str]) -> str:
        job_id = attempt["job_id"]
        cluster = attempt.get("cluster", self.cluster)
        if cluster == "slurm":
            return scheduler.get(job_id, "SUBMITTED")
        job = self._jobs.get(job_id)
        if cluster == "debug":
            return "INTERRUPTED" if job is None or job.state == "DONE" else "QUEUED"
        if job is not None:  # local, started by this process
            return "RUNNING" if job.state == "RUNNING" else "INTERRUPTED"
        return "RUNNING" if pid_running(job_id) else "INTERRUPTED"

    def wait(self, *, poll_s: float | None = None, progress: bool = False,
             timeout_s: float | None = None) -> LaunchStatus:
        """Poll until no task is active (starting queued local tasks as slots free up)."""
        poll_s = poll_s if poll_s is not None else (2.0 if self.cluster == "slurm" else 0.3)
        started = time.monotonic()
        settle = 5
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.tasks), unit="task", desc=f"{self.kind} tasks", leave=False)
        try:
            while True:
                if self._queued:
                    self._start_queued()
                status = self.status()
                if bar is not None:
                    bar.n = sum(1 for t in status.tasks if not t.active)
                    bar.set_postfix_str(
                        ", ".join(f"{n} {s.lower()}" for s, n in status.counts.items()))
                    bar.refresh()
                if status.done and not self._queued:
                    # An outcome written on one node may reach a shared filesystem a little
                    # after the scheduler reports the job ended: look again before calling
                    # a task lost.
                    if settle > 0 and any(t.state in ("LOST", "INTERRUPTED") for t in status.tasks):
                        settle -= 1
                        time.sleep(poll_s)
                        continue
                    self._reap_local()
                    return status
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise HarnessError(
                        f"tasks still active after {timeout_s:.0f}s:\n{status.format()}", self.dir)
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()


def _run_debug_job(job) -> None:
    """Run a debug-cluster job now. pdb opens on an error only when stdin is a terminal."""
    if sys.stdin is not None and sys.stdin.isatty():
        with contextlib.suppress(Exception):
            job.wait()
    else:
        job.exception()  # runs the task, catching its error (the status file records it)


def _compact(ids: Sequence[str]) -> str:
    if len(ids) <= 4:
        return ", ".join(ids)
    return f"{ids[0]} ... {ids[-1]} ({len(ids)} jobs)"
