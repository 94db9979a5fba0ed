"""Sweep files: a base config, common overrides, and a grid and/or list over config keys.
Each element becomes one task of a SLURM array job with its own output directory.

    config: ../tiny/pretrain.yaml      # relative to the sweep file
    overrides: {train.train_iters: 200, run.output_dir: runs/sweeps/lr}   # every element
    grid: {optimizer.lr: [1.0e-3, 3.0e-3]}                                # cartesian product
    list: [{model.llm.num_layers: 2}, {model.llm.num_layers: 4}]          # one element each
    max_parallel: 4                                                       # array throttle

With both ``grid`` and ``list``, every list entry is combined with every grid point. Elements
run in ``<run.output_dir>/<NN>_<key>-<value>...`` where ``run.output_dir`` is the directory
they would otherwise share.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_sail.config.loader import read_yaml
from megatron_sail.errors import UserError

KNOWN_KEYS = {"config", "overrides", "grid", "list", "max_parallel"}


class SweepError(UserError, ValueError):
    """A malformed sweep file; names the file and the problem."""


@dataclass(frozen=True)
class SweepElement:
    index: int
    name: str
    values: dict[str, Any]  # the swept key -> value of this element

    @property
    def overrides(self) -> list[str]:
        return [as_override(k, v) for k, v in self.values.items()]


@dataclass(frozen=True)
class Sweep:
    path: Path
    config: Path | None
    overrides: list[str]
    elements: list[SweepElement]
    max_parallel: int | None

    @property
    def swept_keys(self) -> set[str]:
        return {k for e in self.elements for k in e.values}


def as_override(key: str, value: Any) -> str:
    """JSON is YAML: the config loader reads the value back exactly (strings stay strings)."""
    return f"{key}={json.dumps(value)}"


def _name(index: int, values: dict[str, Any], width: int) -> str:
    """e.g. ``03_lr-0.003_num_layers-4``: the last part of each key and its value, path-safe."""
    def text(value: Any) -> str:
        return "+".join(map(str, value)) if isinstance(value, list) else str(value)

    parts = "_".join(f"{key.split('.')[-1]}-{text(value)}" for key, value in values.items())
    parts = re.sub(r"[^A-Za-z0-9._+-]+", "-", parts)[:80]
    return f"{index:0{width}d}" + (f"_{parts}" if parts else "")


def _mapping(tree: dict, key: str, path: Path) -> dict:
    value = tree.get(key) or {}
    if not isinstance(value, dict):
        raise SweepError(f"{path}: '{key}' must be a mapping of config keys to values")
    return value


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    tree = read_yaml(path, SweepError, "sweep file")
    unknown = set(tree) - KNOWN_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {sorted(unknown)} (known: {sorted(KNOWN_KEYS)})")

    grid = _mapping(tree, "grid", path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list of values")
    entries = tree.get("list") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SweepError(f"{path}: 'list' must be a list of mappings of config keys to values")
    if not grid and not entries:
        raise SweepError(f"{path}: needs a 'grid' or a 'list' to sweep over")
    for entry in entries:
        clash = set(entry) & set(grid)
        if clash:
            raise SweepError(f"{path}: {sorted(clash)} both in 'grid' and in a 'list' entry")

    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    combos = [{**entry, **point} for entry in (entries or [{}]) for point in points]
    width = max(2, len(str(len(combos) - 1)))
    elements = [SweepElement(i, _name(i, values, width), values) for i, values in enumerate(combos)]
    if any("run.output_dir" in e.values for e in elements):
        raise SweepError(f"{path}: run.output_dir cannot be swept: each element gets "
                         "<run.output_dir>/<element name>")

    common = _mapping(tree, "overrides", path)
    max_parallel = tree.get("max_parallel")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise SweepError(f"{path}: max_parallel must be a positive integer")
    config = tree.get("config")
    return Sweep(
        path=path,
        config=(path.parent / config) if config else None,
        overrides=[as_override(k, v) for k, v in common.items()],
        elements=elements,
        max_parallel=max_parallel,
    )
