"""Rules of a run directory, through the real CLI: one writer at a time, and what a resume
with changed optimizer keys does (the schedule of the new values, or a refusal)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.helpers import REPO, TINY

FAST = ["run.tensorboard=false", "train.eval_interval=null"]


def _train(out, *overrides, wait=True):
    cmd = [sys.executable, "-m", "megatron_sail.cli", "train", TINY, f"run.output_dir={out}",
           *FAST, *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def _lrs(out) -> dict[int, float]:
    with open(out / "metrics.jsonl") as f:
        return {r["iteration"]: r["lr"] for r in map(json.loads, f) if "lr" in r}


def test_a_second_run_into_a_busy_directory_is_refused_and_the_first_finishes(tmp_path):
    out = tmp_path / "run"
    first = _train(out, "train.train_iters=40", "checkpoint.save_interval=20", wait=False)
    try:
        lock = out / ".sail.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] and holder["start"]

        second = _train(out, "train.train_iters=40", "--nproc-per-node", "2")
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith(f"sail train: error: {out} is in use by pid "
                                        f"{first.pid} on host {holder['host']} since ")
        assert len(second.stderr.splitlines()) == 1
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr[-3000:]
    assert sorted(_lrs(out)) == list(range(1, 41))          # every iteration, logged once
    assert (out / "checkpoints" / "iter_0000040").is_dir()
    assert lock.read_text() == ""   # released: the next run takes it without a word


def test_changed_lr_on_resume_follows_the_new_schedule_and_adam_constants_are_refused(tmp_path):
    """Warm-up over 10 of 12 iterations, stopped at 6 with lr 3e-3, resumed with 1e-2: from
    iteration 7 on the logged lr must be exactly what a fresh 1e-2 run logs there (formerly
    the checkpoint's peak 3e-3 stayed in force, and config.yaml claimed 1e-2)."""
    common = ["train.train_iters=12", "optimizer.lr_warmup_iters=10", "optimizer.min_lr=1e-4"]
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    for out, extra in ((resumed, ["optimizer.lr=3e-3", "train.exit_interval=6"]),
                       (resumed, ["optimizer.lr=1e-2"]),
                       (fresh, ["optimizer.lr=1e-2"])):
        proc = _train(out, *common, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = _lrs(resumed), _lrs(fresh)
    assert sorted(got) == list(range(1, 13))
    for it in range(7, 13):
        assert got[it] == want[it], (it, got[it], want[it])
    assert got[6] != want[6]   # before the resume: the old peak's warm-up
    from megatron_sail.config import load_config

    assert load_config(resumed / "config.yaml").optimizer.lr == 1e-2

    refused = _train(resumed, *common, "optimizer.lr=1e-2", "optimizer.adam_beta1=0.8",
                     "train.train_iters=14")
    assert refused.returncode == 2
    assert "optimizer.adam_beta1 is 0.9 in the checkpoint but 0.8 now" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(_lrs(resumed)) == list(range(1, 13))   # nothing trained, nothing lost
