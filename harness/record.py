"""Metrics -> record: score a complete top-K on a split and build the :class:`EvalResult`.

The last step of every evaluation: feature files (:mod:`harness.evaluate`), merged SLURM shards
(:mod:`slurm.evaluate`) and ranking submissions (:mod:`harness.sources.rankings`) all end here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from harness import __version__
from harness.breakdowns import compute_breakdowns
from harness.config import EvalConfig
from harness.efficiency import efficiency_section
from harness.errors import HarnessError
from harness.ground_truth import positives_within_radius
from harness.hardware import hardware_facts, machine_description, peak_rss_bytes
from harness.metrics import compute_metrics, database_places
from harness.provenance import harness_git_commit, utc_now
from harness.results import (
    Counts,
    EvalResult,
    FileDigest,
    Hardware,
    Predictions,
    Timings,
)
from harness.search import TopK
from harness.splits import Split
from harness.stats import per_query_scores, score_intervals

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SearchOutput:
    """What a search found, with what the record needs about its inputs: the one object that
    goes from the search (:func:`harness.evaluate.search_features`, a merge of SLURM shards, a
    ranking file) to :func:`build_record`.

    ``digests``/``checksum_s``: the sha256 of every feature file and the seconds spent hashing
    (empty when checksums are off); ``extraction``:
    :func:`harness.efficiency.extraction_summary` of the feature files.
    """

    topk: TopK
    paths: tuple[Path, ...]
    method: str
    method_attrs: Mapping[str, object]
    descriptor_dim: int
    descriptor_dtype: str
    search_backend: str
    load_s: float
    search_s: float
    warnings: tuple[str, ...] = field(default=())
    database_rows: int = 0
    descriptor_dtypes: tuple[str, ...] = field(default=())
    extraction: Mapping[str, object] = field(default_factory=dict)
    digests: tuple[FileDigest, ...] = field(default=())
    checksum_s: float = 0.0


def build_record(
    split: Split,
    output: SearchOutput,
    config: EvalConfig = EvalConfig(),
    *,
    method: str | None = None,
    started: float | None = None,
    peak_scope: str = "process",
    peak_bytes: int = 0,
    positives=None,
) -> EvalResult:
    """Score ``output``'s top-K on ``split`` (the metrics) and build the record.

    ``method`` overrides the files' method name; ``started`` is when the evaluation began
    (for ``timings.total_s``); ``peak_scope`` says what the peak memory covers
    (``evaluation`` when :func:`harness.evaluate.evaluate` could reset the process's
    high-water mark first, ``process`` otherwise, ``largest task`` for a sharded evaluation,
    whose tasks' peaks come in ``peak_bytes``). ``positives``: the split's positives at the
    protocol's radius when already computed (e.g. beside the search).
    """
    started = time.perf_counter() if started is None else started
    topk, descriptor_dim, search_s = output.topk, output.descriptor_dim, output.search_s
    protocol = config.protocol(split)
    if topk.num_queries != split.num_queries:
        raise HarnessError(
            f"top-K holds {topk.num_queries} queries, split {split.name} has {split.num_queries}"
        )
    if topk.k < protocol.k:
        raise HarnessError(f"top-K holds {topk.k} ranks; this protocol needs {protocol.k}")
    metrics_started = time.perf_counter()
    if positives is None or positives.radius_m != protocol.radius_m:
        positives = positives_within_radius(split.database_utm, split.query_utm,
                                            protocol.radius_m)
    places = database_places(split.database_utm) if protocol.spatial_nms else None
    metrics = compute_metrics(
        topk.indices[:, : protocol.k],
        positives,
        recall_ns=protocol.recall_ns,
        map_k=protocol.map_k,
        no_positive=protocol.no_positive,
        places=places,
        nms_pool=protocol.nms_pool,
    )
    intervals, bootstrap, breakdowns = _uncertainty(split, metrics, protocol, config)
    metrics_s = time.perf_counter() - metrics_started
    facts = hardware_facts()
    peak = max(peak_rss_bytes(), int(peak_bytes))
    efficiency = efficiency_section(
        num_queries=split.num_queries, database_rows=split.num_database, dim=descriptor_dim,
        dtype=output.descriptor_dtype, search_s=search_s, search_backend=output.search_backend,
        search_hardware=machine_description(gpus="gpu" in output.search_backend
                                            or "cuda" in output.search_backend),
        extraction=output.extraction or {
            "ms_per_image": None, "unknown": "no feature file with an extraction timing given"},
        peak_rss_bytes=peak, peak_scope=peak_scope,
    )
    if metrics.queries_without_positive:
        logger.warning(
            "%d of %d queries have no positive within %.1f m (policy %r)",
            metrics.queries_without_positive,
            split.num_queries,
            protocol.radius_m,
            protocol.no_positive,
        )
    return EvalResult(
        split=split.name,
        split_sha256=split.sha256,
        method=method or output.method or "unknown",
        scores=metrics.scores,
        main_score=f"recall@{min(protocol.recall_ns)}",  # recall@1 unless N=1 was left out
        protocol=protocol,
        counts=Counts(
            queries=split.num_queries,
            database=split.num_database,
            queries_without_positive=metrics.queries_without_positive,
            evaluated_queries=metrics.evaluated_queries,
        ),
        features=tuple(output.digests),
        descriptor_dim=int(descriptor_dim),
        descriptor_dtype=output.descriptor_dtype,
        search_backend=output.search_backend,
        timings=Timings(
            load_s=output.load_s, checksum_s=output.checksum_s, search_s=search_s,
            metrics_s=metrics_s,
            total_s=time.perf_counter() - started,
        ),
        peak_rss_bytes=peak,
        hardware=Hardware(**{**facts, "gpus": tuple(facts["gpus"])}),
        harness_version=__version__,
        git_commit=harness_git_commit(),
        date=utc_now(),
        method_attrs=dict(output.method_attrs or {}),
        intervals=intervals,
        bootstrap=bootstrap,
        breakdowns=breakdowns,
        efficiency=efficiency,
        prediction_data=Predictions(
            indices=topk.indices,
            scores=topk.scores,
            first_positive_rank=metrics.first_positive_rank.astype(np.int32),
            has_positive=metrics.has_positive,
            average_precision=metrics.average_precision.astype(np.float32),
        ),
    )


def _uncertainty(split: Split, metrics, protocol, config: EvalConfig):
    """Bootstrap intervals of every score and the breakdowns (see harness.stats and
    harness.breakdowns): (intervals, bootstrap settings as a dict or None, breakdowns)."""
    settings = config.bootstrap_settings()
    intervals: dict = {}
    if settings is not None:
        per_query = per_query_scores(
            metrics.first_positive_rank, metrics.has_positive, protocol.recall_ns,
            protocol.no_positive, metrics.average_precision, protocol.map_k)
        intervals = score_intervals(per_query, settings)
    breakdowns = {}
    if config.breakdowns:
        breakdowns = compute_breakdowns(
            split, metrics, protocol, settings=settings,
            conditions_file=config.query_conditions, masks_dir=config.window_masks,
            masks_kind=config.window_masks_kind)
    return intervals, None if settings is None else settings.to_dict(), breakdowns
