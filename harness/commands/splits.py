"""`harness splits ...`: prepare the built-ins, import others, list and show registered splits.

Work modules are imported inside the commands: the CLI imports every command module at
start-up, and `harness --help` must not load numpy, h5py or the search.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from harness.commands.common import data_root_option

logger = logging.getLogger(__name__)



def _parse_recall_ns(value: str | None):
    if value is None:
        return None
    try:
        numbers = tuple(int(part) for part in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected integers like 1,5,10, got {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("recall Ns must be positive integers")
    return numbers


@click.group("splits")
def splits_group() -> None:
    """Prepare, import, list and show evaluation splits."""


@splits_group.command("prepare")
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset root: raw/*.mat (Amsterdam-XXXL, Pitts, Tokyo), the downloader's datasets/ "
    "folder, or the folder holding MSLS's train_val/.",
)
@click.option("--prefix", default="", help="Prefix for the registered names, e.g. 'synth-'.")
@click.option("--only", "only", multiple=True, help="Only this built-in (repeatable).")
@data_root_option()
def prepare_command(root: Path, prefix: str, only: tuple[str, ...], data_root: Path | None) -> None:
    """Register every built-in split whose .mat files or dataset folders exist under ROOT."""
    from harness.sources.builtin_folders import prepare_all

    outcomes = prepare_all(root, prefix=prefix, data_root=data_root, names=only or None)
    for outcome in outcomes:
        if outcome.registered:
            click.echo(f"registered {outcome.name} -> {outcome.path}")
        else:
            click.echo(f"skipped    {outcome.name}: {outcome.reason}")
    if not any(o.registered for o in outcomes):
        click.echo(f"no built-in split found under {root}", err=True)


@splits_group.command("import")
@click.option("--name", required=True, help="Name to register the split under.")
@click.option(
    "--mat",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="One dbStruct .mat with both queries and database.",
)
@click.option(
    "--queries-mat",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The .mat whose qImage/utmQ are the queries.",
)
@click.option(
    "--database-mat",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The .mat whose dbImage/utmDb are the database.",
)
@click.option(
    "--folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A VPR-datasets-downloader folder holding database/ and queries/ (e.g. images/test).",
)
@click.option(
    "--database-folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --queries-folder: downloader-style image folders given one by one.",
)
@click.option(
    "--queries-folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --database-folder (e.g. SF-XL's queries_v1).",
)
@click.option(
    "--msls",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An MSLS root holding train_val/ (official layout and protocol).",
)
@click.option("--cities", default="cph,sf", show_default=True, help="MSLS cities (with --msls).")
@click.option(
    "--radius-m",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Positive radius in metres (default: the .mat files' posDistThr; 25 for folders).",
)
@click.option("--recall-ns", default=None, help="Default Recall@N cut-offs, e.g. 1,5,10,20.")
@click.option(
    "--spatial-nms/--no-spatial-nms",
    default=False,
    help="Keep only the first prediction per database place (Tokyo 24/7).",
)
@click.option(
    "--no-positive",
    type=click.Choice(["miss", "exclude"]),
    default="miss",
    show_default=True,
    help="Queries without a positive count as misses or are excluded.",
)
@click.option(
    "--query-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the query images.",
)
@click.option(
    "--database-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the database images.",
)
@click.option("--description", default="", help="One line describing the split.")
@data_root_option()
def import_command(
    name,
    mat,
    queries_mat,
    database_mat,
    folder,
    database_folder,
    queries_folder,
    msls,
    cities,
    radius_m,
    recall_ns,
    spatial_nms,
    no_positive,
    query_root,
    database_root,
    description,
    data_root,
) -> None:
    """Register a split from NetVLAD .mat file(s), a downloader-layout folder or MSLS."""
    from harness.splits import DEFAULT_RECALL_NS, import_split

    sources = [bool(mat or queries_mat or database_mat), bool(folder or database_folder
                                                              or queries_folder), bool(msls)]
    if sum(sources) != 1:
        raise click.UsageError("give one source: --mat/--queries-mat/--database-mat, "
                               "--folder/--database-folder/--queries-folder, or --msls")
    if sources[1] or sources[2]:
        from harness.sources.downloader import import_folder_split
        from harness.sources.msls import import_msls_split

        if query_root or database_root:
            raise click.UsageError("--query-root/--database-root are the folders themselves here")
        if sources[2]:
            if spatial_nms or no_positive != "miss":
                raise click.UsageError("MSLS has its own protocol (no NMS; queries without a "
                                       "positive are left out)")
            path = import_msls_split(
                name, msls, cities=[c for c in cities.replace(",", " ").split()],
                threshold_m=radius_m or 25.0, recall_ns=_parse_recall_ns(recall_ns),
                description=description, data_root=data_root)
        else:
            path = import_folder_split(
                name, folder, database_folder=database_folder, queries_folder=queries_folder,
                radius_m=radius_m or 25.0, recall_ns=_parse_recall_ns(recall_ns),
                spatial_nms=spatial_nms, no_positive=no_positive, description=description,
                data_root=data_root)
        click.echo(f"registered {name} -> {path}")
        return
    path = import_split(
        name,
        mat=mat,
        queries_mat=queries_mat,
        database_mat=database_mat,
        radius_m=radius_m,
        recall_ns=_parse_recall_ns(recall_ns) or DEFAULT_RECALL_NS,
        spatial_nms=spatial_nms,
        no_positive=no_positive,
        query_root=query_root or "",
        database_root=database_root or "",
        description=description,
        data_root=data_root,
    )
    click.echo(f"registered {name} -> {path}")


@splits_group.command("list")
@data_root_option()
def list_command(data_root: Path | None) -> None:
    """List the registered splits: counts, radius, queries without a positive, checksum."""
    from harness.splits import list_splits, split_path, summarize_split

    names = list_splits(data_root)
    if not names:
        folder = split_path("x", data_root).parent
        click.echo(f"no splits registered under {folder}; run `harness splits prepare`")
        return
    header = (
        f"{'name':<24} {'queries':>9} {'database':>10} {'radius':>7} {'no-pos':>7} {'nms':>4}"
        "  sha256"
    )
    click.echo(header)
    for name in names:
        summary = summarize_split(split_path(name, data_root))
        no_positive = (
            "?"
            if summary.num_queries_without_positive is None
            else summary.num_queries_without_positive
        )
        click.echo(
            f"{summary.name:<24} {summary.num_queries:>9} {summary.num_database:>10} "
            f"{summary.radius_m:>6g}m {no_positive:>7} "
            f"{'yes' if summary.spatial_nms else 'no':>4}  "
            f"{summary.sha256[:12]}"
        )


@splits_group.command("show")
@click.argument("name")
@data_root_option()
def show_command(name: str, data_root: Path | None) -> None:
    """Show one split (a registered name or a .split.npz path) in detail."""
    import numpy as np

    from harness.ground_truth import nearest_database_distance_m
    from harness.splits import get_split

    split = get_split(name, data_root)
    positives = split.positives
    counts = positives.counts
    lines = [
        ("name", split.name),
        ("description", split.description),
        ("queries", f"{split.num_queries}"),
        ("database", f"{split.num_database}"),
        ("radius", f"{split.radius_m:g} m (boundary included)"),
        ("recall Ns", ",".join(map(str, split.recall_ns))),
        ("spatial NMS", "yes" if split.spatial_nms else "no"),
        ("no positive", f"{positives.num_without_positive} queries, policy: {split.no_positive}"),
    ]
    if split.num_queries:
        lines.append(
            (
                "positives",
                f"min {counts.min()}, median {np.median(counts):g}, max {counts.max()} per query",
            )
        )
    without = np.flatnonzero(counts == 0)
    if without.size and split.num_database:
        distances = nearest_database_distance_m(split.database_utm, split.query_utm[without])
        lines.append(
            (
                "nearest db",
                f"queries without positive are {distances.min():.1f}-"
                f"{distances.max():.1f} m from the nearest database image",
            )
        )
    from harness.canonical import canonical_splits

    pin = canonical_splits().get(split.name)
    if pin is not None:
        lines.append(("canonical", f"pinned ({pin.counts_text}, {pin.source})"))
    lines += [
        ("query root", split.query_root or "-"),
        ("database root", split.database_root or "-"),
        ("source", "; ".join(split.source) or "-"),
        ("sha256", split.sha256),
    ]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")


commands = [splits_group]
