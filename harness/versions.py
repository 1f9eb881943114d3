"""Version fields of the files the harness reads: exact integers it knows, nothing else.

``format_version`` and ``schema_version`` decide which reader runs. Python compares
``1.0 == 1`` and ``True == 1`` as equal, JSON readers hand back ``"1"`` as a string, and
``int(1.5)`` is 1: a file claiming any of those is not version 1 and is refused.
"""

from __future__ import annotations

from typing import Iterable


def is_version(value, known: int | Iterable[int]) -> bool:
    """True when ``value`` is an ``int`` (not a bool, float or string) among ``known``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return value == known if isinstance(known, int) else value in set(known)


def version_problem(name: str, value, known: int | Iterable[int]) -> str | None:
    """One line saying why ``value`` is not a known ``name`` (None when it is)."""
    if is_version(value, known):
        return None
    listed = [known] if isinstance(known, int) else sorted(known)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    kind = "" if isinstance(value, int) and not isinstance(value, bool) else \
        f" ({type(value).__name__}, not an integer)"
    return f"{name} {shown}{kind} is not one this harness reads ({listed})"
