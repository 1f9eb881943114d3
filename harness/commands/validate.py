"""`harness validate FEATURES... --split S`: check feature files against a split.

Work modules are imported inside the commands: the CLI imports every command module at
start-up, and `harness --help` must not load numpy, h5py or the search.
"""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.common import data_root_option


@click.command("validate")
@click.argument("features", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--split", "split_name", required=True, help="Split name (or a .split.npz path).")
@data_root_option()
@click.option(
    "--no-values",
    is_flag=True,
    help="Skip the descriptor scan (finite values, zero rows, norms); names and shapes only.",
)
@click.pass_context
def validate_command(
    ctx: click.Context,
    features: tuple[Path, ...],
    split_name: str,
    data_root: Path | None,
    no_values: bool,
) -> None:
    """Check FEATURES (files or directories of .h5 shards) against a split.

    Exit 0 when the files are valid (warnings are printed), 2 with one line per problem.
    """
    from harness.features import expand_feature_paths
    from harness.splits import get_split
    from harness.validate import validate_features

    split = get_split(split_name, data_root)
    paths = expand_feature_paths(features)
    report = validate_features(paths, split, check_values=not no_values)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.problems:
        for problem in report.problems:
            click.echo(f"error: {problem}", err=True)
        ctx.exit(2)
    database_rows = sum(part.count for part in report.database)
    click.echo(
        f"ok: {len(paths)} file(s) valid for split {split.name}: {report.query.count} queries, "
        f"{database_rows} database rows in {len(report.database)} file(s), dim {report.dim}"
    )


commands = [validate_command]
