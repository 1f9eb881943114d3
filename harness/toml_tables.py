"""Strict reading of the project's data files in TOML: a ``format_version`` and one section of
named tables whose keys have fixed types (``splits/builtin.toml``, ``folders.toml``,
``canonical.toml``).

Every problem is a :class:`HarnessError` naming the file and the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from harness.errors import HarnessError
from harness.versions import is_version

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml


def read_typed_tables(
    text: str,
    source: str,
    *,
    section: str,
    format_version: int,
    types: Mapping[str, type | tuple[type, ...]],
    required: Iterable[str],
    int_lists: Iterable[str] = (),
) -> dict[str, dict]:
    """The tables of ``[section.NAME]`` in ``text``, by name, in file order.

    Unknown keys (top level or in a table), a missing ``required`` key, a value not of its
    type in ``types`` (a bool only where the type is bool) and, for ``int_lists``, a list
    holding anything but integers are errors; ``format_version`` must be exactly that int.
    """
    try:
        document = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise HarnessError(f"invalid TOML ({exc})", source) from None
    top_level = ["format_version", section]
    unknown = sorted(set(document) - set(top_level))
    if unknown:
        raise HarnessError(f"unknown top-level keys {unknown}; valid keys are {top_level}", source)
    if not is_version(document.get("format_version"), format_version):
        raise HarnessError(
            f"format_version must be {format_version}, got {document.get('format_version')!r}",
            source,
        )
    int_lists = set(int_lists)
    tables = {}
    for name, entry in document.get(section, {}).items():
        where = f"[{section}.{name}]"
        if not isinstance(entry, dict):
            raise HarnessError(f"{where} must be a table", source)
        unknown = sorted(set(entry) - set(types))
        if unknown:
            raise HarnessError(
                f"{where}: unknown keys {unknown}; valid keys are {sorted(types)}", source
            )
        for key in required:
            if key not in entry:
                raise HarnessError(f"{where}: {key} is required", source)
        for key, value in entry.items():
            expected = types[key]
            wrong = not isinstance(value, expected) or (
                isinstance(value, bool) and expected is not bool
            )
            if wrong or (key in int_lists and not all(type(n) is int for n in value)):
                raise HarnessError(
                    f"{where}: {key} has the wrong type ({type(value).__name__}: {value!r})",
                    source,
                )
        tables[name] = dict(entry)
    return tables
