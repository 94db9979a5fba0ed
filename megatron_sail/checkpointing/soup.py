"""Model soups: the weighted average of homologous checkpoints, as a new checkpoint.

Homologous means the same architecture and the same parent checkpoint (each checkpoint's
lineage, ``layout_files.checkpoint_lineage``): SFT runs of one model under other seeds or data
orders. Soups of heterologous checkpoints collapse (SAIL-VL2 report), so they are refused;
``force`` overrides a lineage mismatch, never an architecture mismatch.

The decision reads checkpoint description files only; the averaging itself reads and writes
tensors with the converter's checkpoint reader and writer (``megatron_sail.convert.soup``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from megatron_sail.checkpointing.layout_files import (
    CheckpointError, checkpoint_lineage, parent_id,
)


class SoupError(CheckpointError):
    """A soup that is refused: too few inputs, bad weights, or inputs that are not
    homologous."""


def normalised_weights(weights: Optional[list[float]], count: int) -> list[float]:
    """Equal weights by default; given weights must be finite and >= 0 with a positive sum,
    and are divided by their sum (so 1,1,2 means 0.25, 0.25, 0.5)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise SoupError(f"{len(weights)} weights for {count} checkpoints")
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise SoupError(f"weights must be finite and >= 0, got {bad[0]}")
    total = sum(weights)
    if total <= 0:
        raise SoupError("the weights sum to 0")
    return [w / total for w in weights]


def lineage_problem(dirs: list[Path]) -> Optional[str]:
    """Why the checkpoints are not of one parent, or None when they are."""
    lineages = [checkpoint_lineage(d) for d in dirs]
    parents = [parent_id(lin) for lin in lineages]
    if parents[0] is None:
        return (f"{dirs[0]} has no recorded parent checkpoint (trained from scratch, or "
                f"written before lineage was recorded): homology cannot be shown")
    for d, parent in zip(dirs[1:], parents[1:]):
        if parent != parents[0]:
            return (f"not homologous: {dirs[0]} was trained from {parents[0]} but {d} from "
                    f"{parent}")
    return None


def soup_lineage(dirs: list[Path], weights: list[float], forced: bool) -> dict:
    """The soup's lineage: its inputs' lineages, and their common parent as its own."""
    import hashlib
    import json

    lineages = [checkpoint_lineage(d) for d in dirs]
    ident = hashlib.sha256(json.dumps([[lin["checkpoint"] for lin in lineages], weights])
                           .encode()).hexdigest()[:16]
    parents = {parent_id(lin) for lin in lineages}
    return {"checkpoint": f"soup:{ident}", "run": {"soup": True, "weights": weights,
                                                  "forced": forced},
            "arch": lineages[0].get("arch"),
            "parent": lineages[0]["parent"] if len(parents) == 1 else None,
            "inputs": lineages}
