"""What the schedulers say about jobs: SLURM through ``sacct`` (and ``squeue``), local runs
through their process.

State names are SLURM's (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``,
``TIMEOUT``, ``OUT_OF_MEMORY``, ``NODE_FAIL``, ``PREEMPTED``...) plus a few of our own:
``QUEUED`` (a local task waiting for a free slot), ``SUBMITTED`` (not yet in ``sacct``, which
lags submission by seconds), ``NOT_SUBMITTED``, ``INTERRUPTED`` (a local process that ended
without an outcome) and ``LOST`` (a job that ended, or vanished, without an outcome).
"""

from __future__ import annotations

import logging
import subprocess
from typing import Iterable

logger = logging.getLogger(__name__)

#: States of a task that still has to finish (SLURM's names plus our own QUEUED/SUBMITTED).
ACTIVE_STATES = frozenset({
    "QUEUED", "SUBMITTED", "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING",
})
#: Terminal states other than COMPLETED: the task can be resubmitted alone.
PROBLEM_STATES = frozenset({
    "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "REVOKED", "INTERRUPTED", "LOST", "NOT_SUBMITTED",
})
#: A submitted job that neither sacct nor squeue lists after this long is gone.
VANISHED_AFTER_S = 60.0


def split_array_id(job_id: str) -> tuple[str, str | None]:
    parent, sep, task = job_id.partition("_")
    return parent, (task if sep else None)


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """``sacct`` states of SLURM jobs and array tasks, in one call.

    Jobs that ``sacct`` does not list yet (it lags submission by seconds) are absent. Pending
    array ranges (``12_[3-7%2]``) are expanded.
    """
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    parents = sorted({split_array_id(j)[0] for j in job_ids})
    command = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(parents)]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("sacct failed (%s); states unknown for now", exc)
        return {}
    return parse_sacct(output)


def slurm_queue_states(job_ids: Iterable[str]) -> dict[str, str]:
    """``squeue`` states (queued and running jobs only), for jobs ``sacct`` does not list."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    parents = sorted({split_array_id(j)[0] for j in job_ids})
    command = ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(parents)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("squeue failed (%s)", exc)
        return {}
    # squeue exits non-zero for ids it no longer knows: that is an answer too.
    return parse_sacct(result.stdout)


def parse_sacct(text: str) -> dict[str, str]:
    """``JobID|State`` lines of ``sacct -P -X`` -> {job id: state}; pending array ranges
    (``12_[3-7%2]``) are expanded and ``CANCELLED by 0`` reads ``CANCELLED``."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        raw_id, raw_state = line.split("|", 1)
        state = raw_state.split()[0] if raw_state.strip() else "UNKNOWN"
        parent, task = split_array_id(raw_id.strip())
        if task and task.startswith("["):
            for number in _expand_range(task.strip("[]").split("%")[0]):
                states.setdefault(f"{parent}_{number}", state)
        else:
            # An array task listed on its own line is newer than a pending range holding it.
            states[raw_id.strip()] = state
    return states


def _expand_range(text: str) -> list[int]:
    numbers: list[int] = []
    for piece in text.split(","):
        if not piece:
            continue
        step = 1
        if ":" in piece:
            piece, step_text = piece.split(":", 1)
            step = int(step_text)
        if "-" in piece:
            low, high = piece.split("-", 1)
            numbers.extend(range(int(low), int(high) + 1, step))
        else:
            numbers.append(int(piece))
    return numbers


def pid_running(job_id: str) -> bool:
    """Whether the local job ``job_id`` (the pid of submitit's controller) still runs."""
    import psutil

    try:
        process = psutil.Process(int(job_id))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # A recycled pid belongs to some other program.
        return any("submitit" in part for part in process.cmdline())
    except (ValueError, psutil.Error):
        return False
