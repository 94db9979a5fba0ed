"""``sail recipe show`` (the chain as a table) and ``sail recipe status`` (where each stage is)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from megatron_sail.config.schema import FREEZABLE
from megatron_sail.launch import slurmctl
from megatron_sail.launch.status import run_status
from megatron_sail.recipe.plan import StagePlan, TrainPlan, stage_finished, train_finished
from megatron_sail.recipe.runner import RUNNER_FILE

ROOT_RECORD = "recipe.json"  # ROOT/recipe.json: which recipe and overrides made this root


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _init(plan: StagePlan, plans: list[StagePlan]) -> str:
    if plan.start_from is None:
        text = "fresh"
    else:
        owner = next((p for p in plans if p.output == plan.start_from), None)
        text = owner.stage.name if owner else str(plan.start_from)
    if plan.stage.reinit:
        text += f" + fresh {','.join(plan.stage.reinit)}"
    return text


def _data(train: TrainPlan) -> str:
    data = train.cfg.data
    return data.dataset if data.dataset != "blend" else os.path.basename(str(data.blend))


def show(plans: list[StagePlan]) -> str:
    rows = []
    for plan in plans:
        stage, train = plan.stage, plan.train
        if stage.kind == "soup":
            runs = ", ".join(r.run_dir.name for r in plan.soup_runs)
            what = f"{stage.source}" + (" + " if stage.include_source else " ") + f"[{runs}]"
            rows.append([stage.name, "soup", "-", f"average of {what}", "-", "-", "-", "-"])
        elif stage.kind == "rl":
            cfg = train.cfg
            trainable = [p for p in FREEZABLE if p not in cfg.model.freeze]
            rows.append([stage.name, f"rl ({cfg.rl.algorithm})", ",".join(trainable),
                         _init(plan, plans), f"{cfg.optimizer.lr:g}",
                         str(cfg.rl.rollouts_per_episode), str(cfg.rl.max_context),
                         os.path.basename(str(cfg.rl.data))])
        else:
            cfg = train.cfg
            trainable = [p for p in FREEZABLE if p not in cfg.model.freeze]
            lr = f"{cfg.optimizer.lr:g}" + (" (AdaLRS)" if _adalrs(cfg) else "")
            rows.append([stage.name, "train", ",".join(trainable), _init(plan, plans), lr,
                         str(cfg.train.global_batch_size), str(cfg.data.seq_length), _data(train)])
    return table(["stage", "kind", "trainable", "init", "lr", "batch", "seq", "data"], rows)


def _adalrs(cfg) -> bool:
    """Whether the stage searches its LR with AdaLRS (optimizer.adalrs, where the build has it)."""
    adalrs = getattr(cfg.optimizer, "adalrs", None)
    return bool(getattr(adalrs, "enabled", False))


def write_root_record(root: Path, recipe_path: Path, overrides: list[str]) -> None:
    from megatron_sail.utils.atomic import write_atomic

    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / ROOT_RECORD, json.dumps({"recipe": str(recipe_path),
                                                 "overrides": list(overrides)}, indent=1) + "\n")


def read_root_record(root: Path) -> dict | None:
    try:
        return json.loads((root / ROOT_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _runner_alive(run_dir: Path) -> bool:
    try:
        record = json.loads((run_dir / RUNNER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _train_state(train: TrainPlan) -> tuple[str, str, str]:
    """(state, last iteration, last loss) of one training run."""
    s = run_status(train.run_dir)
    iters = train.cfg.train.train_iters
    progress = "-" if s.iteration is None else f"{s.iteration}/{iters}"
    loss = "-" if s.loss is None else f"{s.loss:.4f}"
    if train_finished(train):
        return "finished", progress, loss
    if s.state in slurmctl.ACTIVE_STATES:
        return ("running" if s.state == "RUNNING" else "queued") + f" (job {s.job})", progress, loss
    if _runner_alive(train.run_dir):
        return "running", progress, loss
    if train.run_dir.exists():
        return "interrupted (rerun to resume)", progress, loss
    return "not started", progress, loss


def status(plans: list[StagePlan]) -> str:
    rows = []
    for plan in plans:
        stage = plan.stage
        name = f"{plan.index + 1:02d}-{stage.name}"
        if stage.kind in ("train", "rl"):
            rows.append([name, *_train_state(plan.train)])
        else:
            for run in plan.soup_runs:
                rows.append([f"{name}/{run.run_dir.name}", *_train_state(run)])
            done = stage_finished(plan)
            rows.append([name, "finished" if done else "not souped yet", "-", "-"])
    return table(["stage", "state", "iteration", "loss"], rows)
