"""``sail recipe run``: the stages in order, each an ordinary training (or RL) run through the one
local rank launcher. A finished stage is skipped, an unfinished one resumes from its own run
directory (training resumes exactly), so rerunning the same command continues the chain."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from megatron_sail.checkpointing.layout_files import CheckpointError, resolve_checkpoint
from megatron_sail.utils.atomic import write_atomic
from megatron_sail.distributed.launcher import launch_local
from megatron_sail.recipe.plan import (
    StagePlan, TrainPlan, completed_iteration, soup_finished, stage_finished, train_finished,
)
from megatron_sail.recipe.schema import RecipeError

log = logging.getLogger("megatron_sail.recipe")

INTERRUPTED = 75  # a stage stopped before its end (signal): rerun the command to continue
RUNNER_FILE = "recipe_runner.json"  # which process runs the stage: read by `sail recipe status`


def soup(ckpts: list[Path], out: Path, weights: list[float] | None) -> Path:
    """The homologous model soup (``sail soup``): a weighted average written as a checkpoint.
    ``ckpts`` are runs' ``checkpoints/`` directories: each run's last checkpoint is souped."""
    from megatron_sail.convert.soup import soup_checkpoints

    return soup_checkpoints([resolve_checkpoint(c) for c in ckpts], out, weights=weights)


def _mark_running(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / RUNNER_FILE,
                 json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")


def _train(train: TrainPlan, nproc: int) -> int:
    """Run (or resume) one training or RL run; 0 once it reached train_iters (episodes)."""
    if train_finished(train):
        log.info("%s: finished (%s), skipped", train.label, train.run_dir)
        return 0
    done = completed_iteration(train.run_dir)
    log.info("%s: %s into %s", train.label,
             f"resuming at iteration {done}" if done else "starting", train.run_dir)
    _mark_running(train.run_dir)
    rc = launch_local(nproc, train.worker_args, module=train.worker)
    if rc != 0:
        log.error("%s: training failed with exit code %d; see the output above", train.label, rc)
        return rc
    if not train_finished(train):
        log.warning("%s: stopped at iteration %s of %d; rerun the same command to continue",
                    train.label, completed_iteration(train.run_dir), train.cfg.train.train_iters)
        return INTERRUPTED
    return 0


def _soup_stage(plan: StagePlan, nproc: int) -> int:
    for run in plan.soup_runs:
        rc = _train(run, nproc)
        if rc != 0:
            return rc
    name = plan.stage.name
    if soup_finished(plan):
        log.info("%s: finished (%s), skipped", name, plan.output)
        return 0
    weights = list(plan.stage.weights) if plan.stage.weights else None
    log.info("%s: averaging %d checkpoints of stage %s into %s", name, len(plan.soup_inputs),
             plan.stage.source, plan.output)
    soup(list(plan.soup_inputs), plan.output, weights)
    return 0


def check_start(plan: StagePlan) -> None:
    """A stage's starting weights exist (the stages before it are done)."""
    if plan.start_from is not None and not _has_checkpoint(plan.start_from):
        raise RecipeError(f"stage {plan.stage.name} starts from {plan.start_from}, which holds "
                          f"no checkpoint yet: run the stages before it first")


def _has_checkpoint(path: Path) -> bool:
    try:
        resolve_checkpoint(path)
    except CheckpointError:
        return False
    return True


def run_stages(all_plans: list[StagePlan], selected: list[StagePlan], nproc: int) -> int:
    for plan in selected:
        stage = plan.stage
        if not stage_finished(plan):
            check_start(plan)
        if stage.kind in ("train", "rl"):
            rc = _train(plan.train, nproc)
        else:
            rc = _soup_stage(plan, nproc)
        if rc != 0:
            return rc
    log.info("done: %s", ", ".join(p.stage.name for p in selected))
    return 0
