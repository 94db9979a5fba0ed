"""Files that appear whole or not at all. Several processes (array elements) - or threads -
may finish the same file at once: each writes its own temporary name, the renames race
harmlessly because every writer produces the same bytes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")


def write_json_atomic(path: Path, data) -> None:
    tmp = temp_path(path)
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
