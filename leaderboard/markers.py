"""What the tables show besides the numbers: unofficial splits and re-ranking submissions.

- A record whose split carries a canonical benchmark name (``splits/canonical.toml``) but does
  not match its pinned definition (counts, radius, spatial NMS, checksum) is listed under
  ``<split> (unofficial)``, a table of its own, never in the benchmark's table.
- A ranking submission (``harness submit --ranking``) is listed as ``<method> (re-ranking)``:
  re-ranking methods are compared with retrieval methods only with that marker.
"""

from __future__ import annotations

import re

UNOFFICIAL_SUFFIX = " (unofficial)"
RERANKING_SUFFIX = " (re-ranking)"


def shown_split(record) -> str:
    """The split a record is listed under."""
    from harness.canonical import record_status

    return record.split if record_status(record.result).official else \
        record.split + UNOFFICIAL_SUFFIX


def shown_method(record) -> str:
    """The method name a record is listed under."""
    from harness.sources.rankings import is_ranking_result

    return record.method + RERANKING_SUFFIX if is_ranking_result(record.result) else record.method


def unofficial_base(split_name: str) -> str | None:
    """The canonical name behind an unofficial listing, else None."""
    if split_name.endswith(UNOFFICIAL_SUFFIX):
        return split_name[: -len(UNOFFICIAL_SUFFIX)]
    return None


#: Titles of the public benchmarks that have a canonical definition but no table of their own
#: in ``REAL_BENCHMARKS`` (their table appears once a record exists).
PUBLIC_TITLES = {
    "pitts250k-test": "Pitts250k test",
    "tokyo247-nonms": "Tokyo 24/7 (no spatial NMS, as 2022+ papers report)",
    "msls-val": "MSLS val (740 queries)",
    "msls-val-all": "MSLS val, every cph + sf query (downloader)",
    "nordland": "Nordland (downloader, +-10 frames)",
    "sf-xl-test-v1": "SF-XL test v1",
}


def _key(prefix: str, name: str) -> str:
    return prefix + re.sub(r"[^a-z0-9._-]", "_", name.lower())


def marked_table(split_name: str) -> dict | None:
    """``Benchmark`` fields (key, title, label, description) of the table of an unofficial
    listing or of a pinned public split; None for any other split."""
    from harness.canonical import canonical_splits

    base = unofficial_base(split_name)
    if base is not None:
        return {"key": _key("unofficial-", base), "title": f"Unofficial: {base}", "label": base,
                "description": f"Records on a split registered as {base} that does not match "
                "its canonical definition (counts, radius, spatial NMS or checksum): not "
                f"comparable with the {base} table."}
    pin = canonical_splits().get(split_name)
    if pin is None:
        return None
    return {"key": _key("", split_name), "title": PUBLIC_TITLES.get(split_name, split_name),
            "label": split_name,
            "description": f"{pin.counts_text}, {pin.radius_m:g} m ({pin.source})."}
