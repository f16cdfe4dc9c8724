"""Typed parsers for a store's JSON metadata, one small function per kind of field.

In the style of zarr-python's ``core/metadata`` and ``core/json_parse``: each ``parse_*`` takes the
raw JSON value and the field's dotted path (``kdstore.counts.nodes``) and returns the typed value,
or raises :class:`~kdstore.errors.MetadataError` saying field, expected and got. A member that is
absent arrives as :data:`MISSING`, so "missing" and "wrong type" are reported the same way.
Version-independent: a ``meta_v2`` would use the same helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kdstore.errors import MetadataError

__all__ = ["MISSING", "describe", "parse_bool", "parse_choice", "parse_float", "parse_int", "parse_member", "parse_object",
           "parse_optional_int", "parse_str"]

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # an absent member (distinct from JSON null)

_JSON_NAMES = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", dict: "object",
               list: "array"}


def describe(value: Any) -> str:
    """What a field holds, for an error message: ``str '8'``, ``null``, ``nothing (missing)``."""
    if value is MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_JSON_NAMES.get(type(value), type(value).__name__)} {text}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def parse_int(value: Any, field: str, *, minimum: int | None = None) -> int:
    """A JSON integer (not a bool, not a float such as 8.0), at least ``minimum`` when given."""
    expected = "int" if minimum is None else f"int >= {minimum}"
    if not _is_int(value) or (minimum is not None and value < minimum):
        raise MetadataError(field, expected, describe(value))
    return int(value)


def parse_optional_int(value: Any, field: str, *, minimum: int | None = None) -> int | None:
    """:func:`parse_int`, or None for null or a missing member."""
    if value is None or value is MISSING:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        raise MetadataError(field, ("int" if minimum is None else f"int >= {minimum}") + " or null", describe(value))
    return int(value)


def parse_float(value: Any, field: str, *, minimum: float | None = None) -> float:
    """A JSON number (an integer is accepted: JSON writers drop ``.0``), at least ``minimum`` when given."""
    expected = "float" if minimum is None else f"float >= {minimum}"
    if not (_is_int(value) or isinstance(value, float)) or (minimum is not None and not value >= minimum):
        raise MetadataError(field, expected, describe(value))
    return float(value)


def parse_bool(value: Any, field: str) -> bool:
    """A JSON boolean (``true``/``false``; not 0 or 1)."""
    if not isinstance(value, bool):
        raise MetadataError(field, "bool", describe(value))
    return value


def parse_str(value: Any, field: str) -> str:
    """A JSON string."""
    if not isinstance(value, str):
        raise MetadataError(field, "str", describe(value))
    return value


def parse_choice(value: Any, field: str, *, choices: tuple[str, ...]) -> str:
    """One of a few fixed strings (a ``Literal`` field)."""
    if not isinstance(value, str) or value not in choices:
        raise MetadataError(field, " or ".join(repr(c) for c in choices), describe(value))
    return value


def parse_object(value: Any, field: str) -> dict[str, Any]:
    """A JSON object (returned as a new dict)."""
    if not isinstance(value, Mapping):
        raise MetadataError(field, "object", describe(value))
    return dict(value)


def parse_member(obj: Mapping[str, Any], field: str, name: str, parse: Callable[..., T], *,
                 default: Any = MISSING, **options: Any) -> T:
    """``parse(obj[name], f"{field}.{name}", **options)``; an absent member gives ``default`` when one
    is given, else reaches ``parse`` as :data:`MISSING` (which then reports it missing)."""
    value = obj.get(name, MISSING)
    if value is MISSING and default is not MISSING:
        return default
    return parse(value, f"{field}.{name}", **options)
