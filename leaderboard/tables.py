"""Leaderboard tables: one per benchmark, ranked by Recall@1, in Markdown, LaTeX and CSV.

A table is built from :class:`Entry` objects (what a table needs of one record) so that the
formatting does not depend on the record schema. Recalls are fractions in the entries and
the CSV, percentages with one decimal in Markdown, LaTeX and HTML (as VPR papers print them).
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from leaderboard.benchmarks import RECALL_COLUMNS, Benchmark
from leaderboard.escape import csv_cell, latex_text, markdown_link, markdown_text, safe_url

MISSING_TEXT = "–"
MEAN_GROUP = "mean"
TIE_MARK = "≈"
TIE_NOTE = (
    f"{TIE_MARK}: not significantly different from the best row at Recall@1 (exact McNemar "
    "test on the paired queries, p >= 0.05; without committed rankings: overlapping 95 % "
    "intervals). R@1 cells show the 95 % bootstrap interval as ± half its width."
)


@dataclass(frozen=True)
class Entry:
    """The numbers and metadata of one record that the tables, plots and grids show."""

    method: str
    split: str
    record_id: str
    submitted_at: str
    scores: Mapping[str, float]
    descriptor_dim: int | None = None
    descriptor_dtype: str | None = None
    extraction_ms_per_image: float | None = None
    search_seconds: float | None = None
    peak_memory_bytes: int | None = None
    #: machine-independent: 2 x queries x database rows x dimension / 1e9
    search_gflop: float | None = None
    #: where the extraction time was measured ("AMD EPYC ... (2 cores), cpu, fp32"), or why
    #: it is unknown; the same for the search seconds and the peak memory
    extraction_note: str = ""
    search_note: str = ""
    paper: str = ""
    code_url: str = ""
    predictions_path: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    no_positive: str = "miss"

    @property
    def descriptor_bytes(self) -> int | None:
        itemsize = {"float32": 4, "float16": 2, "uint8": 1, "int8": 1}.get(
            self.descriptor_dtype or ""
        )
        if self.descriptor_dim is None or itemsize is None:
            return None
        return int(self.descriptor_dim) * itemsize

    def recall_curve(self) -> dict[int, float]:
        """``{N: recall@N}`` for every N this record has."""
        curve = {}
        for key, value in self.scores.items():
            if key.startswith("recall@"):
                curve[int(key.split("@", 1)[1])] = float(value)
        return dict(sorted(curve.items()))


@dataclass(frozen=True)
class Column:
    """One table column: ``group`` is a split (or ``mean``) for recalls, ``""`` otherwise."""

    key: str
    group: str
    label: str
    kind: str  # "recall" | "int" | "float1" | "float2" | "sig3" | "mib"


@dataclass(frozen=True)
class Row:
    rank: int | None
    method: str
    values: Mapping[str, float | int | None]
    paper: str = ""
    code_url: str = ""
    record_ids: tuple[str, ...] = ()
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    tie_with_best: str | None = None  # "paired" | "overlap" (see leaderboard.significance)
    tie_p_value: float | None = None
    #: where the efficiency values were measured (or why one is unknown), one line each
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    benchmark: Benchmark
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    rank_column: str
    group_labels: Mapping[str, str]

    @property
    def recall_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "recall")


def latest_entries(entries: Iterable[Entry]) -> dict[tuple[str, str], Entry]:
    """One entry per (method, split): the newest submission (ties broken by record id).

    Several records of one method on one split are resubmissions with new feature files;
    the table shows the newest, never the best, so that nobody can pick among their runs.
    """
    chosen: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        key = (entry.method, entry.split)
        current = chosen.get(key)
        if current is None or (entry.submitted_at, entry.record_id) > (
            current.submitted_at,
            current.record_id,
        ):
            chosen[key] = entry
    return chosen


def _columns(benchmark: Benchmark) -> tuple[list[Column], dict[str, str]]:
    groups = list(zip(benchmark.splits, benchmark.labels))
    if benchmark.has_mean:
        groups.append((MEAN_GROUP, "Mean"))
    columns = [
        Column(f"{group}/recall@{n}", group, f"R@{n}", "recall")
        for group, _ in groups
        for n in RECALL_COLUMNS
    ]
    columns += [
        Column("descriptor_dim", "", "Dim", "int"),
        Column("descriptor_bytes", "", "Bytes/img", "int"),
        Column("extraction_ms_per_image", "", "Extract ms/img", "float1"),
        Column("search_gflop", "", "Search GFLOP", "sig3"),
        Column("search_seconds", "", "Search s", "sig3"),
        Column("peak_memory_bytes", "", "Peak mem MiB", "mib"),
    ]
    return columns, dict(groups)


def _first(values):
    for value in values:
        if value is not None:
            return value
    return None


def make_table(benchmark: Benchmark, entries: Iterable[Entry]) -> Table:
    """Rank every method that has a record on one of ``benchmark``'s splits.

    The rank score is Recall@1 (the mean Recall@1 for a benchmark with several splits).
    A method without a record on every split has no mean and no rank; it is listed after
    the ranked methods. Efficiency columns: dimension and bytes per image as submitted,
    extraction ms/image when the record has it, search seconds summed over the splits and
    peak memory as the maximum over the splits.
    """
    columns, group_labels = _columns(benchmark)
    latest = latest_entries(e for e in entries if e.split in benchmark.splits)
    methods = sorted({method for method, _ in latest})
    rows = []
    for method in methods:
        per_split = [latest.get((method, split)) for split in benchmark.splits]
        present = [e for e in per_split if e is not None]
        values: dict[str, float | int | None] = {}
        for split, entry in zip(benchmark.splits, per_split):
            for n in RECALL_COLUMNS:
                score = None if entry is None else entry.scores.get(f"recall@{n}")
                values[f"{split}/recall@{n}"] = None if score is None else float(score)
        if benchmark.has_mean:
            for n in RECALL_COLUMNS:
                parts = [values[f"{split}/recall@{n}"] for split in benchmark.splits]
                values[f"{MEAN_GROUP}/recall@{n}"] = (
                    None if any(p is None for p in parts) else math.fsum(parts) / len(parts)
                )
        values["descriptor_dim"] = _first(e.descriptor_dim for e in present)
        values["descriptor_bytes"] = _first(e.descriptor_bytes for e in present)
        values["extraction_ms_per_image"] = _first(e.extraction_ms_per_image for e in present)
        searches = [e.search_seconds for e in present if e.search_seconds is not None]
        values["search_seconds"] = math.fsum(searches) if searches else None
        peaks = [e.peak_memory_bytes for e in present if e.peak_memory_bytes is not None]
        values["peak_memory_bytes"] = max(peaks) if peaks else None
        flops = [e.search_gflop for e in present if e.search_gflop is not None]
        values["search_gflop"] = math.fsum(flops) if len(flops) == len(present) else None
        rows.append(
            Row(
                rank=None,
                method=method,
                values=values,
                paper=_first(e.paper or None for e in present) or "",
                code_url=_first(e.code_url or None for e in present) or "",
                record_ids=tuple(e.record_id for e in present),
                notes=_notes(present),
            )
        )
    rank_column = f"{MEAN_GROUP if benchmark.has_mean else benchmark.splits[0]}/recall@1"
    ranked = _rank(rows, rank_column)
    return Table(benchmark, tuple(columns), tuple(ranked), rank_column, group_labels)


def _notes(entries: Sequence[Entry]) -> tuple[str, ...]:
    """Where each efficiency value of a row comes from (distinct lines, in entry order)."""
    notes: list[str] = []
    for entry in entries:
        for label, note in (("extraction", entry.extraction_note),
                            ("search and peak memory", entry.search_note)):
            line = f"{label}: {note}" if note else ""
            if line and line not in notes:
                notes.append(line)
    return tuple(notes)


def _rank(rows: Sequence[Row], rank_column: str) -> list[Row]:
    def sort_key(row: Row):
        score = row.values.get(rank_column)
        return (score is None, -(score or 0.0), row.method)

    ordered = sorted(rows, key=sort_key)
    result: list[Row] = []
    previous_score, previous_rank = None, 0
    for position, row in enumerate(ordered, start=1):
        score = row.values.get(rank_column)
        if score is None:
            rank = None
        else:
            # Competition ranking (1, 1, 3): ties are decided at the printed precision.
            rounded = round(score, 6)
            rank = previous_rank if rounded == previous_score else position
            previous_score, previous_rank = rounded, rank
        result.append(dataclasses.replace(row, rank=rank))
    return result


def best_values(table: Table) -> dict[str, float]:
    """The best (highest) value of each recall column, for bold type."""
    best = {}
    for column in table.recall_columns:
        present = [
            round(r.values[column.key], 3)
            for r in table.rows
            if r.values.get(column.key) is not None
        ]
        if present:
            best[column.key] = max(present)
    return best


def format_value(value, kind: str, missing: str = MISSING_TEXT) -> str:
    """Text of one cell, as Markdown, LaTeX and HTML show it."""
    if value is None:
        return missing
    if kind == "recall":
        return f"{100.0 * value:.1f}"
    if kind == "int":
        return str(int(value))
    if kind == "float1":
        return f"{value:.1f}"
    if kind == "float2":
        return f"{value:.2f}"
    if kind == "sig3":  # three significant digits: a 4 ms search is not "0.00"
        return f"{value:.3g}"
    if kind == "mib":
        return f"{value / (1 << 20):.0f}"
    raise ValueError(f"unknown column kind {kind!r}")


def rank_text(row: Row) -> str:
    """The rank cell: ``2``, ``3 ≈`` (not significantly different from the best) or ``–``."""
    if row.rank is None:
        return MISSING_TEXT
    return f"{row.rank} {TIE_MARK}" if row.tie_with_best else str(row.rank)


def interval_text(row: Row, column: Column) -> str:
    """`` ± 2.1`` after a Recall@1 cell that has an interval (half its width), else empty."""
    bounds = row.intervals.get(column.key)
    if column.kind != "recall" or bounds is None or not column.key.endswith("/recall@1"):
        return ""
    return f" ± {100 * (bounds[1] - bounds[0]) / 2:.1f}"


def _header(table: Table, column: Column) -> str:
    if column.group:
        return f"{table.group_labels[column.group]} {column.label}"
    return column.label




def to_markdown(table: Table) -> str:
    """A GitHub pipe table (tabulate); the best recall of each column in bold."""
    from tabulate import tabulate

    if not table.rows:
        return "_No submissions yet._\n"
    best = best_values(table)
    headers = ["#", "Method"] + [_header(table, c) for c in table.columns]
    body = []
    for row in table.rows:
        cells = [
            rank_text(row),
            markdown_link(row.method, safe_url(row.code_url) or safe_url(row.paper)),
        ]
        for column in table.columns:
            value = row.values.get(column.key)
            text = format_value(value, column.kind)
            if column.key in best and value is not None and round(value, 3) == best[column.key]:
                text = f"**{text}**"
            if value is not None:
                text += interval_text(row, column)
            cells.append(text)
        body.append(cells)
    align = ["right", "left"] + ["right"] * len(table.columns)
    text = tabulate(body, headers=headers, tablefmt="github", colalign=align,
                    disable_numparse=True) + "\n"
    notes = [(row.method, note) for row in table.rows for note in row.notes]
    if notes:
        text += "\nWhere the efficiency columns were measured (– : unknown, with the reason):\n\n"
        text += "".join(f"- {markdown_text(method)}, {markdown_text(note)}\n"
                        for method, note in notes)
    return text


def latex_escape(text: str) -> str:
    """LaTeX text (:func:`leaderboard.escape.latex_text`)."""
    return latex_text(text)


def to_latex(table: Table) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), column groups under ``\\cmidrule``."""
    best = best_values(table)
    columns = table.columns
    lines = [
        f"% Generated by `harness leaderboard build`: {latex_escape(table.benchmark.title)}. "
        "Do not edit.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        r"\begin{tabular}{l" + "r" * len(columns) + "}",
        r"\toprule",
    ]
    # Group header: one multicolumn per run of columns that share a group.
    spans: list[tuple[str, int, int]] = []
    for index, column in enumerate(columns, start=2):
        if spans and spans[-1][0] == column.group:
            spans[-1] = (column.group, spans[-1][1], index)
        else:
            spans.append((column.group, index, index))
    header = ["Method"] if not any(g for g, _, _ in spans) else [""]
    rules = []
    for group, start, stop in spans:
        width = stop - start + 1
        if group:
            label = latex_escape(table.group_labels[group])
            header.append(rf"\multicolumn{{{width}}}{{c}}{{{label}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{stop}}}")
        else:
            header.extend([""] * width)
    if any(group for group, _, _ in spans):
        lines.append(" & ".join(header) + r" \\")
        lines.append(" ".join(rules))
        lines.append(" & ".join(["Method"] + [latex_escape(c.label) for c in columns]) + r" \\")
    else:
        lines.append(" & ".join(["Method"] + [latex_escape(c.label) for c in columns]) + r" \\")
    lines.append(r"\midrule")
    if not table.rows:
        lines.append(rf"\multicolumn{{{len(columns) + 1}}}{{c}}{{No submissions yet.}} \\")
    for row in table.rows:
        cells = [latex_escape(row.method) + (r"$^{\approx}$" if row.tie_with_best else "")]
        for column in columns:
            value = row.values.get(column.key)
            text = format_value(value, column.kind, missing="--")
            if column.key in best and value is not None and round(value, 3) == best[column.key]:
                text = rf"\textbf{{{text}}}"
            if value is not None and interval_text(row, column):
                text += r"{\scriptsize${}\pm{}$" + interval_text(row, column)[3:] + "}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{latex_escape(table.benchmark.title)}: Recall@N (\%), ranked by "
        + ("mean " if table.benchmark.has_mean else "")
        + r"Recall@1; $\approx$: not significantly different from the best at Recall@1 "
        + r"(exact McNemar test, $p \geq 0.05$); $\pm$: half the 95\,\% bootstrap interval.}",
        rf"\label{{tab:iovpr-{table.benchmark.key}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_frame(table: Table):
    """A pandas DataFrame: one row per method, recalls as fractions, typed columns."""
    import pandas as pd

    data: dict[str, list] = {"rank": [], "method": []}
    for column in table.columns:
        data[column.key] = []
    for row in table.rows:
        data["rank"].append(row.rank)
        data["method"].append(row.method)
        for column in table.columns:
            data[column.key].append(row.values.get(column.key))
    frame = pd.DataFrame(data)
    frame["rank"] = frame["rank"].astype("Int64")
    for column in table.columns:
        if column.kind in ("int", "mib"):
            frame[column.key] = frame[column.key].astype("Int64")
        else:
            frame[column.key] = frame[column.key].astype("float64")
    frame["paper"] = [row.paper for row in table.rows]
    frame["code_url"] = [row.code_url for row in table.rows]
    frame["records"] = [" ".join(row.record_ids) for row in table.rows]
    _add_significance_columns(frame, table)
    frame["measured_on"] = ["; ".join(row.notes) for row in table.rows]
    return frame


def _csv_safe(frame):
    """The frame with every text cell through :func:`leaderboard.escape.csv_cell`."""
    frame = frame.copy()
    for column in ("method", "paper", "code_url", "records", "not_different_from_best"):
        frame[column] = [csv_cell(value) for value in frame[column]]
    return frame


def _add_significance_columns(frame, table: Table) -> None:
    """Interval ends of every recall column (fractions) and the tie-with-best mark."""
    for column in table.recall_columns:
        for end, index in (("low", 0), ("high", 1)):
            frame[f"{column.key}/{end}"] = [
                row.intervals[column.key][index] if column.key in row.intervals else None
                for row in table.rows]
            frame[f"{column.key}/{end}"] = frame[f"{column.key}/{end}"].astype("float64")
    frame["not_different_from_best"] = [row.tie_with_best or "" for row in table.rows]
    frame["tie_p_value"] = [row.tie_p_value for row in table.rows]
    frame["tie_p_value"] = frame["tie_p_value"].astype("float64")


def to_csv(table: Table) -> str:
    """CSV (pandas): recalls as fractions with 6 decimals, peak memory in bytes.

    Text cells that a spreadsheet would run as a formula are neutralised
    (:func:`leaderboard.escape.csv_cell`).
    """
    buffer = io.StringIO()
    _csv_safe(to_frame(table)).to_csv(buffer, index=False, lineterminator="\n", float_format="%.6f")
    return buffer.getvalue()
