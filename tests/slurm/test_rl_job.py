"""`sail slurm submit --rl`: an RL run as an ordinary SLURM job on the real local cluster (two
srun tasks, one world), from a short SFT warm start on the counting task."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import REPO
from tests.slurm.conftest import metrics

RL_DIR = os.path.join(REPO, "examples", "rl")


def test_rl_job_runs_the_rl_loop_to_completion(slurm, tmp_path):
    sft = tmp_path / "sft"
    proc = subprocess.run([sys.executable, "-m", "megatron_sail.cli", "train",
                           os.path.join(RL_DIR, "count-sft.yaml"), f"run.output_dir={sft}",
                           "train.train_iters=4", "run.tensorboard=false", "--nproc-per-node",
                           "2"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "rl"
    submitted = slurm.sail("submit", os.path.join(RL_DIR, "count-dapo.yaml"), "--rl",
                           f"run.output_dir={run}", f"checkpoint.load={sft / 'checkpoints'}",
                           "train.train_iters=2", "rl.prompts_per_episode=2",
                           "rl.mini_batch_size=16", "rl.updates_per_episode=1",
                           "run.tensorboard=false", "--gpus-per-node", "0",
                           "--ntasks-per-node", "2")
    job = re.match(r"Submitted batch job (\d+)\n", submitted.stdout).group(1)
    info = slurm.wait(job, timeout=400)[job]
    log = (run / f"slurm/logs/sail-rl-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert "RL (dapo): world 2 = TP 1 x PP 1 x DP 2" in log
    assert [r["iteration"] for r in metrics(run)] == [1, 2]
    assert all("rl/accuracy" in r for r in metrics(run))
