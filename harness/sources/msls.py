"""Mapillary SLS (MSLS) in its official layout, with the official validation protocol.

Layout (mapillary/mapillary_sls README)::

    <root>/train_val/<city>/{query,database}/
        images/<key>.jpg
        postprocessed.csv   ,key,easting,northing,night,control_panel,view_direction,unique_cluster
        raw.csv             ,key,lon,lat,ca,captured_at,pano
        subtask_index.csv   ,all,s2w,w2s,o2n,n2o,d2n,n2d        (booleans)
        seq_info.csv        ,key,sequence_key,frame_number

The protocol of the official ``evaluate.py`` (``mapillary_sls/datasets/msls.py``, mode
``val``, task ``im2im``), applied per city and per part:

- rows are kept whose ``subtask_index.csv`` column ``all`` (the ``--subtask`` default) is true
  and whose ``raw.csv`` ``pano`` is false (panoramas are excluded); the three CSVs are aligned
  by row position, as the official code reads them;
- positives are database images within 25 m UTM (``--threshold``; boundary included, as
  scikit-learn's ``radius_neighbors``; there is no angle criterion);
- only queries with at least one positive are scored: the others are left out of the split.

On the validation cities ``cph`` and ``sf`` this gives the 740-query / 18,871-image MSLS-val
that papers report. Image names are ``<city>/<part>/images/<key>.jpg`` relative to
``<root>/train_val``; the MSLS key of an image is the stem of its name.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.ground_truth import positives_within_radius
from harness.splits import DEFAULT_RECALL_NS, Split, register_split

logger = logging.getLogger(__name__)

VAL_CITIES = ("cph", "sf")
PARTS = {"query": "queries", "database": "database"}
SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")
DEFAULT_THRESHOLD_M = 25.0
_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no", ""}


def _read_csv(path: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    """The named columns of an MSLS CSV (first column: the row index), in row order."""
    if not path.is_file():
        raise HarnessError("MSLS file not found", path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HarnessError(f"not a readable CSV file ({exc})", path) from None
    if not rows:
        raise HarnessError("empty CSV file (no header)", path)
    header = rows[0]
    missing = [c for c in columns if c not in header]
    if missing:
        raise HarnessError(f"CSV lacks the columns {missing} (has {header})", path)
    where = {c: header.index(c) for c in columns}
    out: dict[str, list[str]] = {c: [] for c in columns}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise HarnessError(f"line {number} has {len(row)} fields, the header {len(header)}",
                               path)
        for column, index in where.items():
            out[column].append(row[index].strip())
    return out


def _flags(values: list[str], column: str, path: Path) -> np.ndarray:
    flags = np.empty(len(values), dtype=bool)
    for row, value in enumerate(values):
        text = value.lower()
        if text in _TRUE:
            flags[row] = True
        elif text in _FALSE:
            flags[row] = False
        else:
            raise HarnessError(f"column {column!r} row {row}: {value!r} is not a boolean", path)
    return flags


def _coordinates(values: list[str], column: str, path: Path) -> np.ndarray:
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError as exc:
        raise HarnessError(f"column {column!r}: {exc}", path) from None
    if not np.all(np.isfinite(numbers)):
        raise HarnessError(f"column {column!r} holds non-finite values", path)
    return numbers


def read_msls_part(folder: Path, subtask: str = "all") -> tuple[list[str], np.ndarray]:
    """Keys and UTM of one ``<city>/<query|database>`` folder after the subtask and
    panorama filters (row order of the CSVs)."""
    post = _read_csv(folder / "postprocessed.csv", ("key", "easting", "northing"))
    raw = _read_csv(folder / "raw.csv", ("key", "pano"))
    index = _read_csv(folder / "subtask_index.csv", (subtask,))
    count = len(post["key"])
    for name, table in (("raw.csv", raw["key"]), ("subtask_index.csv", index[subtask])):
        if len(table) != count:
            raise HarnessError(f"{name} has {len(table)} rows, postprocessed.csv {count} "
                               "(the files are aligned by row)", folder / name)
    mismatch = next((i for i in range(count) if raw["key"][i] != post["key"][i]), None)
    if mismatch is not None:
        raise HarnessError(f"row {mismatch}: key {raw['key'][mismatch]!r} differs from "
                           f"postprocessed.csv's {post['key'][mismatch]!r}", folder / "raw.csv")
    keep = _flags(index[subtask], subtask, folder / "subtask_index.csv")
    keep &= ~_flags(raw["pano"], "pano", folder / "raw.csv")
    utm = np.stack([_coordinates(post["easting"], "easting", folder / "postprocessed.csv"),
                    _coordinates(post["northing"], "northing", folder / "postprocessed.csv")],
                   axis=1) if count else np.zeros((0, 2))
    keys = [k for k, kept in zip(post["key"], keep) if kept]
    return keys, utm[keep]


def split_from_msls(
    name: str,
    root: str | os.PathLike,
    *,
    cities: Sequence[str] = VAL_CITIES,
    threshold_m: float = DEFAULT_THRESHOLD_M,
    subtask: str = "all",
    recall_ns: Sequence[int] | None = None,
    description: str = "",
):
    """The MSLS validation split of ``cities`` under the official protocol (not registered).

    ``root`` holds ``train_val/``. Queries without a positive are left out (the official
    evaluation scores only queries with one); how many were left out is logged and kept in
    the split's ``source``.
    """
    if subtask not in SUBTASKS:
        raise HarnessError(f"unknown MSLS subtask {subtask!r}; one of {SUBTASKS}")
    base = Path(root).expanduser() / "train_val"
    if not base.is_dir():
        raise HarnessError("not an MSLS root: it has no train_val/ folder", Path(root))
    names = {"query": [], "database": []}
    utms = {"query": [], "database": []}
    city_of = {"query": [], "database": []}
    dropped = 0
    for number, city in enumerate(cities):
        parts = {}
        for part in PARTS:
            folder = base / city / part
            if not folder.is_dir():
                raise HarnessError(f"MSLS city {city!r} has no {part}/ folder", folder)
            parts[part] = read_msls_part(folder, subtask)
        (q_keys, q_utm), (db_keys, db_utm) = parts["query"], parts["database"]
        has_positive = positives_within_radius(db_utm, q_utm, threshold_m).has_positive
        dropped += int(np.count_nonzero(~has_positive))
        q_keys = [k for k, kept in zip(q_keys, has_positive) if kept]
        logger.info("MSLS %s: %d scored queries (%d without a positive left out), %d database "
                    "images", city, len(q_keys), int(np.count_nonzero(~has_positive)),
                    len(db_keys))
        for part, keys, utm in (("query", q_keys, q_utm[has_positive]),
                                ("database", db_keys, db_utm)):
            names[part] += [f"{city}/{part}/images/{key}.jpg" for key in keys]
            utms[part].append(utm)
            city_of[part] += [number] * len(keys)
    arrays = {}
    for part in PARTS:
        utm = np.concatenate(utms[part]) if utms[part] else np.zeros((0, 2))
        order = sorted(range(len(names[part])), key=names[part].__getitem__)
        arrays[part] = (tuple(names[part][i] for i in order), utm[order],
                        np.asarray(city_of[part], dtype=np.int64)[order])
    _check_cities_apart(arrays, threshold_m, base)
    train_val = str(base.resolve())
    return Split(
        name=name,
        query_names=arrays["query"][0],
        database_names=arrays["database"][0],
        query_utm=arrays["query"][1],
        database_utm=arrays["database"][1],
        radius_m=float(threshold_m),
        recall_ns=tuple(recall_ns or DEFAULT_RECALL_NS),
        query_root=train_val,
        database_root=train_val,
        description=description or (
            f"MSLS {'+'.join(cities)} ({subtask}), official protocol, {threshold_m:g} m"),
        source=(f"{train_val}:msls:{','.join(cities)}:{subtask}",
                f"queries without a positive left out: {dropped}"),
    )


def _check_cities_apart(arrays, threshold_m: float, base: Path) -> None:
    """Cities in different UTM zones could overlap numerically; the official code finds
    positives per city, so a positive across cities would be wrong: refuse it."""
    (_, q_utm, q_city), (_, db_utm, db_city) = arrays["query"], arrays["database"]
    positives = positives_within_radius(db_utm, q_utm, threshold_m)
    query_of = np.repeat(np.arange(len(q_city)), positives.counts)
    crossing = np.flatnonzero(db_city[positives.indices] != q_city[query_of])
    if crossing.size:
        query = arrays["query"][0][int(query_of[crossing[0]])]
        raise HarnessError(f"query {query} has a positive in another city (UTM zones overlap "
                           "numerically); evaluate those cities separately", base)


def import_msls_split(name: str, root, *, data_root=None, **options) -> Path:
    """Build the MSLS split and register it; returns the split file's path."""
    return register_split(split_from_msls(name, root, **options), data_root)


# ------------------------------------------------------------------ the prediction file


def read_msls_predictions(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """Rows ``(query_key, [db_key, ...])`` of an MSLS prediction file.

    One query per line, keys separated by spaces; ``#`` starts a comment (the official
    checker reads the file with ``np.loadtxt``). Comma-joined sequence keys (the seq2X
    tasks) are refused: only image-to-image predictions are scored.
    """
    path = Path(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                tokens = line.split("#", 1)[0].split()
                if not tokens:
                    continue
                if any("," in token for token in tokens):
                    raise HarnessError(f"line {number}: comma-joined sequence keys are not "
                                       "supported (image-to-image predictions only)", path)
                rows.append((tokens[0], tokens[1:]))
    except FileNotFoundError:
        raise HarnessError("prediction file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"not a readable text file ({exc})", path) from None
    return rows


def msls_key(name: str) -> str:
    """The MSLS key of an image name (its file name without the extension)."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base
