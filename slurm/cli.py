"""``harness slurm ...``: launch sharded extraction / evaluation and training, follow launches.

Every launching command takes ``--cluster slurm|local|debug``, ``--profile`` (a TOML file or
the name of one in ``slurm/profiles/``), ``--log-dir`` and resource options; options given
override the profile. The commands only parse and delegate (to :mod:`slurm.extract`,
:mod:`slurm.evaluate`, :mod:`slurm.train` and :mod:`slurm.status`); this module imports
neither submitit nor torch at import time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from harness.commands.common import data_root_option
from harness.options import parse_option_pairs

logger = logging.getLogger(__name__)


def _resource_options(command):
    """Cluster, profile, log directory and the resources every launching command accepts."""
    options = [
        click.option("--cluster", type=click.Choice(["slurm", "local", "debug"]), default=None,
                     help="Where tasks run (default: the profile's, else slurm if sbatch exists, "
                          "else local)."),
        click.option("--profile", default=None,
                     help="Resource profile: a TOML file or the name of one in slurm/profiles/."),
        click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Shared folder for launch records and logs (default: the profile's, "
                          "$HARNESS_SLURM_LOGS, or <data root>/slurm)."),
        click.option("--partition", default=None, help="SLURM partition."),
        click.option("--gpus", type=click.IntRange(min=0), default=None, help="GPUs per node."),
        click.option("--cpus", type=click.IntRange(min=1), default=None, help="CPUs per task."),
        click.option("--mem-gb", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Memory per node (GB)."),
        click.option("--time", "time_limit", default=None,
                     help="Time limit: minutes, HH:MM:SS or D-HH:MM:SS."),
        click.option("--account", default=None, help="SLURM account."),
        click.option("--qos", default=None, help="SLURM QOS."),
        click.option("--constraint", default=None, help="SLURM node constraint (features)."),
        click.option("--array-parallelism", type=click.IntRange(min=1), default=None,
                     help="Array tasks running at once (also caps local runs)."),
        click.option("--wait/--no-wait", default=None,
                     help="Wait for the tasks (default; local runs always wait)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _setup(kind: str, values: dict) -> tuple[str, object, Path, bool]:
    """(cluster, Resources, log_dir, wait) from the common options (removed from ``values``)."""
    from slurm.executor import load_profile, resolve_cluster, resolve_log_dir

    profile = load_profile(values.pop("profile"))
    cluster = resolve_cluster(values.pop("cluster"), profile)
    log_dir = resolve_log_dir(values.pop("log_dir"), profile)
    overrides = {key: values.pop(key) for key in (
        "partition", "gpus", "cpus", "mem_gb", "account", "qos", "constraint", "array_parallelism")}
    overrides["time_min"] = values.pop("time_limit")
    resources = profile.resources(kind, {k: v for k, v in overrides.items() if v is not None})
    wait = values.pop("wait")
    wait = True if wait is None or cluster != "slurm" else wait
    return cluster, resources, log_dir, wait


def _parse_ints(text: str | None):
    if text is None:
        return None
    try:
        numbers = tuple(int(p) for p in text.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected integers like 1,5,10, got {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("must be positive integers")
    return numbers


def _echo_launch(launch, verb: str) -> None:
    status = launch.status()
    click.echo(status.format())
    click.echo(f"{verb}: {launch.dir}")
    click.echo(f"follow it with: harness slurm status {launch.dir}")


@click.group("slurm")
def slurm_group():
    """Run extraction, evaluation and training as SLURM jobs (or locally, the same way)."""


@slurm_group.command("extract")
@click.option("--method", "method_name", required=True, help="Registered method name.")
@click.option("--split", "split_name", required=True, help="Split name (or a .split.npz path).")
@data_root_option()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder for query.h5 and database-<i>-of-<n>.h5 (shared).")
@click.option("--shards", type=click.IntRange(min=1), required=True,
              help="Database shards (array tasks).")
@click.option("--weights", default=None, help="Checkpoint of the method.")
@click.option("--option", "method_options", multiple=True,
              help="Method option key=value (repeatable).")
@click.option("--device", default=None, help="cuda, cpu (default: CUDA when available).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Data-loader workers.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Network precision (fp32 strict; bf16/fp16 autocast).")
@_resource_options
def extract_command(method_name, split_name, data_root, out, shards, weights, method_options,
                    device, batch_size, workers, dtype, precision, **common):
    """Extract a method's features of a split as a job array, one database shard per task.

    Shards already complete in --out are skipped, so the same command resumes an extraction
    after failed, cancelled or timed-out tasks.
    """
    from harness.splits import get_split
    from slurm.extract import launch_extract

    cluster, resources, log_dir, wait = _setup("extract", common)
    split = get_split(split_name, data_root)
    launch = launch_extract(
        method_name, split, out, shards=shards, cluster=cluster, log_dir=log_dir,
        resources=resources, weights=weights, options=parse_option_pairs(method_options),
        device=device, batch_size=batch_size, workers=workers, dtype=dtype,
        precision=precision, wait=wait,
        progress=True,
    )
    _echo_launch(launch, "launch")
    if wait:
        click.echo(f"features: {Path(launch.params['out'])} (harness slurm eval --features "
                   f"{launch.params['out']} --split {split.name} --shards {shards})")


@slurm_group.command("eval")
@click.option("--features", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Feature file or folder of shard files (repeatable).")
@click.option("--split", "split_name", required=True, help="Split name (or a .split.npz path).")
@data_root_option()
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Tasks (default: one per database file); more tasks than files cut the "
                   "files into row ranges (one 6.4M-row file can be split too).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the merged record here (default: <launch>/result.json).")
@click.option("--predictions", "predictions_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Predictions sidecar (default: beside the record).")
@click.option("--recall-ns", default=None, help="Recall@N cut-offs (default: the split's).")
@click.option("--map-k", type=click.IntRange(min=1), default=None, help="mAP@K depth.")
@click.option("--ngpu", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="GPUs per task for the search (-1 all visible, 0 CPU).")
@click.option("--cpu-backend", type=click.Choice(["auto", "numpy", "faiss"]), default="auto",
              show_default=True)
@click.option("--block-rows", type=click.IntRange(min=1), default=None,
              help="Database rows per streamed block.")
@click.option("--no-value-checks", is_flag=True, help="Skip the finite/zero checks of descriptors.")
@click.option("--method", "method_name", default=None, help="Method name to record.")
@_resource_options
def eval_command(features, split_name, data_root, shards, json_path, predictions_path, recall_ns,
                 map_k, ngpu, cpu_backend, block_rows, no_value_checks, method_name, **common):
    """Evaluate sharded features: one task per database shard group, then an exact merge.

    The merged record equals `harness eval` on the same files (scores and predictions).
    With --no-wait (SLURM) a merge job runs after the last task; rerunning the command skips
    the shards already searched.
    """
    from harness.commands.evaluate import format_scores
    from harness.config import EvalConfig
    from harness.splits import get_split
    from slurm.evaluate import launch_eval, read_merged_result, result_path

    cluster, resources, log_dir, wait = _setup("eval", common)
    config = EvalConfig(recall_ns=_parse_ints(recall_ns), map_k=map_k, ngpu=ngpu,
                        cpu_backend=cpu_backend, block_rows=block_rows,
                        validate=not no_value_checks)
    split = get_split(split_name, data_root)
    launch = launch_eval(
        features, split, config, shards=shards, cluster=cluster, resources=resources,
        log_dir=log_dir, out=json_path, predictions=predictions_path, method=method_name,
        wait=wait, progress=True,
    )
    if wait:
        click.echo(format_scores(read_merged_result(launch)))
        click.echo(f"wrote {result_path(launch)}")
        click.echo(f"launch: {launch.dir}")
    else:
        _echo_launch(launch, "submitted")
        click.echo(f"the merge job writes {result_path(launch)}")


@slurm_group.command("train")
@click.option("--training", "training_name", default="sfrs", show_default=True,
              help="Registered training (netvlad, sfrs, ...).")
@click.option("--set", "settings", multiple=True,
              help="Training config key=value (repeatable), e.g. --set train_split=ams30k-train.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (checkpoints; last.pt is where a requeued job resumes).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="DDP processes on the node (default: one per GPU, or 1).")
@_resource_options
def train_command(training_name, settings, out_dir, processes, **common):
    """Train on one node with DDP, checkpointing; requeued on timeout or preemption.

    A requeued (or resubmitted) job resumes from <out-dir>/last.pt.
    """
    from slurm.train import launch_train

    cluster, resources, log_dir, wait = _setup("train", common)
    launch = launch_train(
        training_name, parse_option_pairs(settings), out_dir, cluster=cluster, resources=resources,
        log_dir=log_dir, processes=processes, wait=wait, progress=True,
    )
    _echo_launch(launch, "launch")


@slurm_group.command("status")
@click.argument("launch_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to list launches when no LAUNCH_DIR is given.")
@click.option("--profile", default=None, help="Profile whose log_dir to list.")
@click.option("--all", "all_tasks", is_flag=True, help="One line per task, not only problems.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(launch_dir, log_dir, profile, all_tasks, as_json):
    """Summarise a launch: per task state, job id and log file; or list the launches."""
    from slurm.executor import load_profile, resolve_log_dir
    from slurm.status import launch_status, list_launches

    if launch_dir is None:
        root = resolve_log_dir(log_dir, load_profile(profile))
        launches = list_launches(root)
        if as_json:
            rows = [{**s.__dict__, "launch_dir": str(s.launch_dir)} for s in launches]
            click.echo(json.dumps(rows, indent=2))
            return
        if not launches:
            click.echo(f"no launches under {root}")
        for summary in launches:
            click.echo(f"{summary.created}  {summary.kind:<8} {summary.cluster:<6} "
                       f"{summary.tasks:>4} tasks  {summary.launch_dir}")
        return
    status = launch_status(launch_dir)
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2, default=str))
    else:
        click.echo(status.format(all_tasks=all_tasks))


@slurm_group.command("resubmit")
@click.argument("launch_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tasks", default=None, help="Task indices, e.g. 3,5-7 (default: every task that "
                                            "failed, was cancelled or timed out).")
@click.option("--force", is_flag=True, help="Also rerun tasks that completed.")
@click.option("--cluster", type=click.Choice(["slurm", "local", "debug"]), default=None,
              help="Run them elsewhere this time.")
@click.option("--partition", default=None)
@click.option("--gpus", type=click.IntRange(min=0), default=None)
@click.option("--cpus", type=click.IntRange(min=1), default=None)
@click.option("--mem-gb", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--time", "time_limit", default=None, help="New time limit (e.g. after a TIMEOUT).")
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--constraint", default=None)
@click.option("--wait/--no-wait", default=None, help="Wait for them (default except on SLURM).")
def resubmit_command(launch_dir, tasks, force, cluster, wait, time_limit, **resources):
    """Resubmit tasks of a launch alone, optionally with other resources."""
    from slurm.status import parse_task_list, resubmit

    overrides = {k: v for k, v in resources.items() if v is not None}
    if time_limit is not None:
        overrides["time_min"] = time_limit
    launch = resubmit(launch_dir, parse_task_list(tasks), force=force, resources=overrides,
                      cluster=cluster, wait=wait, progress=True)
    click.echo(launch.status().format())


@slurm_group.command("cancel")
@click.argument("launch_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tasks", default=None, help="Task indices (default: every active task).")
def cancel_command(launch_dir, tasks):
    """Cancel the queued or running tasks of a launch."""
    from slurm.status import cancel, parse_task_list

    cancelled = cancel(launch_dir, parse_task_list(tasks))
    click.echo(f"asked {len(cancelled)} task(s) to stop: {','.join(map(str, cancelled)) or '-'}")


commands = [slurm_group]
