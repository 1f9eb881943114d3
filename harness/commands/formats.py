"""`harness features import` and `harness predictions show`: other tools' formats.

Work modules are imported inside the commands: the CLI imports every command module at
start-up, and `harness --help` must not load numpy, h5py or the search.
"""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.common import data_root_option


@click.group("features")
def features_group() -> None:
    """Convert descriptors written by other tools into a feature file."""


@features_group.command("import")
@click.option("--split", "split_name", required=True, help="Split name (or a .split.npz path).")
@click.option("--vme-queries", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="VPR-methods-evaluation queries_descriptors.npy (with --vme-database).")
@click.option("--vme-database", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="VPR-methods-evaluation database_descriptors.npy.")
@click.option("--hloc", "hloc_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An hloc global-descriptor HDF5 file (/<image name>/global_descriptor).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The feature file to write (.h5, atomically).")
@click.option("--method-name", "method", required=True, help="Method name stored in the file.")
@data_root_option()
def import_command(split_name, vme_queries, vme_database, hloc_path, out, method,
                   data_root) -> None:
    """Write a feature file from VPR-methods-evaluation .npy files or an hloc HDF5 file."""
    from harness.sources.descriptors import (
        import_hloc_descriptors,
        import_vme_descriptors,
    )
    from harness.splits import get_split

    vme = bool(vme_queries or vme_database)
    if vme == bool(hloc_path):
        raise click.UsageError("give --vme-queries with --vme-database, or --hloc")
    if vme and not (vme_queries and vme_database):
        raise click.UsageError("--vme-queries and --vme-database go together")
    split = get_split(split_name, data_root)
    if vme:
        path = import_vme_descriptors(vme_queries, vme_database, split, out, method=method)
    else:
        path = import_hloc_descriptors(hloc_path, split, out, method=method)
    click.echo(f"wrote {path}: {split.num_queries} queries, {split.num_database} database "
               f"images of split {split.name}")


@click.group("predictions")
def predictions_group() -> None:
    """Look at the ranked predictions of an evaluation record."""


@predictions_group.command("show")
@click.argument("record", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--query", required=True, help="Query image name (or its MSLS-style key).")
@data_root_option()
def show_command(record, query, data_root) -> None:
    """Show the ranking of one query of RECORD (a `harness eval --json` record)."""
    from harness.sources.predictions import describe_query, load_result_predictions

    for line in describe_query(load_result_predictions(record, data_root), query):
        click.echo(line)


commands = [features_group, predictions_group]
