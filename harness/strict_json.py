"""Strict conversion of decoded JSON values: a wrong type, an unknown or a missing key is a
one-line :class:`HarnessError` naming where it is (``record.scores.recall@1``). Used by the
record readers (:mod:`harness.results`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from harness.errors import HarnessError


def fail(where: str, message: str):
    """Raise the one-line error for the value at ``where``."""
    raise HarnessError(f"{where}: {message}")


def as_int(value, where):
    """An integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"expected an integer, got {value!r}")
    return value


def as_float(value, where):
    """A number, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(where, f"expected a number, got {value!r}")
    return float(value)


def as_str(value, where):
    """A string."""
    if not isinstance(value, str):
        fail(where, f"expected a string, got {value!r}")
    return value


def as_optional_str(value, where):
    """A string or None."""
    return None if value is None else as_str(value, where)


def as_bool(value, where):
    """true or false."""
    if not isinstance(value, bool):
        fail(where, f"expected true/false, got {value!r}")
    return value


def list_of(convert):
    """A converter of lists whose items ``convert`` converts (to a tuple)."""
    def run(value, where):
        if not isinstance(value, list):
            fail(where, f"expected a list, got {value!r}")
        return tuple(convert(v, f"{where}[{i}]") for i, v in enumerate(value))

    return run


def as_json_object(value, where):
    """A JSON object (dict)."""
    if not isinstance(value, dict):
        fail(where, f"expected an object, got {value!r}")
    return value


def build_dataclass(cls, converters: Mapping[str, Callable], data, where: str,
                    skip=("prediction_data",)):
    """``cls(**data)`` after rejecting unknown and missing keys and converting each value."""
    if not isinstance(data, Mapping):
        fail(where, f"expected an object, got {type(data).__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    valid = {f.name for f in fields}
    unknown = sorted(set(data) - valid)
    if unknown:
        fail(where, f"unknown keys {unknown}; valid keys are {sorted(valid)}")
    required = {
        f.name for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        fail(where, f"missing keys {missing}")
    kwargs = {}
    for key, value in data.items():
        convert = converters[key]
        kwargs[key] = convert(value, f"{where}.{key}")
    return cls(**kwargs)
