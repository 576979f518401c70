"""JSON as the package writes it: strict JSON, with null where a figure is undefined.

Python's json writes a non-finite float as a bare `NaN` or `Infinity`, which no strict JSON
reader accepts. Every JSON file and line the package writes goes through `dumps`, which turns
such a float into null and refuses anything else JSON cannot hold (allow_nan=False).
"""

from __future__ import annotations

import json
import math

__all__ = ["finite_or_null", "dumps"]


def finite_or_null(value):
    """`value` with every non-finite float in it (in dicts, lists and tuples, at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def dumps(value, **options) -> str:
    """json.dumps of `value` with NaN and ±inf written as null (`options` as json.dumps takes them)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **options)
