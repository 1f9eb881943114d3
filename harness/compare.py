"""Paired comparison of result records on the same split (``harness compare``).

Two records are comparable when they were computed on the same split (same name and
content checksum) under the same protocol; their prediction sidecars give every query's
first-positive rank (and AP), so each score is compared query by query: the difference with
a paired bootstrap interval, and for Recall@N the exact McNemar test on the hits at N with
the queries won and lost (:mod:`harness.stats`). The first record is the reference (A);
every further record is compared with it (B).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_path
from harness.results import EvalResult, Predictions, read_predictions, read_result
from harness.stats import (
    DEFAULT_ALPHA,
    BootstrapSettings,
    PairedScore,
    format_p,
    paired_scores,
    per_query_scores,
    score_intervals,
    score_label,
    verdict,
)


@dataclass(frozen=True, eq=False)
class LoadedResult:
    """A record with its predictions sidecar and the label it is shown under."""

    path: Path
    result: EvalResult
    predictions: Predictions
    label: str

    def per_query(self) -> dict[str, np.ndarray]:
        protocol = self.result.protocol
        return per_query_scores(
            self.predictions.first_positive_rank, self.predictions.has_positive,
            protocol.recall_ns, protocol.no_positive, self.predictions.average_precision,
            protocol.map_k)


def load_results(paths: Sequence[str | os.PathLike]) -> list[LoadedResult]:
    """Read every record and its sidecar; labels are the method names, made unique."""
    loaded = []
    for path in paths:
        path = Path(path)
        result = read_result(path)
        if result.predictions is None:
            raise HarnessError("the record names no predictions file; evaluate with "
                               "--json (and without --no-predictions) to compare query by query",
                               path)
        predictions = read_predictions(path, result)
        if predictions.first_positive_rank.shape[0] != result.counts.queries:
            raise HarnessError(f"predictions cover {predictions.first_positive_rank.shape[0]} "
                               f"queries, the record {result.counts.queries}", path)
        loaded.append(LoadedResult(path, result, predictions, result.method))
    methods = [item.result.method for item in loaded]
    return [item if methods.count(item.label) == 1
            else dataclasses.replace(item, label=f"{item.label} ({item.path.name})")
            for item in loaded]


def check_comparable(reference: LoadedResult, other: LoadedResult) -> None:
    """A one-line :class:`HarnessError` naming ``other`` unless both share split and protocol."""
    a, b = reference.result, other.result
    if a.split != b.split or a.split_sha256 != b.split_sha256:
        raise HarnessError(
            f"split {b.split} (sha256 {b.split_sha256[:12]}) differs from the split of "
            f"{reference.path}, {a.split} (sha256 {a.split_sha256[:12]}): results of different "
            "splits cannot be compared", other.path)
    if a.protocol != b.protocol:
        fields = [f.name for f in dataclasses.fields(a.protocol)
                  if getattr(a.protocol, f.name) != getattr(b.protocol, f.name)]
        detail = ", ".join(f"{name} {getattr(b.protocol, name)!r} vs {getattr(a.protocol, name)!r}"
                           for name in fields)
        raise HarnessError(f"protocol differs from {reference.path}'s ({detail}): results of "
                           "different protocols cannot be compared", other.path)


@dataclass(frozen=True)
class Comparison:
    """B against A on the same queries."""

    a: str
    b: str
    a_path: str
    b_path: str
    split: str
    queries: int  # evaluated queries (the unit that is resampled and tested)
    main_score: str
    scores: tuple[PairedScore, ...]
    settings: BootstrapSettings
    alpha: float = DEFAULT_ALPHA

    def score(self, name: str) -> PairedScore:
        return next(s for s in self.scores if s.score == name)

    def verdict(self) -> str:
        """The verdict at the main score (Recall@1): one test, decided before looking."""
        return verdict(self.score(self.main_score), self.a, self.b, self.alpha)


def compare(reference: LoadedResult, other: LoadedResult,
            settings: BootstrapSettings = BootstrapSettings(),
            alpha: float = DEFAULT_ALPHA) -> Comparison:
    """Paired comparison of ``other`` (B) against ``reference`` (A)."""
    check_comparable(reference, other)
    a, b = reference.per_query(), other.per_query()
    scores = paired_scores(a, b, settings)
    return Comparison(
        a=reference.label, b=other.label, a_path=str(reference.path), b_path=str(other.path),
        split=reference.result.split, queries=len(next(iter(a.values()))),
        main_score=reference.result.main_score, scores=tuple(scores), settings=settings,
        alpha=alpha)


def compare_all(loaded: Sequence[LoadedResult], settings: BootstrapSettings = BootstrapSettings(),
                alpha: float = DEFAULT_ALPHA) -> list[Comparison]:
    """Every record after the first against the first (all checked before any work)."""
    if len(loaded) < 2:
        raise HarnessError("compare needs at least two result records")
    for other in loaded[1:]:
        check_comparable(loaded[0], other)
    return [compare(loaded[0], other, settings, alpha) for other in loaded[1:]]


# --------------------------------------------------------------------------------------------
# Output


def _percent(value: float, signed: bool = False) -> str:
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _rows(comparison: Comparison) -> list[list[str]]:
    rows = []
    for s in comparison.scores:
        rows.append([
            score_label(s.score), _percent(s.a), _percent(s.b), _percent(s.difference, True),
            f"[{_percent(s.low, True)}, {_percent(s.high, True)}]",
            "-" if s.b_only is None else str(s.b_only),
            "-" if s.a_only is None else str(s.a_only),
            "-" if s.p_value is None else format_p(s.p_value),
        ])
    return rows


def _headers(comparison: Comparison) -> list[str]:
    level = f"{100 * comparison.settings.confidence:g} %"
    return ["score", "A", "B", "B - A", f"{level} interval", "B wins", "A wins", "McNemar p"]


def _preamble(comparison: Comparison) -> list[str]:
    return [
        f"A = {comparison.a} ({comparison.a_path})",
        f"B = {comparison.b} ({comparison.b_path})",
        f"{comparison.split}: {comparison.queries} queries, paired bootstrap "
        f"({comparison.settings.resamples} resamples, seed {comparison.settings.seed}), "
        "exact McNemar test on the hits at N (two-sided)",
    ]


def comparison_text(comparison: Comparison) -> str:
    """Aligned plain-text table plus the verdict line."""
    headers, rows = _headers(comparison), _rows(comparison)
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    lines = _preamble(comparison)
    lines.append("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append(f"verdict: {comparison.verdict()}")
    return "\n".join(lines)


def comparison_markdown(comparison: Comparison) -> str:
    """A GitHub pipe table (scores in percent) with the verdict below."""
    headers, rows = _headers(comparison), _rows(comparison)
    lines = [f"**{_md(comparison.b)}** (B) vs **{_md(comparison.a)}** (A) on "
             f"`{comparison.split}`, {comparison.queries} queries", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"Verdict: {_md(comparison.verdict())}."]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$"}


def _tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def comparison_latex(comparison: Comparison) -> str:
    """A booktabs table (``\\usepackage{booktabs}``); the verdict in the caption."""
    headers, rows = _headers(comparison), _rows(comparison)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{_tex(comparison.b)} (B) vs {_tex(comparison.a)} (A) on "
              rf"{_tex(comparison.split)}, {comparison.queries} queries: "
              rf"{_tex(comparison.verdict())}.}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def plot_comparison(loaded: Sequence[LoadedResult], out: str | os.PathLike,
                    settings: BootstrapSettings = BootstrapSettings()) -> Path:
    """Recall@N curves with interval bands, and first-positive ranks of B against A.

    Written with matplotlib's Agg/SVG/PDF canvases (no pyplot); the format follows the
    suffix of ``out`` (.png, .svg, .pdf).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HarnessError("--plot needs matplotlib (install the `leaderboard` extra)") from None
    out = Path(out)
    others = list(loaded[1:])
    figure = Figure(figsize=(4.8 + 3.6 * len(others), 3.6), layout="constrained")
    axes = figure.subplots(1, 1 + len(others), squeeze=False)[0]
    for item in loaded:
        per_query = item.per_query()
        ns = list(item.result.protocol.recall_ns)
        names = [f"recall@{n}" for n in ns]
        values = [100 * float(per_query[name].mean()) for name in names]
        bounds = item.result.intervals if item.result.intervals else \
            score_intervals({k: per_query[k] for k in names}, settings)
        low = [100 * bounds[name][0] for name in names]
        high = [100 * bounds[name][1] for name in names]
        line, = axes[0].plot(ns, values, marker="o", markersize=3, label=item.label)
        axes[0].fill_between(ns, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes[0].set_xscale("log")
    axes[0].set_xticks(ns, [str(n) for n in ns])
    axes[0].minorticks_off()
    axes[0].set_xlabel("N")
    axes[0].set_ylabel("Recall@N (%)")
    axes[0].set_title(f"{loaded[0].result.split} (bands: bootstrap intervals)", fontsize=9)
    axes[0].legend(fontsize=7)
    reference = loaded[0]
    for panel, other in zip(axes[1:], others):
        _rank_scatter(panel, reference, other)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=150)
    return out


def _rank_scatter(axes, a: LoadedResult, b: LoadedResult) -> None:
    """First-positive rank (1-based) of each query under A (x) and B (y); misses at the top."""
    depth = int(max(a.predictions.indices.shape[1], b.predictions.indices.shape[1]))
    missing = depth * 2

    def ranks(item):
        rank = item.predictions.first_positive_rank.astype(np.int64) + 1
        return np.where(rank > 0, rank, missing)

    x, y = ranks(a), ranks(b)
    # Ranks repeat (many queries at rank 1): one marker per (x, y), its area the query count.
    pairs, counts = np.unique(np.stack([x, y], axis=1), axis=0, return_counts=True)
    axes.scatter(pairs[:, 0], pairs[:, 1], s=4 + 4 * counts, alpha=0.5,
                 linewidths=0)
    axes.plot([1, missing], [1, missing], color="gray", linewidth=0.8, linestyle="--")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(f"{a.label}: first positive rank")
    axes.set_ylabel(f"{b.label}: first positive rank")
    better, worse = int(np.count_nonzero(y < x)), int(np.count_nonzero(y > x))
    axes.set_title(f"B better {better}, worse {worse} (not found: {missing})", fontsize=9)
