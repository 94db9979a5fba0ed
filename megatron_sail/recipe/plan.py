"""From a recipe and an output root to each stage's training command: the config file and the
overrides that carry the hand-off (start from the previous stage's weights, frozen parts,
re-initialised parts, run directory). Every stage's config is resolved and validated up front."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_sail.checkpointing.layout_files import (
    CheckpointError, latest_checkpoint, read_marker,
)
from megatron_sail.config import ConfigError, SailConfig, load_config
from megatron_sail.config.validation import resolve_layout
from megatron_sail.recipe.schema import Recipe, RecipeError, Stage

SOUP_CHECKPOINT = "checkpoint"  # ROOT/NN-soup/checkpoint: the souped weights
SOUP_RUNS = "runs"              # ROOT/NN-soup/runs/NAME: the source stage's repeats
TRAIN_WORKER = "megatron_sail.training.worker"
RL_WORKER = "megatron_sail.rl.worker"        # rl stages: episodes are train.train_iters


@dataclass(frozen=True)
class TrainPlan:
    """One training run: ``sail train CONFIG OVERRIDES...`` into ``run_dir``."""
    label: str                 # e.g. "sft" or "soup/seed-2"
    run_dir: Path
    config: str | None
    overrides: tuple[str, ...]
    cfg: SailConfig            # resolved, validated
    worker: str = TRAIN_WORKER  # the rank entry point: training, or RL (rl stages)

    @property
    def worker_args(self) -> list[str]:
        return ([self.config] if self.config else []) + list(self.overrides)


@dataclass(frozen=True)
class StagePlan:
    index: int
    stage: Stage
    run_dir: Path
    start_from: Path | None         # the checkpoint (directory) the stage loads, if any
    train: TrainPlan | None = None  # train and rl stages
    soup_runs: tuple[TrainPlan, ...] = ()  # soup stages: the repeats of the source stage
    soup_inputs: tuple[Path, ...] = ()     # soup stages: the checkpoints averaged

    @property
    def output(self) -> Path | None:
        """Where the stage's result lives: what the next stage loads."""
        if self.stage.kind in ("train", "rl"):
            return self.run_dir / "checkpoints"
        if self.stage.kind == "soup":
            return self.run_dir / SOUP_CHECKPOINT
        return None


def _arg(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"


def _resolve(label: str, config: str | None, overrides: list[str], world: int | None,
             gpus: bool, errors: list[str], worker: str = TRAIN_WORKER) -> TrainPlan | None:
    """``world`` None: the config alone (keys and types), not its layout or files."""
    try:
        cfg = load_config(config, overrides)
        if worker == RL_WORKER:
            from megatron_sail.rl.config import check_rl_config, check_rl_run

            check_rl_run(cfg) if world is not None else check_rl_config(cfg.rl)
        if world is not None:
            resolve_layout(cfg, world, cuda_available=gpus, te_available=gpus)
    except ConfigError as exc:
        errors.append(f"stage {label}: {exc}")
        return None
    return TrainPlan(label=label, run_dir=Path(cfg.run.output_dir), config=config,
                     overrides=tuple(overrides), cfg=cfg, worker=worker)


def _train_overrides(recipe: Recipe, stage: Stage, run_dir: Path, start_from: Path | None,
                     extra: list[str]) -> list[str]:
    handoff = [_arg("model.freeze", stage.frozen),
               _arg("checkpoint.load", str(start_from) if start_from else None),
               _arg("checkpoint.reinit", list(stage.reinit))]
    # Later overrides win: recipe-wide, the stage's own, the hand-off, the command line,
    # and last the run directory, which the recipe owns.
    return [*recipe.common, *stage.overrides, *handoff, *extra, _arg("run.output_dir", str(run_dir))]


def plan_recipe(recipe: Recipe, root: Path, world: int | None = 1, extra: list[str] = (),
                gpus: bool = False) -> list[StagePlan]:
    """Every stage resolved; all problems of all stages raised together as one RecipeError.
    ``world`` is the number of ranks the stages will run on, checked against each layout
    with the files it names (None: only the configs' keys and values, for display);
    ``gpus`` whether they run on GPUs."""
    root = Path(root).absolute()
    errors: list[str] = []
    plans: list[StagePlan] = []
    previous: Path | None = None
    by_name: dict[str, StagePlan] = {}
    for i, stage in enumerate(recipe.stages):
        run_dir = root / recipe.dir_name(i)
        start_from = {"previous": previous, "none": None}.get(stage.init, Path(stage.init))
        plan = StagePlan(index=i, stage=stage, run_dir=run_dir, start_from=start_from)
        if stage.kind in ("train", "rl"):
            train = _resolve(stage.name, stage.config or recipe.base,
                             _train_overrides(recipe, stage, run_dir, start_from, list(extra)),
                             world, gpus, errors,
                             RL_WORKER if stage.kind == "rl" else TRAIN_WORKER)
            plan = StagePlan(i, stage, run_dir, start_from, train=train)
        elif stage.kind == "soup":
            plan = _soup_plan(recipe, plan, by_name.get(stage.source), list(extra), world, gpus,
                              errors)
        by_name[stage.name] = plan
        plans.append(plan)
        if plan.output is not None:
            previous = plan.output
    if errors:
        raise RecipeError("\n".join(_once(errors, list(extra))))
    return plans


def _once(errors: list[str], extra: list[str]) -> list[str]:
    """A bad command-line override fails every stage alike: say so once, without a stage."""
    out = []
    for error in errors:
        if any(f"override {text!r}" in error for text in extra):
            error = error.split(": ", 1)[1]
        out.append(error)
    return list(dict.fromkeys(out))


def _soup_plan(recipe: Recipe, plan: StagePlan, source: StagePlan | None, extra: list[str],
               world: int | None, gpus: bool, errors: list[str]) -> StagePlan:
    if source is None or source.train is None:
        return plan  # the schema already reported a bad source; or its config failed
    runs = []
    for run in plan.stage.runs:
        run_dir = plan.run_dir / SOUP_RUNS / run.name
        overrides = _train_overrides(recipe, source.stage, run_dir, source.start_from,
                                     [*run.overrides, *extra])
        resolved = _resolve(f"{plan.stage.name}/{run.name}", source.train.config, overrides,
                            world, gpus, errors)
        if resolved is not None:
            runs.append(resolved)
    inputs = [r.run_dir / "checkpoints" for r in runs]
    if plan.stage.include_source:
        inputs.insert(0, source.train.run_dir / "checkpoints")
    return StagePlan(plan.index, plan.stage, plan.run_dir, plan.start_from,
                     soup_runs=tuple(runs), soup_inputs=tuple(inputs))


def completed_iteration(run_dir: Path) -> int | None:
    """Iteration of a run's latest complete checkpoint (None: no checkpoint yet)."""
    try:
        latest = latest_checkpoint(Path(run_dir) / "checkpoints")
    except CheckpointError:
        return None
    return None if latest is None else int(read_marker(latest)["iteration"])


def train_finished(train: TrainPlan) -> bool:
    done = completed_iteration(train.run_dir)
    return done is not None and done >= train.cfg.train.train_iters


def soup_finished(plan: StagePlan) -> bool:
    """The soup is written whole (staged, then renamed): a complete checkpoint means done."""
    try:
        return latest_checkpoint(plan.run_dir / SOUP_CHECKPOINT) is not None
    except CheckpointError:
        return False


def stage_finished(plan: StagePlan) -> bool:
    if plan.stage.kind in ("train", "rl"):
        return plan.train is not None and train_finished(plan.train)
    if plan.stage.kind == "soup":
        return soup_finished(plan)
    return False


def select(recipe: Recipe, plans: list[StagePlan], until: str | None,
           only: str | None) -> list[StagePlan]:
    """The stages a command acts on: all, up to and including ``until``, or ``only`` one."""
    if until and only:
        raise RecipeError("--until and --only exclude each other")
    if only:
        return [plans[recipe.index(only)]]
    if until:
        return plans[:recipe.index(until) + 1]
    return plans

