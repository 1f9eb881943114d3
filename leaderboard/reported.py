"""Reference rows: published numbers, shown as "reported, not reproduced".

The rows are data (``leaderboard/reported.toml``, one ``[[rows]]`` per method and benchmark,
each with the source it was read from). They are rendered in tables of their own, under each
benchmark's verified table or in a closing section for benchmarks without one, and never
enter a ranking: the verified tables are built from submitted records only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml

from harness.errors import HarnessError
from harness.versions import is_version
from leaderboard.escape import (
    csv_cell,
    html_link,
    html_text,
    markdown_link,
    markdown_text,
    unsafe_characters,
    url_problem,
)

REPORTED_FILE = "reported.toml"
REPORTED_LABEL = "reported, not reproduced"
_KEYS = {"method", "benchmark", "benchmark_title", "r1", "r5", "r10", "trained_on", "source",
         "url", "note"}
_REQUIRED = {"method", "benchmark", "benchmark_title", "r1", "source"}
RECALLS = (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"))


@dataclass(frozen=True)
class ReportedRow:
    """One published result (recalls in percent, as printed in the source)."""

    method: str
    benchmark: str
    benchmark_title: str
    r1: float
    source: str
    r5: float | None = None
    r10: float | None = None
    trained_on: str = ""
    url: str = ""
    note: str = ""


def load_reported(path: str | Path | None = None) -> list[ReportedRow]:
    """Read and validate the reference rows (default: the packaged ``reported.toml``)."""
    if path is None:
        text = resources.files("leaderboard").joinpath(REPORTED_FILE).read_text(encoding="utf-8")
        where: str | Path = REPORTED_FILE
    else:
        where = Path(path)
        try:
            text = where.read_text(encoding="utf-8")
        except OSError as exc:
            raise HarnessError(f"cannot read reference rows ({exc})", where) from None
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise HarnessError(f"not valid TOML ({exc})", where) from None
    if not is_version(data.get("format_version"), 1) or set(data) - {"format_version", "rows"}:
        raise HarnessError("expected format_version = 1 and [[rows]] only", where)
    rows = []
    for index, row in enumerate(data.get("rows", []), start=1):
        problem = _problem(row)
        if problem:
            raise HarnessError(f"row {index}: {problem}", where)
        rows.append(ReportedRow(**row))
    return rows


def _problem(row) -> str:
    if not isinstance(row, dict):
        return "not a table"
    unknown, missing = set(row) - _KEYS, _REQUIRED - set(row)
    if unknown or missing:
        return f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
    for key, _ in RECALLS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 100):
            return f"{key} must be a percentage, got {value!r}"
    for key in sorted(_KEYS - {"r1", "r5", "r10"}):
        if key in row and not isinstance(row[key], str):
            return f"{key} must be a string"
        if key in row and unsafe_characters(row[key]):
            return f"{key} holds control or text-direction characters"
    if row.get("url") and url_problem(row["url"]):
        return f"url: {url_problem(row['url'])}"
    if not row["source"].strip():
        return "every row needs its source"
    return ""


def rows_for(rows: Sequence[ReportedRow], benchmark_key: str) -> list[ReportedRow]:
    """The rows of one benchmark (its real key; a ``synth-`` mirror gets none)."""
    return [row for row in rows if row.benchmark == benchmark_key]


def other_benchmarks(rows: Sequence[ReportedRow], shown_keys) -> list[tuple[str, str]]:
    """(key, title) of benchmarks with reference rows but no verified table, in file order."""
    seen: dict[str, str] = {}
    for row in rows:
        if row.benchmark not in shown_keys:
            seen.setdefault(row.benchmark, row.benchmark_title)
    return list(seen.items())


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def reported_markdown(rows: Sequence[ReportedRow]) -> str:
    """A pipe table of reference rows ("reported, not reproduced"), or "" when none."""
    if not rows:
        return ""

    def cell(text: str) -> str:
        return markdown_text(" ".join(text.split()))

    lines = [f"Published numbers ({REPORTED_LABEL}; not ranked):", "",
             "| Method | R@1 | R@5 | R@10 | Trained on | Source |", "|---|---:|---:|---:|---|---|"]
    for row in rows:
        source = markdown_link(" ".join(row.source.split()), row.url)
        if row.note:
            source += f" ({cell(row.note)})"
        lines.append(f"| {cell(row.method)} | {_number(row.r1)} | {_number(row.r5)} | "
                     f"{_number(row.r10)} | {cell(row.trained_on)} | {source} |")
    return "\n".join(lines) + "\n"


def reported_html(rows: Sequence[ReportedRow]) -> str:
    """The same as an HTML table (class ``reported``), or "" when none."""
    if not rows:
        return ""

    def e(text) -> str:
        return html_text(text)

    body = []
    for row in rows:
        source = html_link(row.source, row.url)
        if row.note:
            source += f" ({e(row.note)})"
        body.append(f'<tr data-method="{e(row.method)}"><td>{e(row.method)}</td>'
                    f'<td class="num">{_number(row.r1)}</td><td class="num">{_number(row.r5)}</td>'
                    f'<td class="num">{_number(row.r10)}</td><td>{e(row.trained_on)}</td>'
                    f"<td>{source}</td></tr>")
    return (f'<div class="table-wrap"><p>Published numbers ({REPORTED_LABEL}; not ranked):</p>'
            '<table class="reported"><thead><tr><th>Method</th><th>R@1</th><th>R@5</th>'
            "<th>R@10</th><th>Trained on</th><th>Source</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div>")


def reported_csv(rows: Sequence[ReportedRow]) -> str:
    """Every reference row as CSV (recalls in percent, as published)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["benchmark", "method", "r1", "r5", "r10", "trained_on", "source", "url",
                     "note", "status"])
    for row in rows:
        writer.writerow([csv_cell(value) for value in (
            row.benchmark, row.method, row.r1, row.r5, row.r10, row.trained_on, row.source,
            row.url, row.note, REPORTED_LABEL)])
    return buffer.getvalue()
