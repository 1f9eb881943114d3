"""Checkpointed DDP training on one node, requeued on timeout or preemption.

The job is one SLURM task per process (``tasks_per_node`` = GPUs, or ``processes``); each
process exports the torch distributed environment (``MASTER_ADDR``, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) from submitit's and runs
:func:`methods.train.registry.run_training`, which resumes from ``<out_dir>/last.pt``. The job
is a submitit ``Checkpointable`` (:class:`slurm.launch.CheckpointableTask`): on the timeout or
preemption signal it requeues itself, and the new run picks up the last checkpoint. A job that
failed can be resubmitted (``harness slurm resubmit``) and resumes the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from harness.errors import HarnessError
from slurm.executor import Resources
from slurm.launch import Launch, TaskSpec

logger = logging.getLogger(__name__)

KIND = "train"


def launch_train(
    training: str,
    settings: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    cluster: str,
    log_dir: str | os.PathLike,
    resources: Resources = Resources(),
    processes: int | None = None,
    wait: bool = True,
    progress: bool = False,
) -> Launch:
    """Launch (or resume) training ``training`` with config ``settings`` into ``out_dir``.

    Args:
        training: a registered training (``netvlad``, ``sfrs``, ...).
        settings: training config values (strings or JSON values); ``out_dir`` is set here.
        out_dir: run folder on a shared filesystem.
        cluster, log_dir, resources: see :mod:`slurm.executor`.
        processes: DDP processes (default: ``resources.gpus``, at least 1).
        wait: wait for the job (local runs always wait).

    Returns:
        The :class:`Launch` (one task; its output is the best checkpoint's path).
    """
    from methods.train.registry import training_config

    out_dir = Path(out_dir).expanduser().resolve()
    values = dict(settings)
    if "out_dir" in values and Path(values["out_dir"]).expanduser().resolve() != out_dir:
        raise HarnessError("give the run folder once (--out-dir), not also as out_dir")
    values["out_dir"] = str(out_dir)
    try:
        config = training_config(training, values)  # unknown keys fail here, with the valid ones
    except ValueError as exc:
        raise HarnessError(f"training {training}: {exc}") from None
    processes = processes or max(1, resources.gpus)
    if resources.gpus and processes != resources.gpus:
        raise HarnessError(
            f"{processes} processes for {resources.gpus} GPUs: use one process per GPU")
    params = {"training": training, "config": config.to_dict(), "processes": processes}
    identity = {"training": training, "out_dir": str(out_dir)}
    launch = Launch.create(
        log_dir, kind=KIND, label=f"{training}-{out_dir.name}", cluster=cluster,
        resources=resources, params=identity,
        tasks=[TaskSpec(label=f"{training} x{processes}", output=str(out_dir / "best.pt"))],
        runner="slurm.train:run_train", tasks_per_node=processes, checkpointable=True,
    )
    # The config may change between runs of the same folder where it does not change what is
    # learnt (device, workers...); the trainer itself refuses other changes on resume.
    launch.record["train"] = params
    launch.save()
    out_dir.mkdir(parents=True, exist_ok=True)
    status = launch.status()
    task = status.tasks[0]
    if task.active:
        logger.info("training already %s as job %s", task.state.lower(), task.job_id)
    else:
        launch.submit([0])
    if wait or cluster != "slurm":
        final = launch.wait(progress=progress)
        if not final.all_completed:
            raise HarnessError(f"training did not complete:\n{final.format()}", launch.dir)
    return launch


def export_distributed_environment() -> None:
    """Set the torch.distributed variables of this submitit task (a no-op for one process)."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks <= 1:
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def run_train(launch: Launch, index: int) -> dict:
    """The training task: every process of the job runs this (rank 0 records the outcome)."""
    from methods.train.registry import run_training

    params = launch.record["train"]
    export_distributed_environment()
    best = run_training(params["training"], params["config"])
    return {"best": str(best)}
