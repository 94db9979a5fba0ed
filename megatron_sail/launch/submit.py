"""From a config (or a sweep) to a queued SLURM job: resolve and validate every config for the
requested world size, write it next to the run's outputs, render the script, sbatch it.

On disk, per run directory::

    RUN_DIR/slurm/config.yaml        the resolved config the job trains (all of its starts)
    RUN_DIR/slurm/job.sbatch         the submitted script (a sweep's lives in its root)
    RUN_DIR/slurm/submission.json    job id, resources, log path: read by `sail slurm status`
    RUN_DIR/slurm/attempts.jsonl     one line per start of the job, written by the script
    RUN_DIR/slurm/logs/              job logs (a sweep's are in ROOT/logs/)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from megatron_sail.config import ConfigError, SailConfig, load_config, save_config
from megatron_sail.config.validation import resolve_layout
from megatron_sail.config.loader import parse_override
from megatron_sail.launch import slurmctl
from megatron_sail.launch.render import RunSpec, ScriptSpec, render_script
from megatron_sail.launch.resources import JobRequest
from megatron_sail.launch.site import SiteProfile
from megatron_sail.launch.sweep import Sweep, as_override
from megatron_sail.utils.atomic import write_atomic, write_json_atomic

SUBMISSION = "submission.json"
SWEEP_RECORD = "sweep.json"


@dataclass(frozen=True)
class JobOptions:
    request: JobRequest
    site: SiteProfile
    job_name: str | None = None
    max_restarts: int | None = None
    dry_run: bool = False
    entry: str = "train"   # rl: the config is an RL run (`sail rl`)
    # More checks of the resolved config (raising a user error), by the layer that knows them
    check: Optional[Callable[[Any], None]] = None

    @property
    def python(self) -> str:
        # sys.executable unresolved: a virtualenv's python is a symlink out of the venv
        return self.site.python or sys.executable


@dataclass(frozen=True)
class Run:
    cfg: SailConfig
    run_dir: Path
    name: str | None = None       # sweep element name
    values: dict | None = None    # sweep element values


def resolve(config: str | Path | None, overrides: list[str], request: JobRequest,
            output_dir: Path | None = None) -> Run:
    """The resolved config with an absolute output dir, validated for the job's world size."""
    cfg = load_config(config, overrides)
    run_dir = Path(output_dir or cfg.run.output_dir).absolute()
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(run_dir))
    gpus = request.gpus_per_node > 0
    # Transformer Engine is checked again on the nodes; here only what the request decides.
    resolve_layout(cfg, request.world_size, cuda_available=gpus, te_available=gpus)
    return Run(cfg=cfg, run_dir=run_dir)


def default_job_name(name: str) -> str:
    """``sail-<name>`` in the characters every SLURM job name may hold."""
    return "sail-" + re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)[:100]


def _refuse_if_active(record: Path) -> None:
    """Two jobs writing one run directory would corrupt its checkpoints."""
    if not record.is_file():
        return
    job_id = json.loads(record.read_text()).get("job_id")
    if job_id and slurmctl.is_queued(str(job_id)):
        raise slurmctl.SlurmError(f"{record.parent.parent}: job {job_id} is still queued or "
                                  f"running for this directory; scancel {job_id} or wait")


def _log_path(pattern: str, job_name: str, job_id: str, index: int | None = None) -> str:
    path = pattern.replace("%x", job_name).replace("%A", job_id).replace("%j", job_id)
    return path.replace("%a", str(index)) if index is not None else path


def _write_json(path: Path, data: dict) -> None:
    write_json_atomic(path, data, indent=1)


def _submission(opts: JobOptions, job_name: str, script: Path, cfg: SailConfig) -> dict:
    req = opts.request
    return {
        "job_name": job_name,
        "submitted": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "script": str(script),
        "nodes": req.nodes, "ntasks_per_node": req.ntasks_per_node,
        "gpus_per_node": req.gpus_per_node, "world_size": req.world_size,
        "train_iters": cfg.train.train_iters,
        "command": sys.argv,
    }


def submit_run(config: str | Path, overrides: list[str], opts: JobOptions) -> int:
    run = resolve(config, overrides, opts.request)
    if opts.check is not None:   # e.g. an RL run's rl section and prompt file
        opts.check(run.cfg)      # before anything is queued
    job_name = opts.job_name or default_job_name(run.run_dir.name)
    spec = ScriptSpec(command="submit", job_name=job_name, request=opts.request, site=opts.site,
                      runs=[RunSpec(run.run_dir, run.cfg.train.train_iters)],
                      workdir=Path.cwd(), log=str(run.run_dir / "slurm/logs/%x-%j.out"),
                      python=opts.python, max_restarts=opts.max_restarts, entry=opts.entry)
    if opts.dry_run:
        print(render_script(spec), end="")
        return 0
    job_id, line, log = submit_job(run.run_dir, run.cfg, spec, opts)
    print(line)
    print(f"run {run.run_dir}\nlog {log}\nfollow: sail slurm status {run.run_dir}")
    return 0


def submit_job(run_dir: Path, cfg: SailConfig, spec: ScriptSpec,
               opts: JobOptions) -> tuple[str, str, str]:
    """sbatch one run's job: its config, script and submission record in RUN_DIR/slurm.
    Returns (job id, sbatch's line, log path)."""
    script_text = render_script(spec)
    slurm_dir = run_dir / "slurm"
    _refuse_if_active(slurm_dir / SUBMISSION)
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    save_config(cfg, slurm_dir / "config.yaml")
    script = slurm_dir / "job.sbatch"
    write_atomic(script, script_text)
    job_id, line = slurmctl.sbatch(str(script))
    log = _log_path(spec.log, spec.job_name, job_id)
    _write_json(slurm_dir / SUBMISSION, {"job_id": job_id, "job_ref": job_id, "log": log,
                                         **_submission(opts, spec.job_name, script, cfg)})
    return job_id, line, log


def resolve_sweep(sweep: Sweep, overrides: list[str], request: JobRequest) -> tuple[Path, list[Run]]:
    """Every element resolved and validated; all problems reported at once."""
    swept = sweep.swept_keys
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in swept:
            raise ConfigError(f"override {text!r}: '{key}' is swept by {sweep.path}")
    common = sweep.overrides + overrides
    root = resolve(sweep.config, common, request).run_dir
    runs, errors = [], []
    for element in sweep.elements:
        run_dir = root / element.name
        try:
            run = resolve(sweep.config, common + element.overrides
                          + [as_override("run.output_dir", str(run_dir))], request)
            runs.append(dataclasses.replace(run, name=element.name, values=element.values))
        except ConfigError as exc:
            errors.append(f"sweep element {element.name}: {exc}")
    if errors:
        raise ConfigError("\n".join(errors))
    return root, runs


def submit_sweep(sweep: Sweep, overrides: list[str], opts: JobOptions) -> int:
    root, runs = resolve_sweep(sweep, overrides, opts.request)
    job_name = opts.job_name or default_job_name(f"sweep-{sweep.path.stem}")
    spec = ScriptSpec(command="sweep", job_name=job_name, request=opts.request, site=opts.site,
                      runs=[RunSpec(r.run_dir, r.cfg.train.train_iters) for r in runs],
                      workdir=Path.cwd(), log=str(root / "logs/%x-%A_%a.out"), python=opts.python,
                      array=True, max_parallel=sweep.max_parallel, max_restarts=opts.max_restarts)
    script_text = render_script(spec)
    if opts.dry_run:
        print(script_text, end="")
        return 0

    _refuse_if_active(root / SWEEP_RECORD)
    for run in runs:
        _refuse_if_active(run.run_dir / "slurm" / SUBMISSION)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for run in runs:
        (run.run_dir / "slurm").mkdir(parents=True, exist_ok=True)
        save_config(run.cfg, run.run_dir / "slurm" / "config.yaml")
    script = root / "sweep.sbatch"
    write_atomic(script, script_text)
    job_id, line = slurmctl.sbatch(str(script))
    for index, run in enumerate(runs):
        _write_json(run.run_dir / "slurm" / SUBMISSION, {
            "job_id": job_id, "job_ref": f"{job_id}_{index}", "array_index": index,
            "log": _log_path(spec.log, job_name, job_id, index), "sweep": str(root),
            "values": run.values, **_submission(opts, job_name, script, run.cfg)})
    _write_json(root / SWEEP_RECORD, {
        "job_id": job_id, "job_name": job_name, "sweep_file": str(sweep.path.absolute()),
        "script": str(script), "elements": [
            {"index": i, "name": r.name, "run_dir": str(r.run_dir), "values": r.values}
            for i, r in enumerate(runs)]})
    print(line)
    print(f"sweep {root}: {len(runs)} elements as array job {job_id}_[0-{len(runs) - 1}]")
    for index, run in enumerate(runs):
        print(f"  {job_id}_{index}  {run.run_dir}")
    print(f"follow: sail slurm status {root}")
    return 0
