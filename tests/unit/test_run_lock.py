"""The run-directory lock: who holds it is named, stale locks and requeued jobs take over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_sail.training import run_lock
from tests.helpers import REPO

HOLD = ("import sys, time; from megatron_sail.training.run_lock import acquire; "
        "acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run, started as SLURM job 4242."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, SLURM_JOB_ID="4242"))
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_held_directory_is_refused_naming_the_holder(tmp_path, holder, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(run_lock.RunDirInUse) as info:
        run_lock.acquire(tmp_path / "run")
    assert f"is in use by pid {holder.pid} on host {socket.gethostname()} since " in str(info.value)
    assert "(SLURM job 4242)" in str(info.value)
    monkeypatch.setenv("SLURM_JOB_ID", "999")   # another job: refused as well
    with pytest.raises(run_lock.RunDirInUse):
        run_lock.acquire(tmp_path / "run")


def test_a_requeue_of_the_same_slurm_job_takes_over(tmp_path, holder, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_lock.acquire(tmp_path / "run", requeue_wait_s=0.5)
    try:
        record = json.loads((tmp_path / "run" / run_lock.LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["slurm_job_id"] == "4242"
    finally:
        run_lock.release(tmp_path / "run")


def test_the_lock_of_a_dead_holder_is_taken_over(tmp_path):
    """A record left by a holder that died (here: on another host) without holding the lock."""
    run = tmp_path / "run"
    run.mkdir()
    (run / run_lock.LOCK_NAME).write_text(json.dumps(
        {"host": "node-17", "pid": 1, "start": "2026-01-01T00:00:00+00:00"}))
    with run_lock.hold_run_dir(run):
        record = json.loads((run / run_lock.LOCK_NAME).read_text())
        assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
        assert not run_lock.acquire(run)   # this process holds it already: nothing to do
    assert (run / run_lock.LOCK_NAME).read_text() == ""   # released, nothing stale left
