"""Run a sweep file's elements on this machine (the SLURM path is ``sail slurm sweep``).

Sweep files are those of ``megatron_sail.launch.sweep`` (base config, common overrides, a grid
and/or list), so one file describes a scaling study both here and as a SLURM array; element
``e`` runs in ``<run.output_dir>/<e.name>`` in both cases, which is what ``sail scaling fit``
then reads. Finished elements are skipped and interrupted ones resume from their checkpoint.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_sail.config import load_config
from megatron_sail.utils.processes import Job, run_jobs


@dataclass
class LocalRun:
    name: str
    run_dir: Path
    overrides: list[str]
    train_iters: int

    def finished(self) -> bool:
        metrics = self.run_dir / "metrics.jsonl"
        if not metrics.is_file():
            return False
        lines = [line for line in metrics.read_text().splitlines() if line.strip()]
        return bool(lines) and json.loads(lines[-1]).get("iteration") == self.train_iters


def plan_runs(sweep, overrides: list[str]) -> tuple[Path, list[LocalRun]]:
    """Every element's run directory and overrides (validated by loading its config)."""
    from megatron_sail.launch.sweep import as_override

    common = sweep.overrides + overrides
    base = load_config(sweep.config, common)
    root = Path(base.run.output_dir).absolute()
    shared = []
    if base.data.dataset == "synthetic" and base.data.tokenizer is None:
        # One tokenizer for the whole study: the same data for every element, trained once.
        shared = [as_override("data.tokenizer", str(root / "tokenizer.model"))]
    runs = []
    for element in sweep.elements:
        run_dir = root / element.name
        ovr = common + shared + element.overrides + [as_override("run.output_dir", str(run_dir))]
        cfg = load_config(sweep.config, ovr)
        runs.append(LocalRun(element.name, run_dir, ovr, cfg.train.train_iters))
    return root, runs


def _command(config, run: LocalRun, nproc: int) -> list[str]:
    return [sys.executable, "-m", "megatron_sail.cli", "train", *([str(config)] if config else []),
            *run.overrides, "--nproc-per-node", str(nproc)]


def run_local(sweep, overrides: list[str], jobs: int = 1, nproc: int = 1,
              dry_run: bool = False) -> int:
    root, runs = plan_runs(sweep, overrides)
    todo = [r for r in runs if not r.finished()]
    print(f"sweep {root}: {len(runs)} elements, {len(runs) - len(todo)} already finished")
    if dry_run:
        for run in todo:
            print(shlex.join(_command(sweep.config, run, nproc)))
        return 0
    if todo and any("data.tokenizer" in o for o in todo[0].overrides):
        from megatron_sail.data.encoding.tokenizer import load_or_train_synthetic_tokenizer

        root.mkdir(parents=True, exist_ok=True)
        load_or_train_synthetic_tokenizer(str(root / "tokenizer.model"))
    # Share the cores between the concurrent processes unless the user decided.
    threads = (os.environ.get("OMP_NUM_THREADS")
               or str(max(1, (os.cpu_count() or 1) // (jobs * nproc))))
    env = dict(os.environ, OMP_NUM_THREADS=threads)

    def report(job: Job, code: int, seconds: float) -> None:
        status = "done" if code == 0 else f"FAILED ({code})"
        print(f"  {job.name}: {status} in {seconds:.0f}s, log {job.log}", flush=True)

    queue = [Job(run.name, _command(sweep.config, run, nproc), run.run_dir / "train.log")
             for run in todo]
    codes = run_jobs(queue, jobs, env=env, on_done=report)
    failed = [run.name for run in todo if codes[run.name] != 0]
    if failed:
        print(f"{len(failed)} element(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"fit: sail scaling fit {root}/* --out {root}/fit")
    return 0
