"""``sail recipe submit``: the chain as SLURM jobs, each stage's job starting only after the
previous one succeeded (``--dependency=afterok``). A train (or rl) stage's job is an ordinary
``sail slurm submit`` (``--rl``) job of the stage's resolved config (pre-emption warning, checkpoint,
requeue); a soup stage submits its repeated runs the same way, then one single-task job that
runs ``sail recipe run RECIPE --out ROOT --only soup`` once they all succeeded."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from megatron_sail.launch.render import RunSpec, ScriptSpec, render_script
from megatron_sail.launch.submit import JobOptions, submit_job
from megatron_sail.recipe.plan import (
    RL_WORKER, StagePlan, TrainPlan, plan_recipe, select, stage_finished, train_finished,
)
from megatron_sail.recipe.report import write_root_record
from megatron_sail.recipe.schema import Recipe, load_recipe

log = logging.getLogger("megatron_sail.recipe")


def _spec(recipe: Recipe, run_dir: Path, label: str, train_iters: int, opts: JobOptions,
          after: list[str], request=None, step_args=None, entry: str = "train") -> ScriptSpec:
    name = f"{opts.job_name or 'sail-' + recipe.name}-{label}"
    return ScriptSpec(command="recipe submit", job_name=name, request=request or opts.request,
                      site=opts.site, runs=[RunSpec(run_dir, train_iters)], workdir=Path.cwd(),
                      log=str(run_dir / "slurm/logs/%x-%j.out"), python=opts.python,
                      max_restarts=opts.max_restarts,
                      dependency=f"afterok:{':'.join(after)}" if after else None,
                      step_args=step_args, entry=entry)


class _Submitter:
    def __init__(self, recipe: Recipe, root: Path, overrides: list[str], opts: JobOptions):
        self.recipe, self.root, self.overrides, self.opts = recipe, root, overrides, opts

    def _send(self, label: str, run_dir: Path, cfg, spec: ScriptSpec) -> str:
        if self.opts.dry_run:
            print(f"#### stage job {label}: {spec.job_name} ({spec.dependency or 'no dependency'})")
            print(render_script(spec), end="")
            return f"<{label}>"
        job_id, _, logfile = submit_job(run_dir, cfg, spec, self.opts)
        log.info("%s: job %s%s, log %s", label, job_id,
                 f" after {spec.dependency}" if spec.dependency else "", logfile)
        return job_id

    def train(self, train: TrainPlan, label: str, after: list[str]) -> str:
        spec = _spec(self.recipe, train.run_dir, label, train.cfg.train.train_iters, self.opts,
                     after, entry="rl" if train.worker == RL_WORKER else "train")
        return self._send(train.label, train.run_dir, train.cfg, spec)

    def soup(self, plan: StagePlan, label: str, after: list[str]) -> str:
        """One task that averages the finished runs (the template's finished check: 0 >= 0).
        Its --nproc-per-node is the training jobs' world size, against which the stages'
        layouts are validated; it trains nothing (the runs it needs succeeded before it)."""
        request = dataclasses.replace(self.opts.request, nodes=1, ntasks_per_node=1)
        step = ("recipe", "run", str(self.recipe.path), "--out", str(self.root),
                "--only", plan.stage.name,
                "--nproc-per-node", str(self.opts.request.world_size), *self.overrides)
        spec = _spec(self.recipe, plan.run_dir, label, 0, self.opts, after,
                     request=request, step_args=step)
        # the job's record keeps a config: the souped runs'
        return self._send(plan.stage.name, plan.run_dir, plan.soup_runs[0].cfg, spec)


def submit_recipe(recipe_file: str, root: Path, overrides: list[str], until: str | None,
                  opts: JobOptions) -> int:
    recipe = load_recipe(recipe_file)
    plans = plan_recipe(recipe, root, opts.request.world_size, overrides,
                        gpus=opts.request.gpus_per_node > 0)
    selected = select(recipe, plans, until, None)
    if not opts.dry_run:
        write_root_record(root, recipe.path, overrides)
    sub = _Submitter(recipe, root, overrides, opts)
    after: list[str] = []  # the job(s) the next stage waits for
    for plan in selected:
        stage, label = plan.stage, recipe.dir_name(plan.index)
        if stage_finished(plan):
            log.info("%s: finished already, no job", stage.name)
            after = []
            continue
        if stage.kind in ("train", "rl"):
            after = [sub.train(plan.train, label, after)]
        else:
            runs = [sub.train(run, f"{label}-{run.run_dir.name}", after)
                    for run in plan.soup_runs if not train_finished(run)]
            after = [sub.soup(plan, label, runs or after)]
    if not opts.dry_run:
        print(f"follow: sail recipe status {root}", file=sys.stdout)
    return 0
