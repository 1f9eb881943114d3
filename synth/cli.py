"""`harness synth ...`: generate the synthetic inside-out city, list presets, run the probe."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.common import data_root_option


@click.group("synth")
def synth_group() -> None:
    """The synthetic inside-out city (Amsterdam-XXXL layout, made locally)."""


@synth_group.command("city")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Dataset root to write (raw/..., ADEChallengeData2016/...).",
)
@click.option(
    "--preset", default="demo", show_default=True, help="Size preset (see `harness synth presets`)."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="Rendering processes (default: the preset's); the output does not depend on it.",
)
@click.option("--force", is_flag=True, help="Replace a different city already in --out.")
@click.option(
    "--register",
    is_flag=True,
    help="Also register its splits (as `harness splits prepare --root OUT --prefix PREFIX`).",
)
@click.option(
    "--prefix", default="synth-", show_default=True, help="Split name prefix for --register."
)
@data_root_option()
def city_command(
    out_dir: Path,
    preset: str,
    seed: int,
    workers: int | None,
    force: bool,
    register: bool,
    prefix: str,
    data_root: Path | None,
) -> None:
    """Generate the synthetic city under OUT (skipped when already complete)."""
    from synth import make_city

    info = make_city(out_dir, preset, seed, workers=workers, force=force)
    counts = info.counts
    click.echo(
        f"synthetic city {info.preset} (seed {info.seed}) in {info.root}: "
        f"{counts['database']} database images at {counts['places']} places, "
        f"queries: "
        + ", ".join(
            f"{k} {counts[k]}"
            for k in ("ams30k_train", "ams30k_val", "ams30k_test", "outdoor", "indoor1", "indoor2")
        )
        + f"; ADE20k: {counts['ade_training']} training, {counts['ade_validation']} validation"
    )
    if register:
        from harness.splits import prepare_builtin_splits

        for outcome in prepare_builtin_splits(info.root, prefix=prefix, data_root=data_root):
            if outcome.registered:
                click.echo(f"registered {outcome.name} -> {outcome.path}")
    else:
        click.echo(
            f"register its splits with: harness splits prepare --root {info.root} --prefix synth-"
        )


@synth_group.command("presets")
def presets_command() -> None:
    """List the size presets."""
    from synth.presets import get_preset, list_presets

    for name in list_presets():
        config = get_preset(name)
        queries = (
            config.queries_train
            + config.queries_val
            + config.queries_test
            + config.queries_outdoor
            + 2 * config.queries_indoor
        )
        click.echo(
            f"{name:8s} {config.image_width}x{config.image_height}  {config.num_streets} streets, "
            f"{config.num_places} places, {config.num_database} database images, "
            f"{queries} queries, "
            f"{config.ade_train + config.ade_val} ADE20k scenes"
        )


@synth_group.command("probe")
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A generated city (its splits registered with --prefix).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the probe feature files are written.",
)
@click.option(
    "--kind", type=click.Choice(["pixels", "hist", "both"]), default="hist", show_default=True
)
@click.option("--prefix", default="synth-", show_default=True)
@data_root_option()
def probe_command(
    root: Path, out_dir: Path, kind: str, prefix: str, data_root: Path | None
) -> None:
    """Evaluate the training-free probe descriptor and print the Markdown table."""
    from synth.probe import format_table, probe_table

    rows = probe_table(root, data_root, out_dir, prefix=prefix, kind=kind)
    click.echo(format_table(rows, f"probe-{kind}"))


commands = [synth_group]
