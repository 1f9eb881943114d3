"""The static HTML page: sortable tables, inline SVG recall curves, retrieval grids.

One self-contained ``index.html`` (CSS, JS and SVG inline; thumbnails as files beside it),
rendered from ``templates/`` with :class:`string.Template`, so the page needs no server and
no network, and the same tables give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Mapping, Sequence

from leaderboard.escape import html_attr, html_link, html_text, safe_url
from leaderboard.tables import (
    MISSING_TEXT,
    TIE_NOTE,
    Table,
    best_values,
    format_value,
    interval_text,
)
from leaderboard.tables import rank_text as table_rank_text

PAGE_TITLE = "IOVPR leaderboard"


@dataclass(frozen=True)
class Thumb:
    """One image of a retrieval grid: ``status`` is ``query``, ``hit`` or ``miss``."""

    src: str
    caption: str
    status: str


@dataclass(frozen=True)
class GridRow:
    query: Thumb
    results: tuple[Thumb, ...]


@dataclass(frozen=True)
class Grid:
    """The top-k retrievals of one method for a few queries of one split."""

    method: str
    split: str
    split_label: str
    rows: tuple[GridRow, ...]


@dataclass(frozen=True)
class Section:
    """One benchmark on the page: its table, its recall curves (SVG) and its grids."""

    table: Table
    svg: str | None = None
    grids: tuple[Grid, ...] = ()
    reported: tuple = ()  # every leaderboard.reported.ReportedRow; the section picks its own


@dataclass(frozen=True)
class MethodInfo:
    """A row of the methods table (metadata of the newest record of each method)."""

    name: str
    fields: Mapping[str, str] = field(default_factory=dict)


METHOD_FIELDS = (
    ("backbone", "Backbone"),
    ("descriptor_dim", "Dim"),
    ("descriptor_dtype", "Dtype"),
    ("training_data", "Training data"),
    ("license", "License"),
    ("paper", "Paper"),
    ("code_url", "Code"),
    ("checkpoint_sha256", "Checkpoint sha256"),
)


def _template(name: str) -> str:
    return resources.files("leaderboard").joinpath("templates", name).read_text(encoding="utf-8")


def _e(text) -> str:
    """Element text and attribute values alike (:func:`leaderboard.escape.html_attr`)."""
    return html_attr(text)


def table_id(table: Table) -> str:
    return f"table-{table.benchmark.key}"


def render_table(table: Table) -> str:
    """The ``<table>`` of one benchmark; every cell carries its raw value for sorting."""
    if not table.rows:
        return '<p class="empty">No submissions yet.</p>'
    best = best_values(table)
    out = [
        f'<div class="table-wrap"><table class="leaderboard sortable" id="{_e(table_id(table))}" '
        f'data-benchmark="{_e(table.benchmark.key)}" data-sorted-by="rank:asc">',
        "<thead>",
    ]
    groups = ['<th colspan="2"></th>']
    previous = None
    for column in table.columns:
        if column.group and column.group != previous:
            width = sum(1 for c in table.columns if c.group == column.group)
            groups.append(
                f'<th class="group" colspan="{width}">{_e(table.group_labels[column.group])}</th>'
            )
        elif not column.group:
            groups.append("<th></th>")
        previous = column.group
    out.append('<tr class="groups">' + "".join(groups) + "</tr>")
    heads = [
        '<th data-key="rank" data-type="num" data-first="asc" aria-sort="ascending">#</th>',
        '<th data-key="method" data-type="text" data-first="asc">Method</th>',
    ]
    for column in table.columns:
        first = (
            "asc"
            if column.key
            in (
                "descriptor_dim",
                "descriptor_bytes",
                "extraction_ms_per_image",
                "search_gflop",
                "search_seconds",
                "peak_memory_bytes",
            )
            else "desc"
        )
        heads.append(
            f'<th data-key="{_e(column.key)}" data-type="num" data-first="{first}">'
            f"{_e(column.label)}</th>"
        )
    out.append('<tr class="columns">' + "".join(heads) + "</tr>")
    out.append("</thead>")
    out.append("<tbody>")
    for row in table.rows:
        rank_text = table_rank_text(row)
        rank_value = "" if row.rank is None else str(row.rank)
        css = ' class="unranked"' if row.rank is None else ""
        name = html_link(row.method, safe_url(row.code_url) or safe_url(row.paper))
        cells = [
            f'<td class="num" data-value="{rank_value}">{rank_text}</td>',
            f'<td class="method" data-value="{_e(row.method)}">{name}</td>',
        ]
        for column in table.columns:
            value = row.values.get(column.key)
            raw = (
                ""
                if value is None
                else repr(float(value))
                if column.kind != "int"
                else str(int(value))
            )
            classes = ["num"]
            if column.key in best and value is not None and round(value, 3) == best[column.key]:
                classes.append("best")
            cells.append(
                f'<td class="{" ".join(classes)}" data-value="{raw}">'
                f"{_e(format_value(value, column.kind) + _interval(row, column, value))}</td>"
            )
        out.append(
            f'<tr data-method="{_e(row.method)}" data-rank="{rank_value}"{css}>'
            + "".join(cells)
            + "</tr>"
        )
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _interval(row, column, value) -> str:
    return "" if value is None else interval_text(row, column)


def _reported(section: Section) -> str:
    from leaderboard.reported import reported_html, rows_for

    return reported_html(rows_for(section.reported, section.table.benchmark.key))


def render_other_reported(reported: Sequence, shown_keys) -> str:
    """Sections for benchmarks that only have published (reported) numbers."""
    from leaderboard.reported import other_benchmarks, reported_html, rows_for

    out = []
    for key, title in other_benchmarks(reported, shown_keys):
        out.append(f'<section class="benchmark reported-only" id="reported-{_e(key)}">'
                   f"<h2>{_e(title)} (published numbers only)</h2>"
                   f"{reported_html(rows_for(reported, key))}</section>")
    return "\n".join(out)


def render_grid(grid: Grid, *, open_: bool = False) -> str:
    """One method's grid, collapsible (the first of each split starts open)."""
    out = [
        f'<details class="grid-method"{" open" if open_ else ""}>'
        f"<summary>{_e(grid.method)} on {_e(grid.split_label)}</summary>",
        f'<div class="grid" data-method="{_e(grid.method)}" data-split="{_e(grid.split)}">',
    ]
    for row in grid.rows:
        figures = [row.query] + list(row.results)
        cells = [
            f'<figure class="{_e(t.status)}"><img src="{_e(t.src)}" '
            f'alt="{_e(t.status)}: {_e(t.caption)}" '
            f'loading="lazy"><figcaption>{_e(t.caption)}</figcaption></figure>'
            for t in figures
        ]
        out.append('<div class="grid-row">' + "".join(cells) + "</div>")
    out.append("</div></details>")
    return "\n".join(out)


def render_section(section: Section) -> str:
    benchmark = section.table.benchmark
    out = [
        f'<section class="benchmark" id="bench-{_e(benchmark.key)}" '
        f'data-benchmark="{_e(benchmark.key)}">',
        f"<h2>{_e(benchmark.title)}</h2>",
        f'<p class="description">{_e(benchmark.description)}</p>' if benchmark.description else "",
        render_table(section.table),
        _reported(section),
    ]
    if section.svg:
        out.append(f'<figure class="recall-curves" id="plot-{_e(benchmark.key)}">')
        out.append(section.svg.strip())
        out.append(f"<figcaption>Recall@N (%) on {_e(benchmark.title)}.</figcaption></figure>")
    if section.grids:
        out.append(
            '<details class="grids" open><summary>Retrieval examples (query in blue; '
            "hits green, misses red)</summary>"
        )
        seen: set[str] = set()
        for grid in section.grids:
            out.append(render_grid(grid, open_=grid.split not in seen))
            seen.add(grid.split)
        out.append("</details>")
    out.append("</section>")
    return "\n".join(part for part in out if part)


def render_methods(methods: Sequence[MethodInfo]) -> str:
    if not methods:
        return ""
    heads = "".join(f"<th>{_e(label)}</th>" for _, label in METHOD_FIELDS)
    rows = []
    for method in methods:
        cells = [f"<td>{_e(method.name)}</td>"]
        for key, _ in METHOD_FIELDS:
            value = str(method.fields.get(key) or "")
            if value and key in ("paper", "code_url"):
                cells.append(f"<td>{html_link(value, value)}</td>")
            elif key == "checkpoint_sha256" and value:
                cells.append(f'<td title="{_e(value)}"><code>{html_text(value[:12])}</code></td>')
            else:
                cells.append(f"<td>{html_text(value) if value else MISSING_TEXT}</td>")
        rows.append(f'<tr data-method="{_e(method.name)}">' + "".join(cells) + "</tr>")
    return (
        '<section id="methods"><h2>Methods</h2><div class="table-wrap"><table class="methods">'
        f"<thead><tr><th>Method</th>{heads}</tr></thead><tbody>"
        + "\n".join(rows)
        + "</tbody></table></div></section>"
    )


def render_page(
    sections: Sequence[Section], methods: Sequence[MethodInfo], *, summary: str, results_label: str,
    reported: Sequence = (),
) -> str:
    """The whole page as text."""
    nav = "\n".join(
        f'<li><a href="#bench-{_e(s.table.benchmark.key)}">{_e(s.table.benchmark.title)}</a></li>'
        for s in sections
    )
    if methods:
        nav += '\n<li><a href="#methods">Methods</a></li>'
    return Template(_template("page.html")).substitute(
        title=_e(PAGE_TITLE),
        summary=_e(summary),
        results_label=_e(results_label),
        nav=nav,
        sections="\n".join([render_section(s) for s in sections] + [render_other_reported(
            reported, {s.table.benchmark.key for s in sections})]),
        methods=render_methods(methods),
        footer="Recall@N in percent; ranked by Recall@1 (the mean over the splits for Indoor-Ams). "
        + _e(TIE_NOTE) + " Click a column header to sort. Generated by "
        "<code>harness leaderboard build</code>.",
        style=_template("style.css").strip(),
        script=_template("sort.js").strip(),
    )
