"""pass@k filtering of an RL data set: keep the items a policy sometimes, but not always, solves.

An item every rollout solves gives all-equal rewards - no advantage, no gradient - and only
spends rollouts; the report filters its RL data by pass@4 for that reason. Items no rollout
solves are optionally dropped as well (too hard for the current policy, same zero gradient).
Generating the rollouts needs a model; this module takes their correctness as given, so
``sail rl filter`` can pair it with generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from megatron_sail.utils.atomic import write_atomic

PASS_RATE_KEY = "pass_rate"
KEPT_FILE, DROPPED_FILE = "kept.jsonl", "dropped.jsonl"


def pass_rates(correct: Sequence[Sequence[bool]]) -> list[float]:
    """The fraction of each item's rollouts that are correct; every item needs >= 1 rollout."""
    rates = []
    for i, rollouts in enumerate(correct):
        if not rollouts:
            raise ValueError(f"item {i} has no rollouts")
        rates.append(sum(bool(c) for c in rollouts) / len(rollouts))
    return rates


@dataclass(frozen=True)
class FilterSplit:
    kept: list[dict[str, Any]]     # records with their pass rate added under PASS_RATE_KEY
    dropped: list[dict[str, Any]]
    solved: int                    # dropped because every rollout was correct
    unsolved: int                  # dropped because none was (only with drop_unsolved)


def split_by_pass_rate(records: Sequence[dict[str, Any]], correct: Sequence[Sequence[bool]],
                       drop_unsolved: bool = False) -> FilterSplit:
    """Drop items every rollout solves (and, with ``drop_unsolved``, items none solves);
    both lists keep the input order and carry each record's pass rate."""
    if len(records) != len(correct):
        raise ValueError(f"{len(records)} records but correctness for {len(correct)}")
    kept, dropped, solved, unsolved = [], [], 0, 0
    for record, rate in zip(records, pass_rates(correct)):
        out = {**record, PASS_RATE_KEY: rate}
        if rate == 1.0:
            solved += 1
            dropped.append(out)
        elif rate == 0.0 and drop_unsolved:
            unsolved += 1
            dropped.append(out)
        else:
            kept.append(out)
    return FilterSplit(kept, dropped, solved, unsolved)


def write_split(split: FilterSplit, out_dir: str | Path) -> tuple[Path, Path]:
    """``kept.jsonl`` and ``dropped.jsonl`` in ``out_dir``, each replaced atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / KEPT_FILE, out_dir / DROPPED_FILE
    for path, rows in zip(paths, (split.kept, split.dropped)):
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return paths
