"""CLI commands the leaderboard adds to ``harness`` (entry point ``leaderboard.cli:commands``).

``harness submit ...`` and ``harness leaderboard build|check``. Options are parsed here and
everything else is delegated; heavy modules are imported inside the commands so that
``harness --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.common import data_root_option

DEFAULT_RESULTS = Path("leaderboard") / "results"
DEFAULT_OUT = Path("leaderboard")

_results_option = click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_RESULTS,
    show_default=True,
    help="The leaderboard's results folder.",
)


@click.command("submit")
@click.argument("features", nargs=-1, type=click.Path(path_type=Path))
@click.option("--split", "split_name", required=True, help="Split name (or a .split.npz path).")
@click.option(
    "--method-name",
    required=True,
    help="Leaderboard name of the method (letters, digits, . _ + -).",
)
@click.option(
    "--meta-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON object with paper, code_url, backbone, training_data, checkpoint_sha256, license, "
    "extraction_ms_per_image, description (unknown keys are rejected).",
)
@_results_option
@data_root_option()
@click.option("--ngpu", type=int, default=-1, show_default=True, help="-1 all GPUs, 0 CPU only.")
@click.option("--ranking", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Submit a ranking file (ranked database names per query; text or HDF5) "
              "instead of FEATURES: shown with a re-ranking marker.")
def submit_command(features, split_name, method_name, meta_file, results_dir, data_root, ngpu,
                   ranking):
    """Evaluate FEATURES (files or folders) on a split and add the record to the leaderboard.

    The record is immutable: submitting the same feature files again returns the existing
    record. Nothing is written when the files, the split or the metadata are invalid.
    """
    if bool(features) == bool(ranking):
        raise click.UsageError("give FEATURES or --ranking FILE")
    from harness.config import EvalConfig
    from leaderboard.records import read_method_metadata
    from leaderboard.submit import check_method_name, submit

    check_method_name(method_name)
    metadata = read_method_metadata(meta_file) if meta_file is not None else None
    outcome = submit(
        features,
        split=split_name,
        method_name=method_name,
        metadata=metadata,
        results_dir=results_dir,
        data_root=data_root,
        config=EvalConfig(ngpu=ngpu, progress=True),
        ranking=ranking,
    )
    scores = outcome.record.scores
    shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items() if k.startswith("recall@"))
    state = "submitted" if outcome.created else "already submitted (same feature files and split)"
    click.echo(f"{state}: {outcome.path}")
    click.echo(f"{method_name} on {outcome.record.split}: {shown}")


@click.group("leaderboard")
def leaderboard_group():
    """Build and check the leaderboard from its committed records."""


@leaderboard_group.command("build")
@_results_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Where README.md, tables/ and site/ are written.",
)
@data_root_option()
@click.option(
    "--grids/--no-grids",
    default=True,
    show_default=True,
    help="Retrieval grids (when the splits and their images are available).",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Write nothing; fail if README.md or tables/ under --out differ from the records.",
)
def build_command(results_dir, out_dir, data_root, grids, verify):
    """Write README.md, LaTeX/CSV tables and the HTML page from every record."""
    from harness.errors import HarnessError
    from leaderboard.build import build_leaderboard, stale_outputs

    if verify:
        stale = stale_outputs(results_dir, out_dir)
        for line in stale:
            click.echo(f"error: {out_dir / line}", err=True)
        if stale:
            raise HarnessError(
                f"{len(stale)} generated files are stale; run `harness leaderboard build`", out_dir
            )
        click.echo(f"{out_dir}: README.md and tables/ are up to date")
        return
    output = build_leaderboard(results_dir, out_dir, data_root=data_root, grids=grids)
    click.echo(
        f"{output.records} records, {len(output.benchmarks)} tables, {len(output.plots)} plots, "
        f"{output.grids} retrieval grids"
    )
    click.echo(
        f"wrote {output.readme}, {output.page} and {len(output.tables)} files in "
        f"{out_dir / 'tables'}"
    )


@leaderboard_group.command("check")
@_results_option
@data_root_option()
@click.option(
    "--features-dir",
    "feature_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of submitted feature files (found by name); their scores are recomputed. "
    "Repeatable.",
)
@click.option(
    "--git/--no-git",
    default=True,
    show_default=True,
    help="Compare every record's scores with its first committed version.",
)
def check_command(results_dir, data_root, feature_dirs, git):
    """Re-validate every record: schema, checksums, protocol, scores, drift between commits."""
    from harness.errors import HarnessError
    from leaderboard.check import check_results

    report = check_results(results_dir, data_root=data_root, feature_dirs=feature_dirs, git=git)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(f"error: {problem.line()}", err=True)
    summary = (
        f"{report.records} records checked ({report.split_checked} against their split, "
        f"{report.recomputed} re-evaluated): {len(report.problems)} problems"
    )
    if not report.ok:
        raise HarnessError(summary, results_dir)
    click.echo(summary)


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data") / "demo", show_default=True,
              help="Where the city, features, study and demo leaderboard go (cached across runs).")
@click.option("--preset", default="demo", show_default=True, help="Synthetic city preset.")
@click.option("--seed", default=0, show_default=True, type=int, help="Synthetic city seed.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Train the SFRS baseline and the IOVPR variants (CPU, small backbone).")
@click.option("--device", default="cpu", show_default=True, help="Device for training/extraction.")
@click.option("--study-option", "study_options", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of the IOVPR study (see `harness iovpr study --help`); "
                   "repeatable. The demo's own settings are methods.iovpr.study.DEMO_STUDY.")
def demo_command(out_dir, preset, seed, train, device, study_options):
    """Run the whole benchmark on the embedded synthetic city and print its leaderboard."""
    from harness.options import parse_option_pairs
    from leaderboard.demo import DemoConfig, run_demo, synthetic_tables

    overrides = tuple(parse_option_pairs(study_options).items())
    result = run_demo(DemoConfig(out_dir=str(out_dir), preset=preset, seed=seed, train=train,
                                 device=device, study_options=overrides))
    click.echo(synthetic_tables(result.leaderboard_readme))
    timing = ", ".join(f"{stage} {sec:.0f} s" for stage, sec in result.seconds.items())
    click.echo(f"{result.records} results; {timing}; full leaderboard: {result.leaderboard_readme}")


commands = [submit_command, leaderboard_group, demo_command]
