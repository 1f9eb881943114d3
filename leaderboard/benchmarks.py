"""The benchmarks the leaderboard reports: which splits make up each table.

Declared as data. A benchmark with several splits (Indoor-Ams 1 and 2) also reports their
mean, and is ranked by the mean Recall@1. The synthetic city mirrors every real benchmark
with the ``synth-`` prefix (``harness splits prepare --prefix synth-``); any other split named
``synth-*`` that no mirror covers, and any other split with records, gets a single-split
table of its own, so that no submitted record is silently left out.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from leaderboard.markers import marked_table

SYNTH_PREFIX = "synth-"
RECALL_COLUMNS = (1, 5, 10, 20)


@dataclass(frozen=True)
class Benchmark:
    """One leaderboard table.

    Attributes:
        key: file-safe identifier (``indoor-ams``), used for table and plot file names.
        title: heading shown in every output.
        splits: split names, in column order.
        labels: short column-group labels, one per split.
        description: one sentence for the README and the page.
    """

    key: str
    title: str
    splits: tuple[str, ...]
    labels: tuple[str, ...]
    description: str = ""

    def __post_init__(self):
        if len(self.splits) != len(self.labels) or not self.splits:
            raise ValueError(f"benchmark {self.key}: one label per split, at least one split")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.key):
            raise ValueError(f"benchmark key {self.key!r} is not file-safe")

    @property
    def has_mean(self) -> bool:
        return len(self.splits) > 1

    def synthetic(self) -> "Benchmark":
        """The same benchmark on the synthetic city's ``synth-*`` splits."""
        return Benchmark(
            key=SYNTH_PREFIX + self.key,
            title=f"Synthetic city: {self.title}",
            splits=tuple(SYNTH_PREFIX + s for s in self.splits),
            labels=self.labels,
            description=f"The synthetic inside-out city's copy of {self.title}.",
        )


REAL_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        key="indoor-ams",
        title="Indoor-Ams",
        splits=("indoor-ams-1", "indoor-ams-2"),
        labels=("Indoor-Ams 1", "Indoor-Ams 2"),
        description="Indoor queries (two sets of 500) against the Outdoor-Ams database; "
        "ranked by the mean Recall@1 of the two sets.",
    ),
    Benchmark(
        key="outdoor-ams",
        title="Outdoor-Ams",
        splits=("outdoor-ams",),
        labels=("Outdoor-Ams",),
        description="Outdoor street-view queries against the 6.4M-image Outdoor-Ams database.",
    ),
    Benchmark(
        key="ams30k",
        title="Ams30k test",
        splits=("ams30k-test",),
        labels=("Ams30k test",),
        description="The Pitts30k-like Amsterdam split, test set.",
    ),
    Benchmark(
        key="pitts30k",
        title="Pitts30k test",
        splits=("pitts30k-test",),
        labels=("Pitts30k test",),
        description="Pittsburgh 30k, test set (NetVLAD protocol).",
    ),
    Benchmark(
        key="tokyo247",
        title="Tokyo 24/7",
        splits=("tokyo247",),
        labels=("Tokyo 24/7",),
        description="Tokyo 24/7 queries (day, sunset, night) against the Tokyo database.",
    ),
)


def benchmarks_for(split_names) -> list[Benchmark]:
    """Every real benchmark, the synthetic city's mirrors, then one table per leftover split."""
    split_names = sorted(set(split_names))
    result = list(REAL_BENCHMARKS)
    covered = {s for b in REAL_BENCHMARKS for s in b.splits}
    for benchmark in REAL_BENCHMARKS:
        mirror = benchmark.synthetic()
        result.append(mirror)
        covered.update(mirror.splits)
    for name in split_names:
        if name in covered:
            continue
        marked = marked_table(name)  # pinned public benchmarks and unofficial listings
        if marked is not None:
            result.append(Benchmark(key=marked["key"], title=marked["title"], splits=(name,),
                                    labels=(marked["label"],),
                                    description=marked["description"]))
            continue
        synthetic = name.startswith(SYNTH_PREFIX)
        result.append(
            Benchmark(
                key="split-" + re.sub(r"[^a-z0-9._-]", "_", name.lower()),
                title=f"Synthetic city: {name[len(SYNTH_PREFIX) :]}"
                if synthetic
                else f"Split {name}",
                splits=(name,),
                labels=(name,),
                description="A split of the synthetic inside-out city."
                if synthetic
                else "A split outside the standard benchmarks.",
            )
        )
    return result


def get_benchmark(key: str, split_names=()) -> Benchmark:
    """The benchmark called ``key``; unknown keys suggest close matches."""
    known = {b.key: b for b in benchmarks_for(split_names)}
    if key in known:
        return known[key]
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    raise KeyError(f"unknown benchmark {key!r}{hint}")
