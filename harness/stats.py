"""Uncertainty of retrieval scores: query bootstrap intervals and paired tests.

Every score of a record (Recall@N, mAP@K) is a mean over the evaluated queries of a per-query
value (a hit at N, an AP). Its uncertainty comes from which queries the benchmark happens to
hold, so the intervals resample *queries*:

* **Bootstrap interval** (percentile method): draw ``resamples`` sets of Q queries with
  replacement (a fixed seed: the same split, seed and settings give the same interval on any
  machine), take the score of each, and report the ``(1 - confidence) / 2`` and
  ``(1 + confidence) / 2`` quantiles (numpy's default linear interpolation). A benchmark made
  of several query sets whose score is the mean of the sets' scores (Indoor-Ams 1 and 2) is
  resampled within each set (a stratified bootstrap), and the statistic is that mean.
* **Paired bootstrap**: two methods on the same queries share the same resampled sets; the
  interval of the difference of their scores comes from the per-query differences.
* **Exact McNemar test** on the hits at N: of the queries where exactly one method hits,
  ``b`` favour A and ``c`` favour B; under "no difference" ``b ~ Binomial(b + c, 1/2)``, and
  the two-sided p-value is ``min(1, 2 * P[X <= min(b, c)])``, computed with exact integers.

All resampling is vectorised: per chunk of resamples a (chunk, Q) matrix of draw counts
multiplies the (Q, M) matrix of per-query values, so 1000 resamples of 10,000 queries take a
fraction of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np

from harness.errors import HarnessError

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
DEFAULT_ALPHA = 0.05
# Draw counts held at once (resamples x queries); bounds memory to ~16 MB per chunk.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed; stored in every record next to its intervals."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = DEFAULT_SEED
    method: str = "percentile"
    unit: str = "query"

    def __post_init__(self):
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) \
                or self.resamples < 1:
            raise HarnessError(
                f"bootstrap resamples must be a positive integer, got {self.resamples!r}")
        if not 0.0 < float(self.confidence) < 1.0:
            raise HarnessError(f"bootstrap confidence must be in (0, 1), got {self.confidence!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise HarnessError(f"bootstrap seed must be a non-negative integer, got {self.seed!r}")
        if self.method != "percentile" or self.unit != "query":
            raise HarnessError("only the percentile bootstrap over queries is implemented")

    def to_dict(self) -> dict:
        return {"resamples": self.resamples, "confidence": float(self.confidence),
                "seed": self.seed, "method": self.method, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: Mapping) -> "BootstrapSettings":
        if not isinstance(data, Mapping) or set(data) - {"resamples", "confidence", "seed",
                                                         "method", "unit"}:
            raise HarnessError(f"bootstrap settings: expected resamples, confidence, seed, "
                               f"method, unit; got {data!r}")
        return cls(**dict(data))


def _as_matrix(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"per-query values must be (Q,) or (Q, M), got shape {values.shape}")
    return values


def _stratum_means(values: np.ndarray, settings: BootstrapSettings, stream: int) -> np.ndarray:
    """(resamples, M) means of ``values`` (n, M) over resampled query sets of size n."""
    n = values.shape[0]
    if n == 0:
        raise HarnessError("cannot bootstrap a score over zero queries")
    rng = np.random.default_rng([settings.seed, stream])
    chunk = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty((settings.resamples, values.shape[1]), dtype=np.float64)
    for start in range(0, settings.resamples, chunk):
        rows = min(chunk, settings.resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        # Counts of each query in each resample: one bincount over row-offset draws.
        draws += (np.arange(rows) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)
        out[start:start + rows] = counts @ values
    out /= n
    return out


def bootstrap_distribution(values, settings: BootstrapSettings = BootstrapSettings(),
                           strata: Sequence | None = None) -> np.ndarray:
    """Resampled scores: (resamples, M), a score being a mean of per-query ``values``.

    Args:
        values: (Q,) or (Q, M) per-query values (hits as 0/1, APs, paired differences).
        settings: resamples, seed (the same arguments always give the same numbers).
        strata: (Q,) labels; each stratum is resampled within itself and the score is the
            mean of the strata's means (a benchmark whose score is the mean of its query sets).
    """
    values = _as_matrix(values)
    if strata is None:
        return _stratum_means(values, settings, 0)
    strata = np.asarray(strata)
    if strata.shape != (values.shape[0],):
        raise ValueError(f"strata must be ({values.shape[0]},), got {strata.shape}")
    labels = sorted(set(strata.tolist()), key=str)
    total = np.zeros((settings.resamples, values.shape[1]), dtype=np.float64)
    for stream, label in enumerate(labels):
        total += _stratum_means(values[strata == label], settings, stream)
    return total / len(labels)


def point_estimate(values, strata: Sequence | None = None) -> np.ndarray:
    """The score itself: the mean (or the mean of the strata's means). (M,)"""
    values = _as_matrix(values)
    if strata is None:
        return values.mean(axis=0)
    strata = np.asarray(strata)
    labels = sorted(set(strata.tolist()), key=str)
    return np.mean([values[strata == label].mean(axis=0) for label in labels], axis=0)


def percentile_interval(distribution: np.ndarray, confidence: float) -> np.ndarray:
    """(M, 2) low/high quantiles of a (resamples, M) bootstrap distribution."""
    tail = (1.0 - float(confidence)) / 2.0
    bounds = np.quantile(np.asarray(distribution, dtype=np.float64), [tail, 1.0 - tail], axis=0)
    return bounds.T


def bootstrap_interval(values, settings: BootstrapSettings = BootstrapSettings(),
                       strata: Sequence | None = None) -> np.ndarray:
    """(M, 2) percentile interval of the mean of ``values`` (see the module docstring)."""
    distribution = bootstrap_distribution(values, settings, strata)
    return percentile_interval(distribution, settings.confidence)


def score_intervals(per_query: Mapping[str, np.ndarray],
                    settings: BootstrapSettings = BootstrapSettings(),
                    strata: Sequence | None = None) -> dict[str, tuple[float, float]]:
    """``{score name: (low, high)}`` for per-query values of several scores on one query set.

    All scores share the resampled query sets (one matrix product).
    """
    names = list(per_query)
    if not names:
        return {}
    matrix = np.stack([np.asarray(per_query[name], dtype=np.float64) for name in names], axis=1)
    bounds = bootstrap_interval(matrix, settings, strata)
    # The rounding the records use keeps a degenerate interval exactly degenerate.
    return {name: (float(low), float(high)) for name, (low, high) in zip(names, bounds)}


# --------------------------------------------------------------------------------------------
# Per-query outcomes of one result


def per_query_scores(first_positive_rank, has_positive, recall_ns: Sequence[int],
                     no_positive: str, average_precision=None,
                     map_k: int | None = None) -> dict[str, np.ndarray]:
    """Per evaluated query: ``recall@N`` hits (0/1) and ``map@K`` APs when given.

    The means of these vectors are the record's scores; queries outside the denominators
    (policy ``exclude``: queries without a positive) are left out.
    """
    rank = np.asarray(first_positive_rank, dtype=np.int64)
    has_positive = np.asarray(has_positive, dtype=bool)
    evaluated = has_positive if no_positive == "exclude" else np.ones(rank.shape, bool)
    rank = rank[evaluated]
    found = rank >= 0
    scores = {f"recall@{int(n)}": (found & (rank < int(n))).astype(np.float64)
              for n in recall_ns}
    if average_precision is not None and map_k is not None:
        ap = np.asarray(average_precision, dtype=np.float64)
        scores[f"map@{int(map_k)}"] = ap[evaluated]
    return scores


# --------------------------------------------------------------------------------------------
# Paired tests


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    ``2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)``, capped at 1 (1 when b + c = 0),
    computed with exact integers.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


@dataclass(frozen=True)
class PairedScore:
    """One score of B against A on the same queries."""

    score: str  # "recall@N" or "map@K"
    a: float
    b: float
    difference: float  # b - a
    low: float  # paired bootstrap interval of the difference
    high: float
    a_only: int | None = None  # queries A hits and B misses (recall only)
    b_only: int | None = None
    p_value: float | None = None  # exact McNemar (recall only)

    def significant(self, alpha: float = DEFAULT_ALPHA) -> bool:
        return self.p_value is not None and self.p_value < alpha


def paired_scores(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                  settings: BootstrapSettings = BootstrapSettings(),
                  strata: Sequence | None = None) -> list[PairedScore]:
    """Every score both sides have: difference, paired bootstrap interval, McNemar for recalls.

    ``a`` and ``b`` are :func:`per_query_scores` of two results on the same queries (same
    order). ``strata`` as in :func:`bootstrap_distribution` (the McNemar test pools them).
    """
    names = [name for name in a if name in b]
    if not names:
        return []
    lengths = {len(a[name]) for name in names} | {len(b[name]) for name in names}
    if len(lengths) != 1:
        raise HarnessError(f"paired scores need the same queries on both sides, got {lengths}")
    diff = np.stack([np.asarray(b[n], np.float64) - np.asarray(a[n], np.float64)
                     for n in names], axis=1)
    bounds = bootstrap_interval(diff, settings, strata)
    a_means = point_estimate(np.stack([a[n] for n in names], axis=1), strata)
    b_means = point_estimate(np.stack([b[n] for n in names], axis=1), strata)
    out = []
    for index, name in enumerate(names):
        a_only = b_only = p_value = None
        if name.startswith("recall@"):
            hit_a, hit_b = np.asarray(a[name]) > 0, np.asarray(b[name]) > 0
            a_only = int(np.count_nonzero(hit_a & ~hit_b))
            b_only = int(np.count_nonzero(hit_b & ~hit_a))
            p_value = mcnemar_exact(a_only, b_only)
        out.append(PairedScore(
            score=name, a=float(a_means[index]), b=float(b_means[index]),
            difference=float(b_means[index] - a_means[index]),
            low=float(bounds[index, 0]), high=float(bounds[index, 1]),
            a_only=a_only, b_only=b_only, p_value=p_value,
        ))
    return out


def verdict(paired: PairedScore, name_a: str = "A", name_b: str = "B",
            alpha: float = DEFAULT_ALPHA) -> str:
    """One line: ``B > A at R@1, p = 0.003`` or ``no significant difference at R@1 ...``."""
    label = score_label(paired.score)
    if paired.p_value is None:
        raise ValueError("a verdict needs a McNemar p-value (a recall score)")
    if paired.significant(alpha):
        better, worse = (name_b, name_a) if paired.b_only > paired.a_only else (name_a, name_b)
        return f"{better} > {worse} at {label}, p = {format_p(paired.p_value)}"
    return (f"no significant difference at {label} (p = {format_p(paired.p_value)}, "
            f"alpha = {alpha:g})")


def format_p(p: float) -> str:
    """p-values as papers print them: 3 significant digits, ``< 0.001`` below that."""
    if p < 0.001:
        return "< 0.001" if p >= 1e-300 else "< 1e-300"
    return f"{p:.3g}" if p < 0.1 else f"{p:.2f}"


def score_label(name: str) -> str:
    """``recall@1`` -> ``R@1``, ``map@100`` -> ``mAP@100``."""
    kind, _, n = name.partition("@")
    return f"R@{n}" if kind == "recall" else f"mAP@{n}"


def format_interval(value: float, low: float, high: float, style: str = "pm") -> str:
    """Percent text of a score and its interval: ``61.3 ± 2.1`` or ``61.3 [59.2, 63.4]``.

    ``±`` is half the interval's width (percentile intervals may be asymmetric; the bracket
    style shows both ends).
    """
    if style == "pm":
        return f"{100 * value:.1f} ± {100 * (high - low) / 2:.1f}"
    if style == "bracket":
        return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    raise ValueError(f"unknown interval style {style!r}")
