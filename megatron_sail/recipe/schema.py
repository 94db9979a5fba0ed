"""A recipe: SAIL-VL2's chain of training stages, each an ordinary training config plus the
rules that hand the previous stage's result to it.

Recipe file::

    name: sailvl2-2b
    base: ../tiny/pretrain.yaml      # optional: the config every stage starts from
    common: {train: {seed: 1}}       # optional: overrides for every stage (nested or dotted)
    stages:
      - name: vit-warmup             # one of STAGE_NAMES, in chain order
        kind: train                  # train (default) | soup | rl (sail rl: episodes = train_iters)
        config: stage.yaml           # optional: instead of base
        init: previous               # previous (default; none for the first stage) | none | PATH
        trainable: [adapter]         # the other parts are frozen (default: all trainable)
        reinit: [adapter]            # drawn afresh from the seed after loading
        set: {optimizer.lr: 2.0e-4}  # this stage's overrides (nested sections or dotted keys)
      - name: soup
        kind: soup
        source: sft                  # the stage whose run is repeated and souped
        runs: [{seed: 2}, {set: {...}, name: order-b}]
        weights: [0.5, 0.5]          # optional, one per souped checkpoint
        include_source: true         # the source stage's own run is souped too (default)

Paths (base, config, init, data.blend, data.valid_blend, data.tokenizer, rl.data,
rl.judge_checkpoint) are relative to the recipe file. Every problem of a recipe is reported at once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_sail.config.loader import read_yaml
from megatron_sail.config.schema import FREEZABLE
from megatron_sail.errors import UserError

# Chain order; a recipe uses a subsequence of it. sft-1, sft-2, ... stand where `sft` does.
STAGE_NAMES = ("vit-warmup", "vit-align", "vit-knowledge", "pretrain-basic", "pretrain-multitask",
               "sft", "soup", "longcot-sft", "rl-reasoning", "think-fusion-sft", "rl-mixed")
KINDS = ("train", "soup", "rl")
PATH_KEYS = ("data.blend", "data.valid_blend", "data.tokenizer", "rl.data", "rl.judge_checkpoint")
_SFT_PHASE = re.compile(r"^sft-([1-9][0-9]*)$")
_STAGE_KEYS = {"name", "kind", "config", "init", "trainable", "reinit", "set", "source", "runs",
               "weights", "include_source"}
_RUN_KEYS = {"seed", "set", "name"}
_TOP_KEYS = {"name", "base", "common", "stages"}


class RecipeError(UserError, ValueError):
    """A recipe problem the user must fix; the message names the file and the stage."""


def chain_position(name: str) -> tuple[int, int]:
    """Where a stage name belongs in the chain (sft phases by their number)."""
    match = _SFT_PHASE.match(name)
    if match:
        return STAGE_NAMES.index("sft"), int(match.group(1))
    return STAGE_NAMES.index(name), 0


def is_stage_name(name: str) -> bool:
    return name in STAGE_NAMES or bool(_SFT_PHASE.match(name))


@dataclass(frozen=True)
class SoupRun:
    """One more run of the soup's source stage: its own seed and/or overrides."""
    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str = "train"
    config: str | None = None          # absolute path, or None for the recipe's base
    init: str = "previous"             # previous | none | an absolute checkpoint path
    trainable: tuple[str, ...] | None = None  # None: every part
    reinit: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()    # dotted key=value, values as JSON
    source: str | None = None          # soup: the stage repeated
    runs: tuple[SoupRun, ...] = ()
    weights: tuple[float, ...] | None = None
    include_source: bool = True

    @property
    def frozen(self) -> list[str]:
        return [] if self.trainable is None else [p for p in FREEZABLE if p not in self.trainable]


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    base: str | None
    common: tuple[str, ...]
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    def index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise RecipeError(f"{self.path}: no stage {name!r} in this recipe "
                          f"(stages: {', '.join(s.name for s in self.stages)})")

    def dir_name(self, index: int) -> str:
        return f"{index + 1:02d}-{self.stages[index].name}"


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested sections and dotted keys alike -> [(dotted key, value)]."""
    if not isinstance(tree, dict):
        return [(prefix.rstrip("."), tree)]
    out = []
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, f"{full}."))
        else:
            out.append((full, value))
    return out


def _overrides(tree: Any, where: str, base_dir: Path, errors: list[str]) -> tuple[str, ...]:
    if tree is None:
        return ()
    if not isinstance(tree, dict):
        errors.append(f"{where} must be a mapping of config keys, got {tree!r}")
        return ()
    out = []
    for key, value in flatten(tree):
        if key in PATH_KEYS and isinstance(value, str):
            value = _abs(value, base_dir)
        out.append(f"{key}={json.dumps(value)}")
    return tuple(out)


def _abs(path: str, base_dir: Path) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _parts(value: Any, where: str, errors: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or any(p not in FREEZABLE for p in value):
        errors.append(f"{where} must be a list of {', '.join(FREEZABLE)}, got {value!r}")
        return None
    return tuple(value)


def _soup_fields(raw: dict, where: str, base_dir: Path, errors: list[str]) -> dict:
    runs = []
    raw_runs = raw.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        errors.append(f"{where}.runs must be a non-empty list of runs (e.g. [{{seed: 2}}])")
        raw_runs = []
    for j, run in enumerate(raw_runs):
        rwhere = f"{where}.runs[{j}]"
        if not isinstance(run, dict) or not run or set(run) - _RUN_KEYS:
            errors.append(f"{rwhere} must be a mapping with keys from {sorted(_RUN_KEYS)}, "
                          f"got {run!r}")
            continue
        overrides = list(_overrides(run.get("set"), f"{rwhere}.set", base_dir, errors))
        seed = run.get("seed")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                errors.append(f"{rwhere}.seed must be an integer, got {seed!r}")
            overrides.append(f"train.seed={json.dumps(seed)}")
        name = str(run.get("name") or (f"seed-{seed}" if seed is not None else f"run-{j + 1}"))
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
            errors.append(f"{rwhere}.name {name!r}: use letters, digits, '.', '_' and '-'")
        runs.append(SoupRun(name=name, overrides=tuple(overrides)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        errors.append(f"{where}.runs: run names {names} repeat; give each a distinct name")
    include = raw.get("include_source", True)
    if not isinstance(include, bool):
        errors.append(f"{where}.include_source must be true or false, got {include!r}")
        include = True
    weights = raw.get("weights")
    if weights is not None:
        count = len(runs) + (1 if include else 0)
        if (not isinstance(weights, list) or len(weights) != count
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0
                       for w in weights) or not sum(weights) > 0):
            errors.append(f"{where}.weights must be {count} non-negative numbers (not all 0), "
                          f"one per souped checkpoint, got {weights!r}")
            weights = None
        else:
            weights = tuple(float(w) for w in weights)
    return {"source": raw.get("source"), "runs": tuple(runs), "weights": weights,
            "include_source": include}


def _stage(raw: Any, i: int, path: Path, errors: list[str]) -> Stage | None:
    where = f"{path}: stages[{i}]"
    if not isinstance(raw, dict):
        errors.append(f"{where} must be a mapping with at least a name, got {raw!r}")
        return None
    name = raw.get("name")
    if isinstance(name, str):
        where = f"{path}: stage {name}"
    if not isinstance(name, str) or not is_stage_name(name):
        errors.append(f"{where}: unknown stage name {name!r} (choose from "
                      f"{', '.join(STAGE_NAMES)}; sft phases as sft-1, sft-2, ...)")
        return None
    unknown = sorted(set(raw) - _STAGE_KEYS)
    if unknown:
        errors.append(f"{where}: unknown key(s) {unknown} (known: {', '.join(sorted(_STAGE_KEYS))})")
    kind = raw.get("kind", "train")
    if kind not in KINDS:
        errors.append(f"{where}: kind {kind!r} must be one of {', '.join(KINDS)}")
    base_dir = path.parent
    config = raw.get("config")
    if config is not None:
        if not isinstance(config, str):
            errors.append(f"{where}: config must be a path, got {config!r}")
            config = None
        else:
            config = _abs(config, base_dir)
            if not os.path.isfile(config):
                errors.append(f"{where}: config file not found: {config}")
    init = raw.get("init", "none" if i == 0 else "previous")
    if not isinstance(init, str) or not init:
        errors.append(f"{where}: init must be previous, none or a checkpoint path, got {init!r}")
        init = "none"
    elif init not in ("previous", "none"):
        init = _abs(init, base_dir)
    if i == 0 and init == "previous":
        errors.append(f"{where}: the first stage has no previous stage to start from "
                      f"(init: none, or a checkpoint path)")
    fields = {}
    if kind == "soup":
        fields = _soup_fields(raw, where, base_dir, errors)
        for key in ("config", "trainable", "reinit", "set"):
            if key in raw:
                errors.append(f"{where}: a soup stage has no '{key}' (its runs repeat the "
                              f"source stage; put overrides in runs[].set)")
    else:
        for key in ("source", "runs", "weights", "include_source"):
            if key in raw:
                errors.append(f"{where}: '{key}' belongs to soup stages only")
    reinit = _parts(raw.get("reinit"), f"{where}: reinit", errors) or ()
    if reinit and init == "none":
        errors.append(f"{where}: reinit re-draws parts of loaded weights, but the stage loads "
                      f"none (init: none)")
    trainable = _parts(raw.get("trainable"), f"{where}: trainable", errors)
    if trainable is not None and not trainable:
        errors.append(f"{where}: trainable is empty: nothing would train")
    return Stage(name=name, kind=kind, config=config, init=init, trainable=trainable,
                 reinit=reinit, overrides=_overrides(raw.get("set"), f"{where}: set",
                                                     base_dir, errors), **fields)


def _check_chain(stages: list[Stage], path: Path, errors: list[str]) -> None:
    names = [s.name for s in stages]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"{path}: stage {name} appears twice")
    if "sft" in names and any(_SFT_PHASE.match(n) for n in names):
        errors.append(f"{path}: use either one 'sft' stage or phases sft-1, sft-2, ..., not both")
    positions = [chain_position(n) for n in names]
    for (a, pa), (b, pb) in zip(zip(names, positions), zip(names[1:], positions[1:])):
        if pb < pa:
            errors.append(f"{path}: stage {b} comes after {a}; the chain order is "
                          f"{', '.join(STAGE_NAMES)}")
    for i, stage in enumerate(stages):
        if stage.kind != "soup":
            continue
        if stage.source not in names[:i]:
            errors.append(f"{path}: stage {stage.name}: source {stage.source!r} must name an "
                          f"earlier stage (one of {', '.join(names[:i]) or 'none'})")
        elif stages[names.index(stage.source)].kind != "train":
            errors.append(f"{path}: stage {stage.name}: source {stage.source} is not a train stage")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path).absolute()
    tree = read_yaml(path, RecipeError, "recipe file")
    errors: list[str] = []
    unknown = sorted(set(tree) - _TOP_KEYS)
    if unknown:
        errors.append(f"{path}: unknown key(s) {unknown} (known: {', '.join(sorted(_TOP_KEYS))})")
    base = tree.get("base")
    if base is not None:
        base = _abs(str(base), path.parent)
        if not os.path.isfile(base):
            errors.append(f"{path}: base config file not found: {base}")
    common = _overrides(tree.get("common"), f"{path}: common", path.parent, errors)
    raw_stages = tree.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        errors.append(f"{path}: 'stages' must be a non-empty list")
        raw_stages = []
    stages = [s for i, raw in enumerate(raw_stages) if (s := _stage(raw, i, path, errors))]
    _check_chain(stages, path, errors)
    if errors:
        raise RecipeError("\n".join(errors))
    return Recipe(path=path, name=str(tree.get("name") or path.stem), base=base, common=common,
                  stages=tuple(stages))
