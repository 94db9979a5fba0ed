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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from megatron_sail.config import load_config


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
    running: list[tuple[LocalRun, subprocess.Popen, float]] = []
    failed = []
    pending = list(todo)
    while pending or running:
        while pending and len(running) < jobs:
            run = pending.pop(0)
            run.run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run.run_dir / "train.log", "w")
            proc = subprocess.Popen(_command(sweep.config, run, nproc), stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            log.close()
            running.append((run, proc, time.monotonic()))
        for item in list(running):
            run, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
            print(f"  {run.name}: {status} in {time.monotonic() - start:.0f}s, "
                  f"log {run.run_dir / 'train.log'}", flush=True)
            if proc.returncode:
                failed.append(run.name)
        time.sleep(0.2)
    if failed:
        print(f"{len(failed)} element(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"fit: sail scaling fit {root}/* --out {root}/fit")
    return 0
