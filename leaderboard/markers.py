"""What the tables show besides the numbers: unofficial splits and re-ranking submissions.

- A record whose split carries a canonical benchmark name (``splits/canonical.toml``) but does
  not match its pinned definition (counts, radius, spatial NMS, checksum) is listed under
  ``<split> (unofficial)``, a table of its own, never in the benchmark's table.
- A ranking submission (``harness submit --ranking``) is listed as ``<method> (re-ranking)``:
  re-ranking methods are compared with retrieval methods only with that marker.
"""

from __future__ import annotations

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
