"""Leaderboard intervals, "not significantly different from the best", reference rows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.stats import mcnemar_exact
from leaderboard.benchmarks import REAL_BENCHMARKS
from leaderboard.build import build_from_entries, render_readme
from leaderboard.records import TopK, topk_bytes
from leaderboard.reported import REPORTED_LABEL, load_reported, rows_for
from leaderboard.significance import TIE_OVERLAP, TIE_PAIRED, annotate_table
from leaderboard.tables import Entry, latest_entries, make_table, to_csv, to_markdown

QUERIES = 200


def _write_topk(path, first_rank):
    first_rank = np.asarray(first_rank, dtype=np.int32)
    indices = np.zeros((len(first_rank), 20), dtype=np.int32)
    path.write_bytes(topk_bytes(TopK(indices, first_rank, np.ones(len(first_rank), bool))))
    return str(path)


def _entry(tmp_path, method, split, first_rank, intervals=None, with_rankings=True):
    first_rank = np.asarray(first_rank)
    scores = {f"recall@{n}": float(np.mean((first_rank >= 0) & (first_rank < n)))
              for n in (1, 5, 10, 20)}
    path = _write_topk(tmp_path / f"{method}-{split}.topk.npz", first_rank) \
        if with_rankings else None
    return Entry(method=method, split=split, record_id="0" * 16,
                 submitted_at="2025-01-01T00:00:00Z", scores=scores, predictions_path=path,
                 intervals=intervals or {})


def _ranks(hits_at_1: np.ndarray) -> np.ndarray:
    return np.where(hits_at_1, 0, 7)  # a miss at 1 is a hit at 10


def test_paired_tie_marks_against_the_best(tmp_path):
    best = np.arange(QUERIES) < 120  # 60 %
    close = best.copy()
    close[:4] = False  # loses 4 queries the best finds...
    close[150:152] = True  # ...and wins 2: McNemar b = 4, c = 2
    far = np.arange(QUERIES) < 60  # loses 60, wins 0
    entries = [_entry(tmp_path, name, "pitts30k-test", _ranks(hits))
               for name, hits in (("best", best), ("close", close), ("far", far))]
    benchmark = next(b for b in REAL_BENCHMARKS if b.key == "pitts30k")
    table = annotate_table(make_table(benchmark, entries), latest_entries(entries))
    rows = {row.method: row for row in table.rows}
    assert rows["best"].rank == 1 and rows["best"].tie_with_best is None
    assert rows["close"].tie_with_best == TIE_PAIRED
    assert rows["close"].tie_p_value == mcnemar_exact(4, 2) == 0.6875
    assert rows["far"].tie_with_best is None and rows["far"].tie_p_value < 1e-15
    markdown = to_markdown(table)
    assert re.search(r"\|\s+2 ≈ \| close", markdown) and re.search(r"\|\s+3 \| far", markdown)
    csv_text = to_csv(table)
    assert "not_different_from_best" in csv_text.splitlines()[0]


def test_mean_interval_of_a_two_set_benchmark_is_stratified(tmp_path):
    # Set 1 all hits, set 2 all misses: each set is constant, so the stratified interval of
    # the mean is exactly [0.5, 0.5] (pooled resampling would spread around 0.5).
    entries = [_entry(tmp_path, "m", "indoor-ams-1", np.zeros(50)),
               _entry(tmp_path, "m", "indoor-ams-2", np.full(30, -1))]
    benchmark = next(b for b in REAL_BENCHMARKS if b.key == "indoor-ams")
    table = annotate_table(make_table(benchmark, entries), latest_entries(entries))
    assert table.rows[0].intervals["mean/recall@1"] == (0.5, 0.5)
    assert "**50.0** ± 0.0" in to_markdown(table)  # the best of its column, in bold


def test_without_rankings_overlapping_intervals_mark_a_tie(tmp_path):
    best = _entry(tmp_path, "a", "pitts30k-test", _ranks(np.arange(100) < 60),
                  {"recall@1": (0.5, 0.7)}, with_rankings=False)
    near = _entry(tmp_path, "b", "pitts30k-test", _ranks(np.arange(100) < 55),
                  {"recall@1": (0.45, 0.65)}, with_rankings=False)
    apart = _entry(tmp_path, "c", "pitts30k-test", _ranks(np.arange(100) < 20),
                   {"recall@1": (0.12, 0.28)}, with_rankings=False)
    benchmark = next(b for b in REAL_BENCHMARKS if b.key == "pitts30k")
    entries = [best, near, apart]
    rows = {r.method: r for r in annotate_table(make_table(benchmark, entries),
                                                latest_entries(entries)).rows}
    assert rows["b"].tie_with_best == TIE_OVERLAP and rows["c"].tie_with_best is None


def test_reference_rows_are_data_with_sources_and_never_ranked(tmp_path):
    rows = load_reported()
    assert rows and all(row.source.strip() and row.url.startswith("https://") for row in rows)
    sfrs_tokyo = next(r for r in rows if r.method.startswith("SFRS") and r.benchmark == "tokyo247")
    assert (sfrs_tokyo.r1, sfrs_tokyo.r5, sfrs_tokyo.r10) == (85.4, 91.1, 93.3)
    entries = [_entry(tmp_path, "my-method", "pitts30k-test", _ranks(np.arange(100) < 30))]
    output = build_from_entries(entries, tmp_path / "out", plots=False, grids=False)
    readme = output.readme.read_text()
    pitts = readme[readme.index("## Pitts30k test"):readme.index("## Tokyo 24/7")]
    ranked_part, reported_part = pitts.split(f"Published numbers ({REPORTED_LABEL}")
    assert "my-method" in ranked_part and "BoQ" not in ranked_part
    shown = re.sub(r"\\(.)", r"\1", reported_part)  # as GitHub shows the escaped Markdown
    assert all(r.method in shown for r in rows_for(rows, "pitts30k"))
    assert "## Published numbers on benchmarks without a verified table" in readme
    assert (tmp_path / "out" / "tables" / "reported.csv").is_file()
    page = output.page.read_text()
    assert 'class="reported"' in page and "Pitts250k test (published numbers only)" in page
    # Rendering without reference rows leaves no trace of them.
    benchmark = next(b for b in REAL_BENCHMARKS if b.key == "pitts30k")
    plain = render_readme([make_table(benchmark, entries)], records=1, methods=1)
    assert REPORTED_LABEL not in plain.replace('"reported, not reproduced"', "")


def test_reference_rows_need_a_source(tmp_path):
    path = tmp_path / "reported.toml"
    path.write_text('format_version = 1\n[[rows]]\nmethod = "x"\nbenchmark = "pitts30k"\n'
                    'benchmark_title = "P"\nr1 = 50.0\nsource = " "\n')
    with pytest.raises(HarnessError, match="every row needs its source"):
        load_reported(path)
    path.write_text('format_version = 1\n[[rows]]\nmethod = "x"\nbenchmark = "pitts30k"\n'
                    'benchmark_title = "P"\nr1 = 150.0\nsource = "s"\n')
    with pytest.raises(HarnessError, match=str(path)):
        load_reported(path)


def test_recall_curves_carry_interval_bands(tmp_path):
    intervals = {f"recall@{n}": (0.2, 0.4) for n in (1, 5, 10, 20)}
    entries = [_entry(tmp_path, "banded", "pitts30k-test", _ranks(np.arange(100) < 30), intervals),
               _entry(tmp_path, "plain", "pitts30k-test", _ranks(np.arange(100) < 20))]
    build_from_entries(entries, tmp_path / "out", plots=True, grids=False)
    svg = (tmp_path / "out" / "site" / "plots" / "pitts30k.svg").read_text()
    assert svg.count("PolyCollection") >= 1  # one band: only "banded" has intervals
    build_from_entries(entries[1:], tmp_path / "out2", plots=True, grids=False)
    plain = (tmp_path / "out2" / "site" / "plots" / "pitts30k.svg").read_text()
    assert "PolyCollection" not in plain
