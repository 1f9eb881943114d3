"""`harness eval`: exact evaluation of feature files (or a method's features) on a split.

Work modules are imported inside the commands: the CLI imports every command module at
start-up, and `harness --help` must not load numpy, h5py or the search.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from harness.commands.common import data_root_option
from harness.options import parse_option_pairs

logger = logging.getLogger(__name__)

FEATURE_PROVIDER_GROUP = "harness.feature_providers"


def _parse_ints(value: str | None, what: str):
    if value is None:
        return None
    try:
        numbers = tuple(int(part) for part in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(
            f"expected integers like 1,5,10, got {value!r}", param_hint=what
        ) from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("must be positive integers", param_hint=what)
    return numbers


def feature_provider():
    """The installed ``harness.feature_providers`` entry point (the ``methods`` extra)."""
    from importlib import metadata

    from harness.errors import HarnessError

    entries = list(metadata.entry_points(group=FEATURE_PROVIDER_GROUP))
    if not entries:
        raise HarnessError(
            "--method needs a feature provider, and none is installed: install the `methods` "
            "extra (pip install 'iovpr-harness[methods]'), or extract features and pass --features"
        )
    if len(entries) > 1:
        names = ", ".join(sorted(e.name for e in entries))
        logger.info("several feature providers installed (%s); using %s", names, entries[0].name)
    try:
        return entries[0].load()
    except ImportError as exc:
        raise HarnessError(
            f"the feature provider {entries[0].value} cannot be imported ({exc}); "
            "install the `methods` extra (torch, torchvision)"
        ) from None


def format_scores(result) -> str:
    """A small text table of the record's scores."""
    protocol = result.protocol
    lines = [
        f"{result.method} on {result.split}: {result.counts.queries} queries, "
        f"{result.counts.database} database images, radius {protocol.radius_m:g} m"
        + (", spatial NMS" if protocol.spatial_nms else "")
        + (", ranking submission (re-ranking)" if protocol.metric == "ranking" else ""),
    ]
    if result.counts.queries_without_positive:
        lines.append(
            f"{result.counts.queries_without_positive} queries have no positive "
            f"(policy {protocol.no_positive}: {result.counts.evaluated_queries} evaluated)"
        )
    width = max(len(name) for name in result.scores)
    lines.append(f"{'metric':<{width}}  {'value':>7}")
    for name, value in result.scores.items():
        bounds = result.interval(name)
        shown = "" if bounds is None else f"  [{100 * bounds[0]:6.2f}, {100 * bounds[1]:6.2f}]"
        lines.append(f"{name:<{width}}  {100 * value:6.2f}%{shown}")
    if result.bootstrap:
        lines.append(f"[low, high]: {100 * result.bootstrap['confidence']:g} % bootstrap interval "
                     f"over queries ({result.bootstrap['resamples']} resamples, "
                     f"seed {result.bootstrap['seed']})")
    return "\n".join(lines)


@click.command("eval")
@click.option("--features", "features", multiple=True, type=click.Path(path_type=Path),
              help="Feature file or directory of .h5 shards (repeatable).")
@click.option("--split", "split_names", required=True, multiple=True,
              help="Split name (or a .split.npz path). Repeatable with --method: splits that "
                   "share a database (Indoor-Ams 1/2, Outdoor-Ams) extract it once.")
@data_root_option()
@click.option(
    "--recall-ns", default=None, help="Recall@N cut-offs, e.g. 1,5,10 (default: the split's)."
)
@click.option(
    "--map-k", type=click.IntRange(min=1), default=None, help="mAP@K depth (default: max N)."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result record here (atomically).")
@click.option("--predictions", "predictions_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Ranked predictions sidecar (default: beside --json).")
@click.option("--no-predictions", is_flag=True, help="Do not write the predictions sidecar.")
@click.option("--ngpu", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="-1 every GPU faiss sees, 0 CPU only, n at most n GPUs.")
@click.option(
    "--cpu-backend",
    type=click.Choice(["auto", "numpy", "faiss", "bf16"]),
    default="auto",
    show_default=True,
    help="CPU search backend (bf16: exact bf16 shortlist re-scored in fp32, needs torch; "
    "auto takes it from 1M database rows where this machine's measured bf16 GEMM runs 1.6x "
    "its float32).",
)
@click.option("--block-rows", type=click.IntRange(min=1), default=None,
              help="Database rows per streamed block (default: ~128 MB).")
@click.option("--no-value-checks", is_flag=True,
              help="Skip the finite/zero/norm checks of streamed descriptors.")
@click.option(
    "--method",
    default=None,
    help="Extract this method's features with the installed provider (instead of --features).",
)
@click.option("--weights", default=None, help="Weights for --method.")
@click.option(
    "--method-option", "method_options", multiple=True, help="key=value for --method (repeatable)."
)
@click.option(
    "--features-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where --method writes/reuses features (default: <data-root>/features; the provider "
    "adds <method>-<fingerprint>/<split>/).",
)
@click.option("--device", default=None, help="Device for --method extraction (e.g. cuda, cpu).")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Batch size for --method."
)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Network precision of --method extraction (default fp32, strict also on CUDA; "
                   "bf16/fp16 autocast is faster). Features of another precision are extracted "
                   "anew, and the record states it.")
@click.option("--no-checksums", is_flag=True,
              help="Do not record sha256 of the feature files (saves ~10% CPU at scale).")
@click.option("--rehash", is_flag=True,
              help="Hash every feature file anew, even one whose sha256 is remembered from an "
                   "earlier evaluation (same inode, size, mtime and ctime).")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.option("--bootstrap-resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Query resamples of the confidence intervals (0: none).")
@click.option("--bootstrap-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the resampling (same seed, same intervals).")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.95, show_default=True, help="Confidence of the intervals.")
@click.option("--query-conditions", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV name,condition of the queries (e.g. Tokyo 24/7 day/sunset/night).")
@click.option("--window-masks", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of window masks <query name>.png (default: the true masks beside the "
                   "query folder, query_masks/, when the dataset has them).")
@click.option("--window-masks-kind", type=click.Choice(["true", "predicted"]), default="predicted",
              show_default=True, help="What --window-masks holds (recorded with the breakdown).")
@click.option("--ranking", "ranking_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="A ranking file (text 'query db1 db2 ...' lines, MSLS format included, or "
                   "HDF5) instead of features: re-ranking methods.")
@click.option("--predictions-out", "predictions_out",
              type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the ranking by name: .csv (names, metres, first positive rank) "
                   "or .txt (MSLS 'query_key db_key ...' lines).")
def eval_command(features, split_names, data_root, recall_ns, map_k, json_path, predictions_path,
                 no_predictions, ngpu, cpu_backend, block_rows, no_value_checks, method, weights,
                 method_options, features_dir, device, batch_size, precision, no_checksums,
                 rehash, progress, bootstrap_resamples, bootstrap_seed, confidence,
                 query_conditions, window_masks, window_masks_kind, ranking_path,
                 predictions_out) -> None:
    """Evaluate features on a split exactly; print Recall@N and write a JSON record.

    Give --features (files or directories; one file holds the queries, the database may be
    sharded), --method to have the installed provider extract them first, or --ranking.
    With --method, --split may be repeated; --json, --predictions and --predictions-out then
    need a {split} placeholder.
    """
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.splits import default_data_root, get_split

    if bool(features) + bool(method) + bool(ranking_path) != 1:
        raise click.UsageError("give one of --features, --method or --ranking")
    if predictions_path and no_predictions:
        raise click.UsageError("--predictions and --no-predictions contradict each other")
    method_only = (weights, method_options, features_dir, device, batch_size, precision)
    if any(method_only) and not method:
        raise click.UsageError(
            "--weights/--method-option/--features-dir/--device/--batch-size/--precision "
            "need --method")
    split_names = tuple(dict.fromkeys(split_names))
    if len(split_names) > 1:
        if not method:
            raise click.UsageError(
                "several --split need --method (feature files belong to one split)")
        for value, flag in ((json_path, "--json"), (predictions_path, "--predictions"),
                            (predictions_out, "--predictions-out")):
            if value is not None and "{split}" not in str(value):
                raise click.UsageError(
                    f"with several --split, {flag} needs a {{split}} placeholder")
    options = parse_option_pairs(method_options)
    config = EvalConfig(
        recall_ns=_parse_ints(recall_ns, "--recall-ns"),
        map_k=map_k,
        ngpu=ngpu,
        cpu_backend=cpu_backend,
        block_rows=block_rows,
        validate=not no_value_checks,
        checksums=not no_checksums,
        reuse_digests=not rehash,
        progress=progress,
        bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=bootstrap_seed,
        bootstrap_confidence=confidence,
        query_conditions=None if query_conditions is None else str(query_conditions),
        window_masks=None if window_masks is None else str(window_masks),
        window_masks_kind=window_masks_kind,
    )
    for split in [get_split(name, data_root) for name in split_names]:
        paths = features
        if method:
            provide = feature_provider()
            # the provider adds <method>-<fingerprint>/... below this folder
            out_dir = features_dir or (data_root or default_data_root()) / "features"
            # precision only when asked for: a provider of another package may not know it
            extra = {} if precision is None else {"precision": precision}
            paths = tuple(provide(
                method=method, split=split, out_dir=Path(out_dir), weights=weights,
                options=options, device=device, batch_size=batch_size, **extra,
            ))
        if ranking_path is not None:
            from harness.sources.rankings import evaluate_ranking

            result = evaluate_ranking(ranking_path, split, config)
        else:
            result = evaluate(paths, split, config, method=method)
        _report(result, split, no_predictions=no_predictions,
                json_path=_for_split(json_path, split.name),
                predictions_path=_for_split(predictions_path, split.name),
                predictions_out=_for_split(predictions_out, split.name))


def _for_split(path: Path | None, split_name: str) -> Path | None:
    return None if path is None else Path(str(path).replace("{split}", split_name))


def _report(result, split, *, no_predictions, json_path, predictions_path,
            predictions_out) -> None:
    """Print the scores and write the record, sidecar and named predictions asked for."""
    if predictions_out is not None:
        from harness.sources.predictions import write_named_predictions

        write_named_predictions(predictions_out, result, split)
    click.echo(format_scores(result))
    if predictions_out is not None:
        click.echo(f"wrote {predictions_out}")
    if json_path is not None:
        if no_predictions:
            import dataclasses

            result = dataclasses.replace(result, prediction_data=None)
        result.write(json_path, predictions_path=predictions_path)
        click.echo(f"wrote {json_path}")
    elif predictions_path is not None:
        from harness.results import write_predictions

        write_predictions(predictions_path, result.prediction_data, result=result)
        click.echo(f"wrote {predictions_path}")


commands = [eval_command]
