"""The one ``key=value`` option parser of every command (``--method-option``, ``--option``,
``--set``, ``--study-option``...)."""

from __future__ import annotations

from typing import Sequence

from harness.errors import HarnessError


def parse_option_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b-c=x"]`` -> ``{"a": "1", "b_c": "x"}``.

    Keys and values are stripped and dashes in keys become underscores (``image-height`` is
    ``image_height``); a pair without ``=``, an empty key or a key given twice is a
    :class:`HarnessError`.
    """
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise HarnessError(f"option {pair!r} must look like key=value")
        if key in result:
            raise HarnessError(f"option {key!r} given twice")
        result[key] = value.strip()
    return result
