"""The ``netvlad-mat`` split source: splits from NetVLAD ``dbStruct`` ``.mat`` files (every
built-in split), and :func:`import_split` for any other pair of ``.mat`` files."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError
from harness.matfile import read_dbstruct
from harness.splits.definitions import SplitDefinition, build_split, sorted_order
from harness.splits.sources import register_split_source, resolve_path
from harness.splits.split import DEFAULT_RECALL_NS, Split, register_split

logger = logging.getLogger(__name__)


class MatCache:
    """Reads each ``.mat`` once (Indoor-Ams 1 and 2 share the Outdoor-Ams database file).

    Both image lists come back already in sorted order, so the three splits built on the
    6.4M-image Outdoor-Ams database sort it once.
    """

    def __init__(self):
        self._structs: dict[Path, object] = {}

    def read(self, path: Path):
        key = path.resolve()
        if key not in self._structs:
            logger.info("reading %s", path)
            struct = read_dbstruct(path)
            changes = {}
            for names_field, utm_field, time_field in (
                ("q_images", "utm_q", "q_timestamps"),
                ("db_images", "utm_db", "db_timestamps"),
            ):
                names = getattr(struct, names_field)
                order = sorted_order(names)
                if order is not None:
                    changes[names_field] = tuple(names[i] for i in order)
                    changes[utm_field] = getattr(struct, utm_field)[order]
                    if getattr(struct, time_field) is not None:
                        changes[time_field] = getattr(struct, time_field)[order]
            self._structs[key] = dataclasses.replace(struct, **changes) if changes else struct
        return self._structs[key]


@register_split_source("netvlad-mat")
class NetvladMatSource:
    """Queries and database from the ``dbStruct`` of one or two ``.mat`` files."""

    def __init__(self):
        self.cache = MatCache()

    def required_files(self, definition: SplitDefinition, root: Path) -> list[Path]:
        return [resolve_path(root, f) for f in definition.mat_files]

    def build(self, definition: SplitDefinition, root: Path, name: str) -> Split:
        """Build the split ``definition`` describes from the ``.mat`` files under ``root``."""
        queries_path = resolve_path(root, definition.queries_file)
        database_path = resolve_path(root, definition.database_file)
        queries = self.cache.read(queries_path)
        database = self.cache.read(database_path)
        for struct in {id(queries): queries, id(database): database}.values():
            if abs(struct.pos_dist_thr - definition.radius_m) > 1e-9:
                logger.debug(
                    "%s: posDistThr is %g m; split %s uses %g m (its definition)",
                    struct.path,
                    struct.pos_dist_thr,
                    name,
                    definition.radius_m,
                )
        query_root = resolve_path(root, definition.query_root)
        database_root = resolve_path(root, definition.database_root)
        for label, folder in (("query", query_root), ("database", database_root)):
            if not folder.is_dir():
                logger.warning(
                    "split %s: %s image folder %s does not exist",
                    name,
                    label,
                    folder,
                )
        source = [f"{definition.queries_file}:qImage", f"{definition.database_file}:dbImage"]
        return build_split(
            name,
            queries=queries,
            database=database,
            radius_m=definition.radius_m,
            recall_ns=definition.recall_ns,
            spatial_nms=definition.spatial_nms,
            no_positive=definition.no_positive,
            query_root=str(query_root),
            database_root=str(database_root),
            description=definition.description,
            source=source,
        )


def import_split(
    name: str,
    *,
    mat: str | os.PathLike | None = None,
    queries_mat: str | os.PathLike | None = None,
    database_mat: str | os.PathLike | None = None,
    radius_m: float | None = None,
    recall_ns: Sequence[int] = DEFAULT_RECALL_NS,
    spatial_nms: bool = False,
    no_positive: str = "miss",
    query_root: str | os.PathLike = "",
    database_root: str | os.PathLike = "",
    description: str = "",
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Build a split from ``.mat`` file(s) and register it; returns the split file's path.

    Without ``radius_m`` the files' ``posDistThr`` is used (they must agree).
    """
    if mat is not None and (queries_mat is not None or database_mat is not None):
        raise HarnessError("give either --mat or --queries-mat with --database-mat, not both")
    if mat is None and (queries_mat is None or database_mat is None):
        raise HarnessError("give --mat, or both --queries-mat and --database-mat")
    cache = MatCache()
    queries_path = Path(mat if mat is not None else queries_mat).expanduser()
    database_path = Path(mat if mat is not None else database_mat).expanduser()
    queries = cache.read(queries_path)
    database = cache.read(database_path)
    if radius_m is None:
        radii = {queries.pos_dist_thr, database.pos_dist_thr}
        if len(radii) != 1:
            raise HarnessError(
                f"the .mat files disagree on posDistThr ({sorted(radii)}); give --radius-m"
            )
        radius_m = radii.pop()
        logger.info("split %s: radius %g m from posDistThr", name, radius_m)
    split = build_split(
        name,
        queries=queries,
        database=database,
        radius_m=radius_m,
        recall_ns=recall_ns,
        spatial_nms=spatial_nms,
        no_positive=no_positive,
        query_root=str(Path(query_root).expanduser().resolve()) if query_root else "",
        database_root=str(Path(database_root).expanduser().resolve()) if database_root else "",
        description=description,
        source=[f"{queries_path.resolve()}:qImage", f"{database_path.resolve()}:dbImage"],
    )
    return register_split(split, data_root)


