"""The few SLURM client calls sail needs: sbatch, and a job's state from scontrol (or sacct
once the controller has forgotten the job, where accounting is on)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from megatron_sail.errors import UserError

_SUBMITTED = re.compile(r"^Submitted batch job (\d+)", re.M)
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


class SlurmError(UserError, RuntimeError):
    """A SLURM client command failed; carries its message."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str               # e.g. RUNNING, PENDING, COMPLETED, FAILED
    reason: str | None = None
    restarts: int | None = None
    exit_code: str | None = None
    nodes: str | None = None
    source: str = "scontrol"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"{cmd[0]} not found: is this a SLURM login node?")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(cmd)} did not answer in {timeout:.0f} s") from None


def sbatch(script_path: str) -> tuple[str, str]:
    """Submit; returns (job id, sbatch's ``Submitted batch job N`` line)."""
    proc = _run(["sbatch", script_path])
    match = _SUBMITTED.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise SlurmError(f"sbatch {script_path} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return match.group(1), match.group(0).strip()


def _scontrol(job_ref: str) -> JobInfo | None:
    proc = _run(["scontrol", "show", "job", "-o", job_ref])
    if proc.returncode != 0 or not proc.stdout.strip():
        return None  # unknown: finished longer than MinJobAge ago, or never existed
    fields = dict(re.findall(r"(\w+)=(\S*)", proc.stdout.splitlines()[0]))
    restarts = fields.get("Restarts")
    return JobInfo(job_id=job_ref, state=fields.get("JobState", "UNKNOWN"),
                   reason=None if fields.get("Reason") in (None, "None") else fields["Reason"],
                   restarts=int(restarts) if restarts and restarts.isdigit() else None,
                   exit_code=fields.get("ExitCode"), nodes=fields.get("NodeList"))


def _sacct(job_ref: str) -> JobInfo | None:
    if shutil.which("sacct") is None:
        return None
    proc = _run(["sacct", "-n", "-X", "-P", "-j", job_ref, "-o", "State,ExitCode,NodeList"])
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return None  # accounting off, or the job is unknown to it
    state, exit_code, nodes = (lines[-1].split("|") + ["", "", ""])[:3]
    return JobInfo(job_id=job_ref, state=state.split()[0], exit_code=exit_code or None,
                   nodes=nodes or None, source="sacct")


def job_info(job_ref: str) -> JobInfo | None:
    """``job_ref`` is a job id or ``ARRAYID_INDEX``; None when SLURM no longer knows it."""
    return _scontrol(job_ref) or _sacct(job_ref)


def is_queued(job_id: str) -> bool:
    """Pending or running (any task of an array job)."""
    proc = _run(["squeue", "-h", "-j", job_id, "-o", "%i"])
    return proc.returncode == 0 and bool(proc.stdout.strip())
