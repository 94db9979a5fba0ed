"""Curation's JSON files: one canonical form (sorted keys, UTF-8 kept) so that the same
curation gives the same bytes, written through the one atomic writer. Several processes (array
elements) or threads may finish the same file at once: each stages its own temporary name and
the renames race harmlessly, every writer producing the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_sail.utils.atomic import write_atomic


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
