"""Recall@N curves as deterministic SVG (matplotlib, no pyplot, no global state touched).

Same entries, same bytes: the SVG ids come from a fixed ``svg.hashsalt``, the metadata date
is dropped and glyphs are written as paths (no font lookup at view time).
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from leaderboard.benchmarks import Benchmark
from leaderboard.tables import MEAN_GROUP, Entry, Table

SVG_HASHSALT = "iovpr-leaderboard"
_LINESTYLES = ("-", "--", ":", "-.")


def recall_curves(
    table: Table, entries: Mapping[tuple[str, str], Entry]
) -> dict[str, dict[str, dict[int, float]]]:
    """``{group: {method: {N: recall}}}`` per split of the table (and the mean), in rank order."""
    benchmark = table.benchmark
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for split in benchmark.splits:
        per_method = {}
        for row in table.rows:
            entry = entries.get((row.method, split))
            if entry is not None and entry.recall_curve():
                per_method[row.method] = entry.recall_curve()
        curves[split] = per_method
    if benchmark.has_mean:
        per_method = {}
        for row in table.rows:
            split_curves = [curves[s].get(row.method) for s in benchmark.splits]
            if any(c is None for c in split_curves):
                continue
            common = sorted(set.intersection(*(set(c) for c in split_curves)))
            if common:
                per_method[row.method] = {
                    n: sum(c[n] for c in split_curves) / len(split_curves) for n in common
                }
        curves[MEAN_GROUP] = per_method
    return curves


def recall_bands(
    table: Table, entries: Mapping[tuple[str, str], Entry]
) -> dict[str, dict[str, dict[int, tuple[float, float]]]]:
    """``{group: {method: {N: (low, high)}}}``: each record's bootstrap intervals per split,
    and the table's stratified intervals of the mean (``leaderboard.significance``)."""
    bands: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for split in table.benchmark.splits:
        bands[split] = {}
        for row in table.rows:
            entry = entries.get((row.method, split))
            if entry is not None and entry.intervals:
                bands[split][row.method] = {
                    int(name.split("@", 1)[1]): tuple(bounds)
                    for name, bounds in entry.intervals.items() if name.startswith("recall@")}
    if table.benchmark.has_mean:
        prefix = f"{MEAN_GROUP}/recall@"
        bands[MEAN_GROUP] = {
            row.method: {int(key[len(prefix):]): bounds for key, bounds in row.intervals.items()
                         if key.startswith(prefix)}
            for row in table.rows}
    return bands


def _draw_band(axes, band: Mapping[int, tuple[float, float]], ns, color) -> None:
    """The interval band of one curve, over the Ns that have an interval."""
    shown = [n for n in ns if n in band]
    if len(shown) > 1:
        axes.fill_between(shown, [100.0 * band[n][0] for n in shown],
                          [100.0 * band[n][1] for n in shown], color=color, alpha=0.15,
                          linewidth=0)


def recall_svg(
    benchmark: Benchmark,
    curves: Mapping[str, Mapping[str, Mapping[int, float]]],
    group_labels: Mapping[str, str],
    bands: Mapping[str, Mapping[str, Mapping[int, tuple[float, float]]]] | None = None,
) -> str:
    """One panel per split (and the mean), a line per method, each with its 95 % interval
    band when ``bands`` has one; returns the SVG text."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    groups = [g for g in curves if curves[g]]
    if not groups:
        raise ValueError(f"benchmark {benchmark.key}: no recall curves to plot")
    methods: list[str] = []
    for group in groups:
        methods += [m for m in curves[group] if m not in methods]
    colors = matplotlib.colormaps["tab10"].colors
    style = {
        m: (colors[i % 10], _LINESTYLES[(i // 10) % len(_LINESTYLES)])
        for i, m in enumerate(methods)
    }
    rc = {
        "svg.hashsalt": SVG_HASHSALT,
        "svg.fonttype": "path",
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
    with matplotlib.rc_context(rc):
        figure = Figure(figsize=(3.2 * len(groups) + 1.6, 3.0), layout="constrained")
        FigureCanvasSVG(figure)
        axes_list = figure.subplots(1, len(groups), squeeze=False, sharey=True)[0]
        for axes, group in zip(axes_list, groups):
            for method, curve in curves[group].items():
                ns = sorted(curve)
                color, linestyle = style[method]
                axes.plot(
                    ns,
                    [100.0 * curve[n] for n in ns],
                    marker="o",
                    markersize=3,
                    color=color,
                    linestyle=linestyle,
                    label=method,
                    gid=f"curve-{group}-{method}",
                )
                _draw_band(axes, (bands or {}).get(group, {}).get(method, {}), ns, color)
            axes.set_xscale("log")
            all_ns = sorted({n for c in curves[group].values() for n in c})
            axes.set_xticks(all_ns, [str(n) for n in all_ns])
            axes.minorticks_off()
            axes.set_xlabel("N")
            axes.set_title(group_labels.get(group, group))
            axes.set_ylim(0, 100)
        axes_list[0].set_ylabel("Recall@N (%)")
        handles, labels = axes_list[0].get_legend_handles_labels()
        by_label = dict(zip(labels, handles))
        for axes in axes_list[1:]:
            for handle, label in zip(*axes.get_legend_handles_labels()):
                by_label.setdefault(label, handle)
        figure.legend(
            list(by_label.values()),
            list(by_label.keys()),
            loc="outside right center",
            frameon=False,
            fontsize=8,
        )
        buffer = io.StringIO()
        figure.savefig(
            buffer, format="svg", metadata={"Date": None, "Creator": "harness leaderboard build"}
        )
    return buffer.getvalue()


def inline_svg(svg_text: str) -> str:
    """The ``<svg>`` element alone (no XML prolog, no DOCTYPE), for embedding in HTML."""
    start = svg_text.index("<svg")
    return svg_text[start:]


def write_plot_files(out_dir, svgs: Sequence[tuple[str, str]]):
    """Write ``(key, svg)`` pairs as ``<key>.svg`` under ``out_dir``; returns the paths."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, svg in svgs:
        path = out_dir / f"{key}.svg"
        path.write_text(svg, encoding="utf-8")
        paths.append(path)
    return paths
