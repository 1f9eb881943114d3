"""The IOVPR study report: the study run per seed, intervals and paired tests, not hand counts.

``harness iovpr study-report --city DIR --data-root DIR --out DIR [--seeds 43,44] [--readme
README.md]`` runs :func:`methods.iovpr.study.run_study` once per seed (each in
``OUT/seed-<seed>``, cached like the study itself) with the settings in
:data:`REPORT_SETTINGS` unless overridden, then writes ``OUT/report.md``:

* per seed, the Recall@1 / Recall@5 table of every row and query set, Recall@1 with its 95 %
  bootstrap interval (``± half-width``; queries resampled, seed 0 of the bootstrap);
* per seed, every row against the baseline on the two Indoor-Ams sets together: the
  difference of the mean Recall@1 with a paired, stratified bootstrap interval (each set's
  queries resampled within the set, as the benchmark averages the sets), the queries won and
  lost, and the exact McNemar test on the pooled queries, with a verdict at alpha = 0.05.

With ``--readme`` the report replaces the text between the README's
``<!-- iovpr-study:begin -->`` and ``<!-- iovpr-study:end -->`` markers.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.io import write_bytes_atomic

logger = logging.getLogger(__name__)

BASELINE = "sfrs (baseline)"
INDOOR_SETS = ("indoor-ams-1", "indoor-ams-2")
REPORT_SPLITS = ("indoor-ams-1", "indoor-ams-2", "outdoor-ams", "ams30k-test")
DEFAULT_SEEDS = (43, 44)
BEGIN, END = "<!-- iovpr-study:begin -->", "<!-- iovpr-study:end -->"
ALPHA = 0.05


def report_settings() -> dict:
    """The study settings of the README report: the demo's (``methods.iovpr.study.DEMO_STUDY``,
    what ``harness demo`` runs), with the demo's evaluation splits."""
    from methods.iovpr.study import DEMO_EVAL_SPLITS, DEMO_STUDY

    return {**DEMO_STUDY, "eval_splits": tuple(DEMO_EVAL_SPLITS)}


@dataclass(frozen=True)
class PairedRow:
    """One study row against the baseline, both Indoor-Ams sets together, one seed."""

    method: str
    baseline_r1: float
    r1: float
    difference: float
    low: float
    high: float
    won: int
    lost: int
    p_value: float
    queries: int


def paired_against_baseline(rows: Sequence[Mapping], splits: Sequence[str] = INDOOR_SETS,
                            baseline: str = BASELINE) -> list[PairedRow]:
    """Every row with records on all ``splits`` against the baseline row (see module doc)."""
    from harness.compare import check_comparable, load_results
    from harness.stats import BootstrapSettings, paired_scores

    by_label = {row["method"]: row for row in rows}
    if baseline not in by_label:
        raise HarnessError(f"the study has no {baseline!r} row")

    def per_query(row):
        records = row.get("records", {})
        if not all(split in records for split in splits):
            return None
        loaded = load_results([records[split] for split in splits])
        return loaded, [item.per_query() for item in loaded]

    base_loaded, base = per_query(by_label[baseline])
    strata = np.concatenate([np.full(len(q["recall@1"]), i) for i, q in enumerate(base)])
    pooled_base = {"recall@1": np.concatenate([q["recall@1"] for q in base])}
    out = []
    for row in rows:
        if row["method"] == baseline:
            continue
        found = per_query(row)
        if found is None:
            continue
        loaded, scores = found
        for reference, other in zip(base_loaded, loaded):
            check_comparable(reference, other)
        pooled = {"recall@1": np.concatenate([q["recall@1"] for q in scores])}
        paired, = paired_scores(pooled_base, pooled, BootstrapSettings(), strata)
        out.append(PairedRow(
            method=row["method"], baseline_r1=paired.a, r1=paired.b,
            difference=paired.difference, low=paired.low, high=paired.high,
            won=paired.b_only, lost=paired.a_only, p_value=paired.p_value,
            queries=len(strata)))
    return out


def _recall_cell(row: Mapping, split: str) -> str:
    """``R@1 ± half-width / R@5`` from the row's record (intervals) or its stored scores."""
    from harness.results import read_result

    record = row.get("records", {}).get(split)
    if record is None:
        return "-"
    result = read_result(record)
    r1, r5 = result.scores["recall@1"], result.scores.get("recall@5")
    bounds = result.interval("recall@1")
    text = f"{100 * r1:.1f}"
    if bounds is not None:
        text += f" ± {100 * (bounds[1] - bounds[0]) / 2:.1f}"
    return text + ("" if r5 is None else f" / {100 * r5:.1f}")


def seed_section(seed: int, study: Mapping, splits: Sequence[str]) -> list[str]:
    """The tables of one seed's study (``study.json`` content)."""
    from harness.stats import format_p

    rows = study["table"]
    splits = [s for s in splits if any(s in row.get("records", {}) for row in rows)]
    segmentation = study.get("segmentation", {})
    iou = segmentation.get("best_ade_val_window_iou")
    lines = [f"**Seed {seed}**" + ("" if iou is None else
                                  f" (segmenter window IoU on ADE validation {iou:.2f})"), ""]
    lines.append("| method | " + " | ".join(s for s in splits) + " |")
    lines.append("|---|" + "---|" * len(splits))
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(_recall_cell(row, s) for s in splits)
                     + " |")
    lines += ["", "Against the baseline, Indoor-Ams 1 and 2 together (R@1, mean of the sets; "
                  "paired bootstrap 95 % interval; exact McNemar on the pooled queries):", "",
              "| method | baseline | method | difference [95 % interval] | won | lost | p "
              "| verdict |",
              "|---|---:|---:|---|---:|---:|---:|---|"]
    for paired in paired_against_baseline(rows):
        verdict = ("better" if paired.won > paired.lost else "worse") \
            if paired.p_value < ALPHA else "no significant difference"
        lines.append(
            f"| {paired.method} | {100 * paired.baseline_r1:.1f} | {100 * paired.r1:.1f} | "
            f"{100 * paired.difference:+.1f} [{100 * paired.low:+.1f}, {100 * paired.high:+.1f}] | "
            f"{paired.won} | {paired.lost} | {format_p(paired.p_value)} | {verdict} |")
    return lines + [""]


def report_markdown(studies: Mapping[int, Mapping], settings: Mapping, command: str,
                    splits: Sequence[str] = REPORT_SPLITS) -> str:
    """The whole report for ``{seed: study.json content}``."""
    shown = {k: v for k, v in settings.items() if k != "eval_splits"}
    lines = [f"Generated by `{command}` (seeds {', '.join(str(s) for s in studies)}; study "
             f"settings {json.dumps(shown, sort_keys=True)}; every other setting is "
             "`methods.iovpr.study.StudyConfig`'s default). R@1 ± half the 95 % bootstrap "
             "interval / R@5, in percent.", ""]
    for seed, study in studies.items():
        lines += seed_section(seed, study, splits)
    return "\n".join(lines)


def replace_readme_section(readme: Path, text: str) -> None:
    """Put ``text`` between the README's markers (atomically); both markers must exist."""
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise HarnessError(f"no {BEGIN} ... {END} markers to replace", readme)
    updated = pattern.sub(lambda _: f"{BEGIN}\n{text.rstrip()}\n{END}", content, count=1)
    write_bytes_atomic(readme, updated.encode("utf-8"))


def _finished_study(config) -> dict | None:
    """A finished study of exactly ``config`` in its folder (study.json and every record it
    names), so that a rerun only renders the report."""
    from methods.options import config_to_dict

    path = Path(config.out_dir) / "study.json"
    if not path.is_file():
        return None
    study = json.loads(path.read_text(encoding="utf-8"))
    expected = json.loads(json.dumps(config_to_dict(config)))  # tuples as lists, as stored
    records = [r for row in study.get("table", []) for r in row.get("records", {}).values()]
    if study.get("config") != expected or not records or not all(Path(r).is_file()
                                                                    for r in records):
        return None
    logger.info("seed %s: reusing the finished study in %s", config.seed, config.out_dir)
    return study


def run_study_report(city_root: str, data_root: str, out_dir: str, *,
                     seeds: Sequence[int] = DEFAULT_SEEDS, overrides: Mapping | None = None,
                     readme: str | Path | None = None, command: str = "") -> Path:
    """Run (or resume) the study per seed and write ``OUT/report.md``; returns its path."""
    from methods.iovpr.study import make_study_config, run_study

    settings = {**report_settings(), **dict(overrides or {})}
    out = Path(out_dir)
    studies = {}
    for seed in seeds:
        config = make_study_config(city_root=city_root, data_root=data_root,
                                   out_dir=str(out / f"seed-{seed}"), **{**settings, "seed": seed})
        studies[seed] = _finished_study(config) or json.loads(
            run_study(config).path.read_text(encoding="utf-8"))
    command = command or "harness iovpr study-report"
    text = report_markdown(studies, settings, command)
    path = out / "report.md"
    write_bytes_atomic(path, text.encode("utf-8"))
    if readme is not None:
        replace_readme_section(Path(readme), text)
    return path
