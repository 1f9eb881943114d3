"""Frozen-dataclass configs built from user options: unknown keys are errors, strings are parsed.

Command-line options arrive as ``key=value`` strings (``--option pca=params.h5``); saved
configs arrive as JSON values. Both go through :func:`config_from_mapping`, which rejects
unknown keys (listing the valid ones) and converts each value to the field's declared type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError
from harness.options import parse_option_pairs  # noqa: F401  (the one parser; imported here too)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, annotation, key: str, what: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, what)
            except HarnessError as exc:
                errors.append(exc.message)
        raise HarnessError(f"{what}: option {key}={value!r}: " + "; ".join(errors))
    if origin is typing.Literal:
        text = value if not isinstance(value, str) else value.strip()
        if text not in args:
            raise HarnessError(f"{what}: option {key}={value!r} must be one of {list(args)}")
        return text
    if origin in (tuple, Sequence, list):
        item_type = args[0] if args else str
        if isinstance(value, str):
            items = [v for v in value.replace(",", " ").split() if v]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise HarnessError(f"{what}: option {key}={value!r} must be a list")
        return tuple(_convert(v, item_type, key, what) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise HarnessError(f"{what}: option {key}={value!r} must be true or false")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise HarnessError(f"{what}: option {key}={value!r} must be a number")
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise HarnessError(
                f"{what}: option {key}={value!r} must be "
                f"{'an integer' if annotation is int else 'a number'}"
            ) from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise HarnessError(f"{what}: option {key}={value!r} must be an integer")
        return converted
    if annotation is str:
        if not isinstance(value, str):
            raise HarnessError(f"{what}: option {key}={value!r} must be a string")
        return value
    if annotation is Any:
        return value
    raise TypeError(f"unsupported config field type {annotation!r} for {key}")


def config_from_mapping(cls, values: Mapping[str, Any], *, what: str | None = None):
    """Build the frozen dataclass ``cls`` from ``values`` (strings or JSON values).

    Raises:
        HarnessError: an unknown key (the valid keys are listed) or a value of the wrong type.
    """
    what = what or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        close = sorted(
            {m for key in unknown for m in difflib.get_close_matches(key, list(fields), n=2)}
        )
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HarnessError(
            f"{what}: unknown option(s) {', '.join(unknown)}{hint}; "
            f"valid options are {', '.join(sorted(fields))}"
        )
    kwargs = {key: _convert(value, hints[key], key, what) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"{what}: {exc}") from None


def config_to_dict(config) -> dict:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    result = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        result[f.name] = list(value) if isinstance(value, tuple) else value
    return result
