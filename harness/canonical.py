"""Pinned canonical splits: what a split registered under a benchmark's name must hold.

A 12-query split registered as ``pitts30k-test`` once appeared in the real Pitts30k table.
``splits/canonical.toml`` pins, per public benchmark name, the image counts, the radius, the
spatial-NMS setting and (where known) the accepted split checksums. Registering a split under
a pinned name that does not match is refused (:func:`check_canonical`, called by
:func:`harness.splits.register_split`); the leaderboard asks :func:`record_status` whether a
record's split was the canonical one and lists the others as unofficial.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from harness.errors import HarnessError
from harness.toml_tables import read_typed_tables

CANONICAL_FORMAT_VERSION = 1
_KEYS = {"queries": int, "database": int, "radius_m": (int, float), "spatial_nms": bool,
         "split_sha256": list, "source": str}
_REQUIRED = ("queries", "radius_m")  # database may be unknown (SF-XL: "2.8M")


@dataclass(frozen=True)
class CanonicalSplit:
    """The pinned facts of one benchmark split."""

    name: str
    queries: int
    database: int | None  # None: no exact published count; only the queries are pinned
    radius_m: float
    spatial_nms: bool = False
    split_sha256: tuple[str, ...] = ()
    source: str = ""

    @property
    def counts_text(self) -> str:
        """``10,000 database images / 6,816 queries`` (database "not pinned" when unknown)."""
        database = "not pinned" if self.database is None else f"{self.database:,}"
        return f"{database} database images / {self.queries:,} queries"

    def mismatches(self, *, queries: int, database: int, radius_m: float,
                   spatial_nms: bool, sha256: str | None = None) -> list[str]:
        """What differs from the pinned definition (empty: it is the canonical split)."""
        found = []
        if queries != self.queries or (self.database is not None and database != self.database):
            expected = "any" if self.database is None else f"{self.database:,}"
            found.append(f"{queries:,} queries / {database:,} database images, expected "
                         f"{self.queries:,} / {expected}")
        if abs(float(radius_m) - self.radius_m) > 1e-9:
            found.append(f"radius {radius_m:g} m, expected {self.radius_m:g} m")
        if bool(spatial_nms) != self.spatial_nms:
            found.append(f"spatial NMS {'on' if spatial_nms else 'off'}, expected "
                         f"{'on' if self.spatial_nms else 'off'}")
        if self.split_sha256 and sha256 is not None and sha256 not in self.split_sha256:
            found.append(f"split checksum {sha256[:12]} is not a canonical one")
        return found


def parse_canonical(text: str, source: str = "<string>") -> dict[str, CanonicalSplit]:
    """Parse a ``canonical.toml`` document; unknown keys and wrong types name the file."""
    pins = {}
    tables = read_typed_tables(
        text, source, section="canonical", format_version=CANONICAL_FORMAT_VERSION,
        types=_KEYS, required=_REQUIRED,
    )
    for name, entry in tables.items():
        pins[name] = CanonicalSplit(
            name=name, queries=entry["queries"], database=entry.get("database"),
            radius_m=float(entry["radius_m"]), spatial_nms=entry.get("spatial_nms", False),
            split_sha256=tuple(str(s) for s in entry.get("split_sha256", ())),
            source=entry.get("source", ""),
        )
    return pins


@functools.lru_cache(maxsize=1)
def _pins() -> tuple[tuple[str, CanonicalSplit], ...]:
    resource = resources.files("splits").joinpath("canonical.toml")
    return tuple(parse_canonical(resource.read_text(encoding="utf-8"), str(resource)).items())


def canonical_splits() -> dict[str, CanonicalSplit]:
    """Every pinned split (``splits/canonical.toml``), by name."""
    return dict(_pins())


def check_canonical(split) -> None:
    """Refuse ``split`` when its name is a canonical benchmark's and its content is not."""
    pin = canonical_splits().get(split.name)
    if pin is None:
        return
    problems = pin.mismatches(queries=split.num_queries, database=split.num_database,
                              radius_m=split.radius_m, spatial_nms=split.spatial_nms,
                              sha256=split.sha256)
    if problems:
        raise HarnessError(
            f"split {split.name!r} is a canonical benchmark name, but this split has "
            f"{'; '.join(problems)} ({pin.source}); register it under another name "
            "(--name, or --prefix) to use it anyway")


@dataclass(frozen=True)
class Status:
    """Whether a record was measured on the canonical split."""

    official: bool
    reason: str = ""


def record_status(result) -> Status:
    """:class:`Status` of an :class:`harness.results.EvalResult` (splits not pinned are
    official: only a pinned name can be claimed wrongly)."""
    pin = canonical_splits().get(result.split)
    if pin is None:
        return Status(True)
    problems = pin.mismatches(
        queries=result.counts.queries, database=result.counts.database,
        radius_m=result.protocol.radius_m, spatial_nms=result.protocol.spatial_nms,
        sha256=result.split_sha256,
    )
    return Status(not problems, "; ".join(problems))
