"""AdaLRS in real ``sail train`` runs (2 processes, gloo, distributed optimizer over DP=2):
decisions in the metrics, a rollback that restores the snapshot bit for bit, an exact resume
with a trial pending, and the same decisions on one process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.distributed.test_checkpoint import read_checkpoint
from tests.helpers import assert_close_losses

WINDOW = 3
ADALRS = ["train.train_iters=15", "optimizer.adalrs.enabled=true",
          f"optimizer.adalrs.window={WINDOW}", "checkpoint.save_interval=3",
          "checkpoint.keep_last=null"]


@pytest.fixture(scope="module")
def straight(sail, tmp_path_factory):
    out = tmp_path_factory.mktemp("adalrs_straight")
    sail.train(out, *ADALRS, nproc=2)
    return out


def _decisions(metrics: list[dict]) -> list[tuple]:
    return [(r["iteration"], r.get("adalrs/decision"), r["adalrs/lr_scale"]) for r in metrics]


def _first_rollback(metrics: list[dict]) -> int:
    rollbacks = [r["iteration"] for r in metrics if r.get("adalrs/decision") == "rollback"]
    assert rollbacks, _decisions(metrics)  # the planted run must exercise a rollback
    return rollbacks[0]


def test_decisions_are_recorded_once_per_window(sail, straight):
    metrics = sail.metrics(straight)
    assert [r["iteration"] for r in metrics] == list(range(1, 16))
    assert all("adalrs/lr_scale" in r for r in metrics)
    decided = {r["iteration"]: r["adalrs/decision"] for r in metrics if "adalrs/decision" in r}
    assert sorted(decided) == list(range(WINDOW, 16, WINDOW))
    assert set(decided.values()) <= {"raise", "keep", "rollback"} and "raise" in decided.values()
    for before, after in zip(metrics, metrics[1:]):  # a raise takes effect on the next step
        if before.get("adalrs/decision") == "raise":
            assert after["adalrs/lr_scale"] > before["adalrs/lr_scale"]
        elif before.get("adalrs/decision") == "rollback":
            assert after["adalrs/lr_scale"] < before["adalrs/lr_scale"]


def test_rollback_restores_weights_and_optimizer_state_bit_for_bit(sail, straight, tmp_path):
    back = _first_rollback(sail.metrics(straight))
    root = straight / "checkpoints"
    snapshot = read_checkpoint(root / f"iter_{back - WINDOW:07d}", tmp_path)
    rolled = read_checkpoint(root / f"iter_{back:07d}", tmp_path)
    tensors = [k for k, v in snapshot.items() if isinstance(v, torch.Tensor)]
    assert any(k.startswith("language_model.") for k in tensors)
    assert any("exp_avg_sq" in k for k in tensors)  # Adam moments of the distributed optimizer
    assert sorted(tensors) == sorted(k for k, v in rolled.items() if isinstance(v, torch.Tensor))
    changed = [k for k in tensors if not torch.equal(snapshot[k], rolled[k])]
    assert not changed, changed[:5]
    earlier = read_checkpoint(root / f"iter_{back - 2 * WINDOW:07d}", tmp_path)
    assert any(not torch.equal(earlier[k], snapshot[k]) for k in tensors)  # it did train


@pytest.fixture(scope="module")
def stopped(sail, straight, tmp_path_factory):
    """The straight run stopped (with a checkpoint) inside the trial window it rolls back."""
    back = _first_rollback(sail.metrics(straight))
    stop = back - WINDOW + 1
    out = tmp_path_factory.mktemp("adalrs_stopped")
    sail.train(out, *ADALRS, f"train.exit_interval={stop}", nproc=2)
    assert (out / "checkpoints" / f"iter_{stop:07d}" / "adalrs_snapshot").is_dir()
    return out, stop


def test_resume_with_a_pending_trial_is_exact(sail, straight, stopped, tmp_path):
    run = Path(shutil.copytree(stopped[0], tmp_path / "run"))
    stop = stopped[1]
    proc = sail.train(run, *ADALRS, nproc=2)
    assert "resumed from" in proc.stdout
    resumed, ref = sail.metrics(run), sail.metrics(straight)
    assert [r["iteration"] for r in resumed] == list(range(1, 16))
    keys = ("loss", "lr", "adalrs/lr_scale", "adalrs/decision")
    for a, b in zip(resumed[stop:], ref[stop:]):
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys], (a, b)


def test_resume_with_a_pending_trial_at_another_layout(sail, straight, stopped, tmp_path):
    """The snapshot is stored layout-independently: DP=2 stops, one process goes on."""
    run = Path(shutil.copytree(stopped[0], tmp_path / "run"))
    sail.train(run, *ADALRS, nproc=1)
    assert _decisions(sail.metrics(run)) == _decisions(sail.metrics(straight))
    assert_close_losses(sail.losses(run), sail.losses(straight), range(stopped[1] + 1, 16))


def test_one_process_takes_the_same_decisions(sail, straight, tmp_path):
    sail.train(tmp_path, *ADALRS, "checkpoint.save_interval=null", nproc=1)
    assert _decisions(sail.metrics(tmp_path)) == _decisions(sail.metrics(straight))
    assert_close_losses(sail.losses(tmp_path), sail.losses(straight), range(1, 16))


def test_bf16_rollback_restores_the_fp32_main_weights_too(sail, tmp_path):
    """bf16: the optimizer's fp32 main parameters are tensors of their own, snapshotted too."""
    sail.train(tmp_path, "train.train_iters=6", "train.precision=bf16",
               "optimizer.adalrs.enabled=true", "optimizer.adalrs.window=2",
               "checkpoint.save_interval=2", "checkpoint.keep_last=null", nproc=2)
    back = _first_rollback(sail.metrics(tmp_path))
    root = tmp_path / "checkpoints"
    snapshot = read_checkpoint(root / f"iter_{back - 2:07d}", tmp_path)
    rolled = read_checkpoint(root / f"iter_{back:07d}", tmp_path)
    tensors = [k for k, v in snapshot.items() if isinstance(v, torch.Tensor)]
    assert any(snapshot[k].dtype == torch.bfloat16 for k in tensors)
    assert any(k.startswith("optimizer.state.param.") for k in tensors)  # fp32 main weights
    assert [k for k in tensors if not torch.equal(snapshot[k], rolled[k])] == []
