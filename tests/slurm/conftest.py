"""A real local SLURM cluster for the tests in this directory (started once per session), and
helpers that drive it the way a user would: ``sail slurm ...`` in a subprocess, SLURM's own
clients to watch and signal jobs."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY
from tests.slurm.cluster import LocalSlurm, SlurmUnavailable, ensure_installed

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# The tiny model, quickly: no evaluation, no TensorBoard, only the checkpoints the test makes.
FAST = ["train.eval_interval=null", "run.tensorboard=false", "checkpoint.save_interval=null"]


class Slurm:
    """The running cluster plus what tests do with it."""

    def __init__(self, cluster: LocalSlurm):
        self.cluster = cluster
        self.env = cluster.env

    def sail(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "megatron_sail.cli", "slurm", *args],
                              capture_output=True, text=True, cwd=REPO, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"sail slurm {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, run_dir: Path, *overrides: str, tasks: int = 2, extra=()) -> str:
        proc = self.sail("submit", TINY, f"run.output_dir={run_dir}", *FAST, *overrides,
                         "--gpus-per-node", "0", "--ntasks-per-node", str(tasks), *extra)
        match = re.match(r"Submitted batch job (\d+)\n", proc.stdout)
        assert match, f"no sbatch line first in:\n{proc.stdout}"
        return match.group(1)

    def client(self, *cmd: str) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
        return proc.stdout

    def job(self, ref: str) -> dict[str, str]:
        """scontrol's fields of a job (or ARRAYID_INDEX)."""
        out = self.client("scontrol", "show", "job", "-o", ref)
        return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0]))

    def wait(self, *refs: str, timeout: float = 240) -> dict[str, dict[str, str]]:
        """Until every job is in a terminal state (a requeued job passes through PENDING)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = {ref: self.job(ref) for ref in refs}
            if all(j["JobState"] in TERMINAL for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not done after {timeout} s: "
                                     f"{ {r: j['JobState'] for r, j in jobs.items()} }")
            time.sleep(1)

    def status(self, path: Path):
        return json.loads(self.sail("status", str(path), "--json").stdout)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def attempts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "slurm/attempts.jsonl").read_text().splitlines()]


def wait_for_iterations(run_dir: Path, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(metrics(run_dir)) < n:
        assert time.monotonic() < deadline, f"{run_dir}: fewer than {n} iterations in {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm():
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM: {exc}")
    # Not under pytest's private tmp dir: munged must be able to traverse to its socket.
    root = Path(tempfile.mkdtemp(prefix="sail-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root)
    cluster.start()
    handle = Slurm(cluster)
    try:
        yield handle
    finally:
        # Jobs a failed test left behind end before their daemons do.
        subprocess.run(["scancel", "--full", "--user", getpass.getuser()], env=cluster.env,
                       capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and subprocess.run(
                ["squeue", "-h"], capture_output=True, text=True, env=cluster.env).stdout.strip():
            time.sleep(1)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
