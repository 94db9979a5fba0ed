"""`sail rl` end to end on 2 ranks, from a short SFT warm start on the counting task: an RL
run stopped half-way and resumed writes exactly the metrics of an uninterrupted one (DAPO
with a KL term to the starting weights, DP = 2), the policy split over TP = 2 takes the same
rollouts and updates as one process, and GSPO trains the MoE model with its experts split over
the ranks (EP = 2)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SFT = os.path.join(REPO, "examples", "rl", "count-sft.yaml")
DAPO = os.path.join(REPO, "examples", "rl", "count-dapo.yaml")
GSPO_MOE = os.path.join(REPO, "examples", "rl", "count-gspo-moe.yaml")
SMALL_RL = ["rl.group_size=8", "rl.prompts_per_episode=4", "rl.mini_batch_size=16",
            "rl.updates_per_episode=2", "optimizer.lr=1e-3"]


def sail(*args: str, timeout: int = 600, nproc: int = 2) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "megatron_sail.cli", *args, "--nproc-per-node",
                           str(nproc)], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def warm_start(tmp: Path, preset: str) -> Path:
    run = tmp / f"sft-{preset}"
    sail("train", SFT, f"model.preset={preset}", f"run.output_dir={run}")
    return run / "checkpoints"


def _deterministic(record: dict) -> dict:
    """Everything but the clocks."""
    return {k: v for k, v in record.items() if "time" not in k and "per_sec" not in k}


@pytest.fixture(scope="module")
def tiny_warm_start(tmp_path_factory) -> Path:
    return warm_start(tmp_path_factory.mktemp("rl"), "tiny")


def test_rl_resumed_half_way_equals_the_uninterrupted_run(tmp_path, tiny_warm_start):
    ckpt = tiny_warm_start
    # with a KL term: the resumed run must rebuild the same frozen reference
    common = [DAPO, f"checkpoint.load={ckpt}", "train.train_iters=4", *SMALL_RL,
              "checkpoint.save_interval=null", "rl.kl_coeff=0.05"]
    sail("rl", *common, f"run.output_dir={tmp_path / 'straight'}")
    stopped = tmp_path / "resumed"
    first = sail("rl", *common, f"run.output_dir={stopped}", "train.exit_interval=2")
    assert "stopping at episode 2" in first.stdout
    second = sail("rl", *common, f"run.output_dir={stopped}")
    assert "resumed from" in second.stdout and "at iteration 2" in second.stdout
    straight, resumed = metrics(tmp_path / "straight"), metrics(stopped)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    assert [_deterministic(r) for r in resumed] == [_deterministic(r) for r in straight]
    assert any(r["rl/updates"] > 0 for r in straight)  # the equality covers real updates
    for record in straight:
        for key in ("rl/reward_mean", "rl/accuracy", "rl/response_length_mean",
                    "rl/groups_kept", "rl/rollout_tokens_per_sec", "rl/update_time_s",
                    *(("rl/kl", "rl/clip_fraction") if record["rl/updates"] else ())):
            assert key in record, key


def test_tensor_parallel_policy_equals_one_process(tmp_path, tiny_warm_start):
    """TP = 2 generates with the split model (its picker gathers the vocabulary) and takes the
    log-probs with the vocab-parallel cross entropy: the same rollouts as one process, and
    losses and gradient norms equal up to fp32 reduction order (a sum over the two vocabulary
    halves and the split matmuls: relative 1e-7 seen, 1e-5 allowed)."""
    common = [DAPO, f"checkpoint.load={tiny_warm_start}", "train.train_iters=2", *SMALL_RL,
              "checkpoint.save_interval=null"]
    sail("rl", *common, f"run.output_dir={tmp_path / 'tp1'}", nproc=1)
    sail("rl", *common, "parallel.tensor_model_parallel_size=2",
         f"run.output_dir={tmp_path / 'tp2'}")
    one, split = metrics(tmp_path / "tp1"), metrics(tmp_path / "tp2")
    assert any(r["rl/updates"] > 0 for r in one)
    for a, b in zip(one, split, strict=True):
        for key in ("rl/accuracy", "rl/reward_mean", "rl/response_length_mean",
                    "rl/groups_kept", "rl/updates"):
            assert a[key] == b[key], (key, a[key], b[key])
        if a["rl/updates"]:
            for key in ("loss", "grad_norm", "rl/clip_fraction"):
                assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), (key, a, b)


def test_gspo_trains_the_moe_model_with_experts_over_two_ranks(tmp_path):
    ckpt = warm_start(tmp_path, "tiny-moe")
    run = tmp_path / "gspo"
    proc = sail("rl", GSPO_MOE, f"checkpoint.load={ckpt}", "train.train_iters=3",
                f"run.output_dir={run}")
    assert "RL (gspo): world 2 = TP 1 x PP 1 x DP 2 (EP 2)" in proc.stdout
    records = metrics(run)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    updated = [r for r in records if r["rl/updates"] > 0]
    assert updated, records
    for r in updated:
        assert math.isfinite(r["loss"]) and abs(r["loss"]) < 10
        assert 0 <= r["rl/clip_fraction"] <= 1 and math.isfinite(r["grad_norm"])
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
