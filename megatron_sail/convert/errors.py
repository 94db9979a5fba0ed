"""One exception type for everything a user must fix, with every offending name listed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from megatron_sail.errors import UserError


class ConversionError(UserError, ValueError):
    """Bad input (missing/unexpected tensors, shapes, config, dtypes) or a failed check."""


def listing(title: str, items: Iterable[str], limit: int = 40) -> str:
    """``title (n):`` then one item per line; long lists are cut so the message stays readable."""
    items = list(items)
    lines = [f"{title} ({len(items)}):"] + [f"    {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def inventory_problems(present: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]],
                       unexpected: Iterable[str], unexpected_title: str, stored: str,
                       wanted: str) -> list[str]:
    """Listings of the expected names that are missing, the ``unexpected`` ones, and the
    shape mismatches (``name: [..] {stored}, [..] {wanted}``); empty when all is well."""
    missing = [n for n in expected if n not in present]
    unexpected = list(unexpected)
    shapes = [f"{n}: {list(present[n])} {stored}, {list(s)} {wanted}"
              for n, s in expected.items() if n in present and tuple(present[n]) != tuple(s)]
    parts = []
    if missing:
        parts.append(listing("missing tensors", missing))
    if unexpected:
        parts.append(listing(unexpected_title, unexpected))
    if shapes:
        parts.append(listing("shape mismatches", shapes))
    return parts


def raise_if(problems: list[str], context: str) -> None:
    if problems:
        raise ConversionError(f"{context}:\n  - " + "\n  - ".join(problems))
