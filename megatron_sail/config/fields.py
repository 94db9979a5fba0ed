"""Numeric ranges declared once, next to the config fields they bound, and checked generically.

``value: int = num(30, ge=1)`` is a dataclass field whose metadata holds its range; choices are
``Literal`` types and are checked while loading (``loader._coerce``). ``range_errors`` walks a
config and lists every value outside its range, so start-up reports all problems together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_sail.errors import shown


@dataclass(frozen=True)
class Range:
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def violation(self, value: float) -> Optional[str]:
        """What ``value`` breaks (e.g. ``must be >= 1``), None when it is inside."""
        for bound, ok, text in ((self.ge, lambda b: value >= b, ">="),
                                (self.gt, lambda b: value > b, ">"),
                                (self.le, lambda b: value <= b, "<="),
                                (self.lt, lambda b: value < b, "<")):
            if bound is not None and not ok(bound):
                return f"must be {text} {bound if isinstance(bound, int) else f'{bound:g}'}"
        return None


def num(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None,
        le: Optional[float] = None, lt: Optional[float] = None) -> Any:
    """A dataclass field with a numeric range (None values of Optional fields pass)."""
    return field(default=default, metadata={"range": Range(ge=ge, gt=gt, le=le, lt=lt)})


def range_errors(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(key, "key=value must be ...")`` for every field of ``obj`` (recursively) outside its
    range."""
    errors = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            errors += range_errors(value, f"{key}.")
            continue
        bounds = f.metadata.get("range")
        if bounds is None or value is None or isinstance(value, bool):
            continue
        problem = bounds.violation(value)
        if problem:
            errors.append((key, f"{key}={shown(value)} {problem}"))
    return errors
