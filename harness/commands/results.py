"""`harness show` and `harness compare`: read result records, print scores and paired tests.

Work modules are imported inside the commands: the CLI imports every command module at
start-up, and `harness --help` must not load numpy, h5py or the search.
"""

from __future__ import annotations

from pathlib import Path

import click

BREAKDOWN_CHOICES = {"condition": "condition", "window": "window_fraction",
                     "window_fraction": "window_fraction", "radius": "radius"}


def format_scores_with_intervals(result, style: str = "pm") -> str:
    """The record's scores, each with its bootstrap interval when the record has one."""
    from harness.stats import format_interval, score_label

    protocol = result.protocol
    lines = [f"{result.method} on {result.split}: {result.counts.evaluated_queries} evaluated of "
             f"{result.counts.queries} queries, {result.counts.database} database images, "
             f"radius {protocol.radius_m:g} m" + (", spatial NMS" if protocol.spatial_nms else "")]
    if result.bootstrap:
        lines.append(f"{100 * result.bootstrap['confidence']:g} % intervals: percentile bootstrap "
                     f"over queries, {result.bootstrap['resamples']} resamples, seed "
                     f"{result.bootstrap['seed']}" + (" (value ± half-width)" if style == "pm"
                                                      else ""))
    for name, value in result.scores.items():
        bounds = result.interval(name)
        text = f"{100 * value:.1f}" if bounds is None else format_interval(value, *bounds, style)
        lines.append(f"{score_label(name):<9} {text}")
    return "\n".join(lines)


@click.command("show")
@click.argument("result_path", metavar="RESULT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--by", "by", type=click.Choice(sorted(BREAKDOWN_CHOICES)), multiple=True,
              help="Breakdown(s) stored in the record: condition, window (fraction), radius.")
@click.option("--brackets", is_flag=True, help="Intervals as [low, high] instead of ± half-width.")
def show_command(result_path: Path, by: tuple[str, ...], brackets: bool) -> None:
    """Print a result record's scores with their intervals, and its breakdowns (--by)."""
    from harness.breakdowns import breakdown_table
    from harness.errors import HarnessError
    from harness.results import read_result

    result = read_result(result_path)
    tables = []
    for choice in by:  # every table first: a missing breakdown prints nothing
        try:
            tables.append(breakdown_table(result.breakdowns, BREAKDOWN_CHOICES[choice],
                                          result.protocol.recall_ns[:3], result.bootstrap))
        except HarnessError as exc:
            raise HarnessError(exc.message, result_path) from None
    click.echo(format_scores_with_intervals(result, "bracket" if brackets else "pm"))
    for table in tables:
        click.echo("")
        click.echo(table)


@click.command("compare")
@click.argument("result_paths", metavar="RESULT_A RESULT_B [RESULT...]", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resamples", type=click.IntRange(min=1), default=None,
              help="Paired bootstrap resamples (default: A's record, else 1000).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Bootstrap seed (default: A's record, else 0).")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Interval confidence (default: A's record, else 0.95).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level of the verdict (McNemar at Recall@1).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write recall curves with bands and a per-query rank scatter (.png/.svg/.pdf).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the tables as Markdown ('-' for stdout).")
@click.option("--latex", "latex_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the tables as booktabs LaTeX ('-' for stdout).")
def compare_command(result_paths, resamples, seed, confidence, alpha, plot_path, markdown_path,
                    latex_path) -> None:
    """Compare results on the same split query by query: B - A per score with a paired
    bootstrap interval, queries won and lost, exact McNemar p, and a verdict at Recall@1.

    The first record is the reference A; every further one is compared with it. Records of
    different splits or protocols are refused (exit 2).
    """
    from harness.compare import (
        compare_all,
        comparison_latex,
        comparison_markdown,
        comparison_text,
        load_results,
        plot_comparison,
    )
    from harness.errors import HarnessError
    from harness.stats import BootstrapSettings

    if len(result_paths) < 2:
        raise click.UsageError("give at least two result records")
    loaded = load_results(result_paths)
    stored = dict(loaded[0].result.bootstrap or {})
    settings = BootstrapSettings(
        resamples=resamples or stored.get("resamples", 1000),
        confidence=confidence or stored.get("confidence", 0.95),
        seed=stored.get("seed", 0) if seed is None else seed)
    comparisons = compare_all(loaded, settings, alpha)
    click.echo("\n\n".join(comparison_text(c) for c in comparisons))
    for path, render in ((markdown_path, comparison_markdown), (latex_path, comparison_latex)):
        if path is None:
            continue
        text = "\n".join(render(c) for c in comparisons)
        if str(path) == "-":
            click.echo(text)
        else:
            from harness.io import write_bytes_atomic

            try:
                write_bytes_atomic(path, text.encode("utf-8"))
            except OSError as exc:
                raise HarnessError(f"cannot write ({exc})", path) from None
            click.echo(f"wrote {path}")
    if plot_path is not None:
        plot_comparison(loaded, plot_path, settings)
        click.echo(f"wrote {plot_path}")


commands = [show_command, compare_command]
