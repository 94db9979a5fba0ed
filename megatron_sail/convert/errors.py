"""One exception type for everything a user must fix, with every offending name listed."""

from __future__ import annotations

from collections.abc import Iterable


class ConversionError(ValueError):
    """Bad input (missing/unexpected tensors, shapes, config, dtypes) or a failed check."""


def listing(title: str, items: Iterable[str], limit: int = 40) -> str:
    """``title (n):`` then one item per line; long lists are cut so the message stays readable."""
    items = list(items)
    lines = [f"{title} ({len(items)}):"] + [f"    {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def raise_if(problems: list[str], context: str) -> None:
    if problems:
        raise ConversionError(f"{context}:\n  - " + "\n  - ".join(problems))
