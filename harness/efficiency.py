"""The efficiency section of a result record: what a method costs, measured or counted.

Three kinds of numbers, each with what it depends on:

* machine-independent counts: bytes per descriptor, and the exact search's work
  (database rows x dimension x bytes read, and ``2 Q N D`` floating-point operations);
* extraction time per image, measured by the harness's own extraction and stored in the
  feature files (``extraction_seconds``, ``extraction_images``, device, hardware, precision);
  a file written by other code has none, and the section then says why it is unknown;
* the search seconds and peak memory of this evaluation, with the hardware that ran it.

Nothing is ever a placeholder: an unknown value is ``None`` with a ``*_unknown`` reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

#: Feature-file attributes written by ``methods.extract`` (read here without importing it).
EXTRACTION_ATTRS = ("extraction_seconds", "extraction_images")
EXTRACTION_FACTS = ("extraction_device", "extraction_hardware", "extraction_precision")


def descriptor_bytes(dim: int, dtype: str) -> int:
    """Bytes one stored descriptor takes."""
    return int(dim) * np.dtype(dtype).itemsize


def search_cost(num_queries: int, database_rows: int, dim: int, dtype: str) -> dict:
    """The exact search's work, independent of the machine: bytes streamed, operations."""
    return {
        "database_rows": int(database_rows),
        "dim": int(dim),
        "database_bytes": int(database_rows) * descriptor_bytes(dim, dtype),
        "flop": 2 * int(num_queries) * int(database_rows) * int(dim),  # exact: an integer
    }


def extraction_summary(file_attrs: Iterable[tuple[str, Mapping[str, object]]]) -> dict:
    """Extraction milliseconds per image over every feature file, as the harness measured it.

    ``file_attrs``: ``(path, root attributes)`` of each file. Known only when every file
    carries the harness's timing and all were extracted on the same device, hardware and
    precision (otherwise the time per image would mix machines); else ``ms_per_image`` is
    ``None`` and ``unknown`` says why.
    """
    seconds = images = 0.0
    facts: set[tuple[str, ...]] = set()
    for path, attrs in file_attrs:
        path = Path(path).name  # records and tables must not depend on where files were
        if not all(key in attrs for key in EXTRACTION_ATTRS):
            return {"ms_per_image": None,
                    "unknown": f"{path} was not extracted by the harness (no extraction timing)"}
        try:
            seconds += float(attrs["extraction_seconds"])
            images += int(attrs["extraction_images"])
        except (TypeError, ValueError):
            return {"ms_per_image": None, "unknown": f"{path}: unreadable extraction timing"}
        facts.add(tuple(str(attrs.get(key, "")) for key in EXTRACTION_FACTS))
    if not images:
        return {"ms_per_image": None, "unknown": "no feature file holds an extraction timing"}
    if len(facts) > 1:
        return {"ms_per_image": None,
                "unknown": "feature files were extracted on different devices or precisions"}
    device, hardware, precision = facts.pop()
    return {
        "ms_per_image": 1000.0 * seconds / images,
        "images": int(images),
        "seconds": seconds,
        "device": device,
        "hardware": hardware,
        "precision": precision,
    }


def efficiency_section(*, num_queries: int, database_rows: int, dim: int, dtype: str,
                       extraction: Mapping[str, object], search_s: float, search_backend: str,
                       search_hardware: str, peak_rss_bytes: int, peak_scope: str) -> dict:
    """The record's ``efficiency`` object."""
    return {
        "descriptor_bytes": descriptor_bytes(dim, dtype),
        "search_cost": search_cost(num_queries, database_rows, dim, dtype),
        "search": {"seconds": float(search_s), "backend": search_backend,
                   "hardware": search_hardware},
        "peak_rss": {"bytes": int(peak_rss_bytes), "scope": peak_scope},
        "extraction": dict(extraction),
    }
