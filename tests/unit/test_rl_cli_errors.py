"""`sail rl CONFIG` refuses bad input in one line with exit code 2, before any rank starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

CONFIG = os.path.join(REPO, "examples", "rl", "count-dapo.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["rl.episodes=3"], "unknown config key 'rl.episodes'"),
    (["rl.data=null"], "rl.data is not set: RL needs prompt records"),
    (["rl.data=/no/such/records.jsonl"], "rl.data=/no/such/records.jsonl: no such file"),
    (["rl.rewards=[boxed_answer, judge]", "rl.reward_weights=[1.0, 1.0]"],
     "the judge reward needs rl.judge_checkpoint"),
    (["rl.mini_batch_size=48"], "rl.mini_batch_size=48 must divide the 64 rollouts"),
])
def test_bad_rl_input_is_one_line_and_exit_2(tmp_path, overrides, message):
    proc = subprocess.run([sys.executable, "-m", "megatron_sail.cli", "rl", CONFIG, *overrides,
                           f"run.output_dir={tmp_path / 'run'}", "--nproc-per-node", "2"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sail rl: error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
