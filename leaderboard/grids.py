"""Retrieval grids: a few queries of a split, each with a method's top-k database images.

A retrieved image is a hit when it lies within the split's ``radius_m`` of the query
(boundary included, as in the ground truth). Thumbnails are written once per image into the
site folder; the same queries are shown for every method so the grids compare directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from leaderboard.html import Grid, GridRow, Thumb

logger = logging.getLogger(__name__)

THUMB_SIZE = (160, 120)
JPEG_QUALITY = 80


def pick_queries(num_queries: int, count: int) -> list[int]:
    """``count`` query rows spread evenly over the split (deterministic)."""
    if num_queries <= 0 or count <= 0:
        return []
    count = min(count, num_queries)
    return sorted({int(i) for i in np.linspace(0, num_queries - 1, count).round()})


def is_hit(split, query_row: int, database_row: int) -> bool:
    offset = split.query_utm[query_row] - split.database_utm[database_row]
    return bool(np.hypot(offset[0], offset[1]) <= split.radius_m)


def images_available(split, query_rows: Sequence[int], top_indices: np.ndarray, k: int) -> bool:
    """Whether every image a grid needs exists on disk (grids are skipped otherwise)."""
    if not split.query_root or not split.database_root:
        return False
    for row in query_rows:
        if not (Path(split.query_root) / split.query_names[row]).is_file():
            return False
        for db_row in top_indices[row, :k]:
            if (
                db_row < 0
                or not (Path(split.database_root) / split.database_names[int(db_row)]).is_file()
            ):
                return False
    return True


def make_thumbnail(source: Path, target: Path) -> None:
    """A JPEG of at most ``THUMB_SIZE`` (same image, same bytes)."""
    from PIL import Image

    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail(THUMB_SIZE, Image.Resampling.BICUBIC)
        image.save(target, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)


def build_grid(
    *,
    method: str,
    split,
    split_label: str,
    top_indices: np.ndarray,
    query_rows: Sequence[int],
    k: int,
    site_dir: Path,
    thumbs_subdir: str,
) -> Grid:
    """Make the thumbnails and the :class:`Grid` of ``method`` on ``split``.

    Args:
        top_indices: ``(num_queries, K)`` database rows, best first (``-1`` = no result).
        query_rows: the queries to show.
        k: how many results to show per query.
        site_dir: the page's folder; thumbnails go to ``site_dir/thumbs_subdir``.
    """
    assert top_indices.ndim == 2 and top_indices.shape[0] == split.num_queries, top_indices.shape
    rows = []
    thumbs = site_dir / thumbs_subdir
    for query_row in query_rows:
        query_file = f"q{query_row:07d}.jpg"
        make_thumbnail(Path(split.query_root) / split.query_names[query_row], thumbs / query_file)
        query = Thumb(
            f"{thumbs_subdir}/{query_file}", os.path.basename(split.query_names[query_row]), "query"
        )
        results = []
        for position, db_row in enumerate(top_indices[query_row, :k], start=1):
            db_row = int(db_row)
            if db_row < 0:
                continue
            db_file = f"d{db_row:09d}.jpg"
            make_thumbnail(
                Path(split.database_root) / split.database_names[db_row], thumbs / db_file
            )
            status = "hit" if is_hit(split, query_row, db_row) else "miss"
            results.append(Thumb(f"{thumbs_subdir}/{db_file}", f"#{position} {status}", status))
        rows.append(GridRow(query, tuple(results)))
    return Grid(method=method, split=split.name, split_label=split_label, rows=tuple(rows))
