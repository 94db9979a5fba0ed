"""`sail recipe submit` against the real local SLURM: the first two stages of the tiny recipe as
two jobs, the second held by an afterok dependency on the first, both run to completion."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import REPO
from tests.recipe.harness import tiny_recipe
from tests.slurm.conftest import metrics


def test_recipe_submit_chains_stage_jobs_with_afterok(slurm, tmp_path):
    recipe, root = tiny_recipe(tmp_path), tmp_path / "root"
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_sail.cli", "recipe", "submit", str(recipe),
         "--out", str(root), "--until", "vit-align", "run.tensorboard=false",
         "--gpus-per-node", "0", "--ntasks-per-node", "2"],
        capture_output=True, text=True, cwd=REPO, env=slurm.env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = dict(re.findall(r"^\[recipe\] ([\w-]+): job (\d+)", proc.stdout, re.M))
    assert list(jobs) == ["vit-warmup", "vit-align"], proc.stdout
    first, second = jobs["vit-warmup"], jobs["vit-align"]

    held = slurm.job(second)
    assert held["Dependency"].startswith(f"afterok:{first}"), held
    assert slurm.job(first)["Dependency"] == "(null)"

    done = slurm.wait(first, second, timeout=400)
    assert [done[j]["JobState"] for j in (first, second)] == ["COMPLETED", "COMPLETED"]
    assert done[second]["StartTime"] >= done[first]["EndTime"]
    assert [r["iteration"] for r in metrics(root / "02-vit-align")][-1] == 8
    config = (root / "02-vit-align" / "slurm" / "config.yaml").read_text()
    assert f"load: {root / '01-vit-warmup' / 'checkpoints'}" in config

    status = subprocess.run([sys.executable, "-m", "megatron_sail.cli", "recipe", "status",
                             str(root)], capture_output=True, text=True, cwd=REPO,
                            env=slurm.env, timeout=120)
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line for line in status.stdout.splitlines() if line[:2].isdigit()}
    assert "finished" in rows["01-vit-warmup"] and "finished" in rows["02-vit-align"]
    assert "not started" in rows["03-vit-knowledge"]
