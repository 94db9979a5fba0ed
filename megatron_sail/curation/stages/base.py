"""What a stage is to the runner.

A *map* stage looks at one chunk of records at a time (any worker, any order). A *global*
stage decides over all records at once in input order - dedup must know every earlier record
to call a later one its duplicate, rebalancing must see the whole distribution - so it is
split in two: ``features`` per chunk (the costly part: decoding, hashing) and ``decide`` over
the features of every chunk, cheap and deterministic, run after all chunks are done.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from megatron_sail.curation.items import Item


class MapStage:
    kind = "map"

    def __init__(self, name: str, options: Any, spec_dir: Path) -> None:
        self.name, self.options, self.spec_dir = name, options, spec_dir

    def run(self, items: list[Item]) -> None:
        """Score and/or drop the live ``items`` of one chunk (in place)."""
        raise NotImplementedError


class GlobalStage(MapStage):
    kind = "global"

    def features(self, items: list[Item]) -> None:
        """Fill ``item.features`` for the live items of one chunk."""

    def decide(self, items: list[Item]) -> Optional[dict]:
        """Drop items of the whole data set (live, in input order); may return what to plot:
        ``{"title": ..., "before": {category: n}, "after": {category: n}}``."""
        raise NotImplementedError


def text_of(record: Any, part: str) -> str:
    """The text of a record's assistant turns, user turns or all turns, joined by newlines,
    without media placeholders."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    roles = {"assistant": ("gpt", "assistant"), "user": ("human", "user"),
             "all": ("gpt", "assistant", "human", "user", "system")}[part]
    texts = [str(t.get("value", "")) for t in turns or [] if isinstance(t, dict)
             and t.get("from") in roles]
    return re.sub(r"<(image|video)>\n?", "", "\n".join(texts)).strip()


def words(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)?", text.lower())
