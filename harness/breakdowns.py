"""Scores broken down by query condition, by window fraction and by positive radius.

Stored in the record under ``breakdowns`` (``harness show RESULT --by ...`` prints them):

* ``condition``: Recall@N per query condition (Tokyo 24/7 day / sunset / night, MSLS day /
  night). The labels come from the first *condition source* that knows the split: a CSV
  given with ``--query-conditions`` (``name,condition`` per line), then the sources in
  :data:`CONDITION_SOURCES`: MSLS's ``night`` column (``postprocessed.csv`` of each city's
  query folder), then the query names (a path component or a ``_``/``-`` separated token
  that is ``day``, ``sunset`` or ``night``). Tokyo 24/7's released query names
  (``00001.jpg``...) do not carry the time of day, so Tokyo needs the CSV. Another dataset
  adds its own rule with :func:`register_condition_source`.
* ``window_fraction``: Recall@N per bin of the share of window pixels in an indoor query
  (Indoor-Ams), from the true masks where the dataset has them (the synthetic city keeps
  them in ``query_masks/`` beside the query folder) or from masks given with
  ``--window-masks`` (e.g. the window segmenter's predictions, ``harness segment``); the
  record says which.
* ``radius``: Recall@1 against the positive radius (5-100 m): the share of evaluated
  queries whose top-ranked prediction lies within r metres, from the split's UTM positions.
  The denominator is the record's evaluated queries at every r.

Every group also holds its query count; the counts of a breakdown sum to the split's queries
(queries without a label form the group ``unknown``, without a mask ``no mask``).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from harness.errors import HarnessError
from harness.stats import format_interval, per_query_scores, score_intervals

logger = logging.getLogger(__name__)

CONDITION_TOKENS = ("day", "sunset", "night")
UNKNOWN = "unknown"
NO_MASK = "no mask"
RADII_M = (5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100)
WINDOW_BIN_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
MASKS_FOLDER = "query_masks"

#: A condition source: ``split -> (labels (Q,) of str, description)`` or None when it does
#: not know the split's conditions.
ConditionSource = Callable[[object], "tuple[np.ndarray, str] | None"]


def conditions_from_names(split) -> tuple[np.ndarray, str] | None:
    """Labels from condition words in the query names (None when no name has one)."""
    labels = []
    for name in split.query_names:
        tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
        found = [token for token in CONDITION_TOKENS if token in tokens]
        labels.append(found[0] if len(found) == 1 else UNKNOWN)
    labels = np.asarray(labels, dtype=object)
    if not np.any(labels != UNKNOWN):
        return None
    return labels, "query names"


def msls_conditions(split) -> tuple[np.ndarray, str] | None:
    """MSLS day/night from the ``night`` column of each city's ``query/postprocessed.csv``
    (query names ``<city>/query/images/<key>.jpg`` under ``train_val``); None otherwise."""
    parts = [Path(name).parts for name in split.query_names]
    if not parts or not split.query_root or any(
            len(p) != 4 or p[1:3] != ("query", "images") for p in parts):
        return None
    night: dict[tuple[str, str], bool] = {}
    for city in sorted({p[0] for p in parts}):
        path = Path(split.query_root) / city / "query" / "postprocessed.csv"
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    flag = str(row.get("night", "")).strip().lower()
                    night[(city, str(row.get("key", "")))] = flag in ("true", "1", "1.0")
        except FileNotFoundError:
            logger.info("no MSLS day/night labels: %s is missing", path)
            return None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise HarnessError(f"unreadable MSLS file ({exc})", path) from None
    labels = []
    for city, _, _, image in parts:
        flag = night.get((city, Path(image).stem))
        labels.append(UNKNOWN if flag is None else ("night" if flag else "day"))
    return np.asarray(labels, dtype=object), "MSLS postprocessed.csv night column"


#: Tried in order; :func:`register_condition_source` puts a new one first.
CONDITION_SOURCES: list[ConditionSource] = [msls_conditions, conditions_from_names]


def register_condition_source(source: ConditionSource) -> ConditionSource:
    """Add a rule that labels a split's query conditions (tried before the name rule)."""
    CONDITION_SOURCES.insert(0, source)
    return source


def read_conditions_csv(path: str | Path, split) -> np.ndarray:
    """Labels from a ``name,condition`` CSV (a ``name,condition`` header line is allowed)."""
    path = Path(path)
    labels = np.full(split.num_queries, UNKNOWN, dtype=object)
    index = split.query_index
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.reader(handle), start=1):
                header = line_number == 1 and [c.strip() for c in row] == ["name", "condition"]
                if not row or header:
                    continue
                if len(row) != 2 or not row[1].strip():
                    raise HarnessError(f"line {line_number}: expected name,condition", path)
                name, condition = row[0].strip(), row[1].strip()
                if name not in index:
                    raise HarnessError(f"line {line_number}: {name!r} is not a query of split "
                                       f"{split.name}", path)
                labels[index[name]] = condition
    except FileNotFoundError:
        raise HarnessError("query conditions file not found", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HarnessError(f"unreadable query conditions file ({exc})", path) from None
    return labels


def query_conditions(split, conditions_file: str | Path | None = None
                     ) -> tuple[np.ndarray, str] | None:
    """(labels, source) of the split's query conditions, or None when nothing knows them."""
    if conditions_file is not None:
        return read_conditions_csv(conditions_file, split), f"file {Path(conditions_file).name}"
    for source in CONDITION_SOURCES:
        found = source(split)
        if found is not None:
            return found
    return None


def default_masks_dir(split) -> Path | None:
    """The true masks beside the query folder (``<query root>/../query_masks``), if any."""
    if not split.query_root:
        return None
    folder = Path(split.query_root).parent / MASKS_FOLDER
    return folder if folder.is_dir() else None


def window_fractions(split, masks_dir: str | Path) -> np.ndarray | None:
    """Share of window pixels of every query (NaN without a mask); None when no mask exists.

    A mask is ``<masks_dir>/<query name with .png>``, 8-bit gray, window pixels >= 128.
    """
    masks_dir = Path(masks_dir)
    fractions = np.full(split.num_queries, np.nan)
    for row, name in enumerate(split.query_names):
        path = masks_dir / Path(name).with_suffix(".png")
        if not path.is_file():
            continue
        try:
            with Image.open(path) as image:
                values = np.asarray(image.convert("L"))
        except OSError as exc:
            raise HarnessError(f"unreadable window mask ({exc})", path) from None
        fractions[row] = float(np.count_nonzero(values >= 128)) / max(1, values.size)
    return None if np.all(np.isnan(fractions)) else fractions


def window_bins(fractions: np.ndarray, edges: Sequence[float] = WINDOW_BIN_EDGES
                ) -> tuple[np.ndarray, list[str]]:
    """(labels, ordered bin names) of window fractions; NaN goes to ``no mask``."""
    names = [f"{100 * lo:.0f}-{100 * hi:.0f}%" for lo, hi in zip(edges[:-1], edges[1:])]
    labels = np.full(len(fractions), NO_MASK, dtype=object)
    known = ~np.isnan(fractions)
    # Bins are [lo, hi), the last one closed: a mask that is all window lands in it.
    which = np.clip(np.searchsorted(edges, fractions[known], side="right") - 1, 0, len(names) - 1)
    labels[known] = np.asarray(names, dtype=object)[which]
    return labels, names + [NO_MASK]


def group_scores(labels: np.ndarray, order: Sequence[str], first_positive_rank: np.ndarray,
                 has_positive: np.ndarray, *, recall_ns: Sequence[int], no_positive: str,
                 settings=None) -> dict[str, dict]:
    """Per group (in ``order``, empty groups left out): query counts, Recall@N, intervals."""
    groups = {}
    for label in order:
        member = labels == label
        count = int(np.count_nonzero(member))
        if not count:
            continue
        per_query = per_query_scores(first_positive_rank[member], has_positive[member],
                                     recall_ns, no_positive)
        evaluated = len(next(iter(per_query.values())))
        group: dict = {"queries": count, "evaluated": evaluated}
        if evaluated:
            group["scores"] = {name: float(v.mean()) for name, v in per_query.items()}
            if settings is not None:
                group["intervals"] = {name: list(bounds) for name, bounds in
                                      score_intervals(per_query, settings).items()}
        groups[label] = group
    return groups


def radius_curve(split, top1: np.ndarray, evaluated: np.ndarray,
                 radii: Sequence[float] = RADII_M) -> dict:
    """Recall@1 at each radius: share of evaluated queries whose top-1 is within r metres."""
    top1 = np.asarray(top1, dtype=np.int64)
    distance = np.full(len(top1), np.inf)
    found = top1 >= 0
    distance[found] = np.linalg.norm(
        split.query_utm[found] - split.database_utm[top1[found]], axis=1)
    distance = distance[np.asarray(evaluated, bool)]
    total = max(1, len(distance))
    return {
        "radii_m": [float(r) for r in radii],
        "recall@1": [float(np.count_nonzero(distance <= r) / total) for r in radii],
        "evaluated": int(len(distance)),
    }


def compute_breakdowns(split, metrics, protocol, *, settings=None,
                       conditions_file: str | Path | None = None,
                       masks_dir: str | Path | None = None, masks_kind: str = "true") -> dict:
    """Every breakdown the split supports (see the module docstring)."""
    common = dict(recall_ns=protocol.recall_ns, no_positive=protocol.no_positive,
                  settings=settings)
    rank, has_positive = metrics.first_positive_rank, metrics.has_positive
    out: dict = {}
    conditions = query_conditions(split, conditions_file)
    if conditions is not None:
        labels, source = conditions
        order = [c for c in CONDITION_TOKENS if c in set(labels)]
        order += sorted(set(labels) - set(order) - {UNKNOWN}) + [UNKNOWN]
        out["condition"] = {"source": source,
                            "groups": group_scores(labels, order, rank, has_positive, **common)}
    if masks_dir is None:
        masks_dir, masks_kind = default_masks_dir(split), "true"
    if masks_dir is not None:
        fractions = window_fractions(split, masks_dir)
        if fractions is not None:
            labels, order = window_bins(fractions)
            out["window_fraction"] = {
                "source": f"{masks_kind} masks", "bin_edges": list(WINDOW_BIN_EDGES),
                "groups": group_scores(labels, order, rank, has_positive, **common)}
    out["radius"] = radius_curve(split, metrics.ranking[:, 0], metrics.evaluated)
    return out


def breakdown_table(breakdowns: Mapping, by: str, recall_ns: Sequence[int] = (1, 5, 10),
                    bootstrap: Mapping | None = None) -> str:
    """Text table of one stored breakdown (``condition``, ``window_fraction`` or ``radius``)."""
    if by not in breakdowns:
        known = ", ".join(sorted(breakdowns)) or "none (a schema-1 record: evaluate it again)"
        raise HarnessError(f"the record has no {by!r} breakdown; it has: {known}")
    data = breakdowns[by]
    if by == "radius":
        lines = [f"Recall@1 against the positive radius ({data['evaluated']} queries)",
                 f"{'radius m':>9}  {'R@1':>6}"]
        lines += [f"{r:9g}  {100 * v:6.1f}" for r, v in zip(data["radii_m"], data["recall@1"])]
        return "\n".join(lines)
    ns = [n for n in recall_ns if any(f"recall@{n}" in g.get("scores", {})
                                      for g in data["groups"].values())]
    title = {"condition": "query condition", "window_fraction": "window fraction"}.get(by, by)
    level = f"{100 * bootstrap['confidence']:g} % intervals" if bootstrap else "intervals"
    lines = [f"Recall@N by {title} (from {data['source']}; {level} as value ± half-width)"]
    header = f"{'group':<12} {'queries':>7}  " + "  ".join(f"{'R@' + str(n):>12}" for n in ns)
    lines.append(header)
    for label, group in data["groups"].items():
        cells = []
        for n in ns:
            name = f"recall@{n}"
            value = group.get("scores", {}).get(name)
            bounds = group.get("intervals", {}).get(name)
            if value is None:
                cells.append(f"{'-':>12}")
            elif bounds is None:
                cells.append(f"{100 * value:12.1f}")
            else:
                cells.append(f"{format_interval(value, *bounds):>12}")
        lines.append(f"{label:<12} {group['queries']:>7}  " + "  ".join(cells))
    return "\n".join(lines)
