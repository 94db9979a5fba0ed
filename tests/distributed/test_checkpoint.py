"""Checkpoint, resume, resharding, stop signals and bad checkpoints, through the real CLI
with 2 processes (gloo) and Megatron's distributed checkpoint format."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO, TINY, assert_close_losses

STRAIGHT = ["train.train_iters=20", "checkpoint.save_interval=5", "checkpoint.keep_last=2"]


def read_checkpoint(ckpt_dir, tmp_path) -> dict:
    """All tensors of a distributed checkpoint, by layout-independent key."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / f"{os.path.basename(ckpt_dir)}.pt"
    dcp_to_torch_save(str(ckpt_dir), str(out))
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def straight(sail, tmp_path_factory):
    """20 uninterrupted iterations with DP=2 (distributed optimizer sharded over 2 ranks)."""
    out = tmp_path_factory.mktemp("straight")
    sail.train(out, *STRAIGHT, nproc=2)
    return out


def test_checkpoint_layout_and_keep_last(straight):
    root = straight / "checkpoints"
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "20"
    kept = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert kept == ["iter_0000015", "iter_0000020"]  # keep_last=2 of saves at 5, 10, 15, 20
    marker = json.loads((root / "iter_0000020" / "sail_checkpoint.json").read_text())
    assert marker["iteration"] == 20 and marker["consumed_samples"] == 20 * 8
    assert (root / "iter_0000020" / "metadata.json").is_file()  # Megatron dist-ckpt metadata
    metrics = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in metrics] == list(range(1, 21))
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "consumed_samples"):
        assert all(key in r for r in metrics)
    assert (straight / "config.yaml").is_file()


def test_resume_is_exact(sail, straight, tmp_path):
    sail.train(tmp_path, *STRAIGHT, "train.exit_interval=10", nproc=2)
    assert (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "10"
    assert max(sail.losses(tmp_path)) == 10
    proc = sail.train(tmp_path, *STRAIGHT, nproc=2)
    assert "resumed from" in proc.stdout
    # the checkpoint holds every weight: none is drawn first (and the losses still match)
    assert "weights not initialised: loaded from the checkpoint" in proc.stdout
    resumed, ref = sail.metrics(tmp_path), sail.metrics(straight)
    assert [r["iteration"] for r in resumed] == list(range(1, 21))
    for a, b in zip(resumed[10:], ref[10:]):  # iterations 11-20: model, optimizer, LR, data
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"], (a, b)
        assert a["consumed_samples"] == b["consumed_samples"]


def test_reshard_tp2_to_tp1(sail, straight, tmp_path):
    sail.train(tmp_path, *STRAIGHT, "train.exit_interval=10",
               "parallel.tensor_model_parallel_size=2", nproc=2)
    sail.train(tmp_path, *STRAIGHT, nproc=1)  # same run, now TP=1 on one process
    assert_close_losses(sail.losses(tmp_path), sail.losses(straight), range(11, 21))


def test_frozen_parts_do_not_change(sail, tmp_path):
    sail.train(tmp_path, "train.train_iters=2", "checkpoint.save_interval=1",
               "model.freeze=vision,llm", "parallel.pipeline_model_parallel_size=2",
               "parallel.first_stage_llm_layers=0", nproc=2)
    first = read_checkpoint(tmp_path / "checkpoints" / "iter_0000001", tmp_path)
    second = read_checkpoint(tmp_path / "checkpoints" / "iter_0000002", tmp_path)
    weights = [k for k, v in first.items()
               if isinstance(v, torch.Tensor) and k.startswith(("vision.", "adapter.", "language_model."))]
    frozen = [k for k in weights if not k.startswith("adapter.")]
    assert frozen and all(torch.equal(first[k], second[k]) for k in frozen)
    adapter = [k for k in weights if k.startswith("adapter.")]
    assert any(not torch.equal(first[k], second[k]) for k in adapter)


def test_sigterm_saves_and_resumes(sail, tmp_path):
    cmd = [sys.executable, "-m", "megatron_sail.cli", "train", TINY, f"run.output_dir={tmp_path}",
           "train.train_iters=5000", "checkpoint.save_interval=null", "--nproc-per-node", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    latest = int((tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
    assert latest >= 3 and f"stopping at iteration {latest} (signal" in out
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
    done = sail.train(tmp_path, f"train.train_iters={latest + 2}", "checkpoint.save_interval=null")
    assert f"resumed from" in done.stdout
    assert sorted(sail.losses(tmp_path))[-1] == latest + 2


def test_finetune_from_checkpoint_load(sail, straight, tmp_path):
    proc = sail.train(tmp_path, "train.train_iters=2",
                      f"checkpoint.load={straight / 'checkpoints'}",
                      "checkpoint.save_interval=null", nproc=1)
    assert "weights not initialised: loaded from the checkpoint" in proc.stdout
    losses = sail.losses(tmp_path)
    assert sorted(losses) == [1, 2]  # a new run: iteration count starts again
    assert losses[1] < sail.losses(straight)[1] - 1.0  # but from the trained weights


def _copy_run(src, dst):
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def test_corrupt_checkpoints_are_named(sail, straight, tmp_path):
    run = _copy_run(straight, tmp_path / "bad_latest")
    latest = run / "checkpoints" / "latest_checkpointed_iteration.txt"
    latest.write_text("twenty\n")
    proc = sail.train(run, *STRAIGHT, "train.train_iters=21", nproc=1, expect_ok=False)
    assert proc.returncode == 2 and str(latest) in proc.stderr

    run = _copy_run(straight, tmp_path / "missing_shard")
    ckpt = run / "checkpoints" / "iter_0000020"
    for shard in ckpt.glob("*.distcp"):
        shard.write_bytes(b"garbage")
    proc = sail.train(run, *STRAIGHT, "train.train_iters=21", nproc=1, expect_ok=False)
    assert proc.returncode == 2 and str(ckpt) in proc.stderr

    run = _copy_run(straight, tmp_path / "incomplete")
    (run / "checkpoints" / "iter_0000020" / "sail_checkpoint.json").unlink()
    proc = sail.train(run, *STRAIGHT, "train.train_iters=21", nproc=1, expect_ok=False)
    assert proc.returncode == 2 and "not a complete checkpoint" in proc.stderr


def test_incompatible_checkpoint_is_named(sail, straight, tmp_path):
    run = _copy_run(straight, tmp_path / "run")
    proc = sail.train(run, *STRAIGHT, "train.train_iters=21", "model.llm.ffn_hidden_size=192",
                      nproc=1, expect_ok=False)
    assert proc.returncode == 2
    assert "iter_0000020" in proc.stderr and "model.llm.ffn_hidden_size" in proc.stderr


def test_checkpoint_format_of_another_megatron_release(sail, straight, tmp_path):
    """megatron-core >= 0.19 writes no common.pt (the common state is inside the .distcp
    files). An older release cannot read that: one clear error naming both, not Megatron's
    traceback. (On >= 0.19 a checkpoint without common.pt is simply the format.)"""
    from packaging.version import Version

    from megatron_sail.compat.versions import installed_megatron_core

    run = _copy_run(straight, tmp_path / "run")
    common = run / "checkpoints" / "iter_0000020" / "common.pt"
    if Version(installed_megatron_core()) >= Version("0.19"):
        assert not common.exists()
        sail.train(run, *STRAIGHT, "train.train_iters=21", nproc=1)
        return
    common.unlink()  # what an older Megatron sees of a checkpoint written by 0.19
    proc = sail.train(run, *STRAIGHT, "train.train_iters=21", nproc=1, expect_ok=False)
    assert proc.returncode == 2
    assert "written by megatron-core >= 0.19" in proc.stderr
    assert f"megatron-core {installed_megatron_core()} cannot read it" in proc.stderr
    assert "Traceback" not in proc.stderr
