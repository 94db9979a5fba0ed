"""What a job asks SLURM for: nodes, tasks, GPUs and the optional limits.

Every text value ends up in an ``#SBATCH`` line of the generated script, so each is checked
against SLURM's own syntax for its option: a newline would start a shell command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from megatron_sail.errors import UserError, shown
from megatron_sail.launch.site import SiteProfile


class RequestError(UserError, ValueError):
    """An impossible resource request; the message names the option."""


# MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE")
# Partition, account and QOS names (a partition may be a comma-separated list).
_NAMES = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_JOB_NAME = re.compile(r"[A-Za-z0-9_.+@:=-]{1,200}")
_MEM = re.compile(r"\d+([KMGT]B?)?", re.IGNORECASE)  # 0: all of the node's memory
SYNTAX = {
    "--job-name": (_JOB_NAME, "a job name (1-200 of A-Z a-z 0-9 _ . + - @ : =)"),
    "--partition": (_NAMES, "a partition name (A-Z a-z 0-9 _ . -, comma-separated)"),
    "--account": (_NAMES, "an account name (A-Z a-z 0-9 _ . -)"),
    "--qos": (_NAMES, "a QOS name (A-Z a-z 0-9 _ . -)"),
    "--mem": (_MEM, "a SLURM memory size (e.g. 80G, 200000M, 0 for the whole node)"),
    "--time": (_TIME, "a SLURM time (MM, HH:MM:SS, D-HH[:MM[:SS]], UNLIMITED)"),
}


def slurm_value(option: str, value: str | None) -> str | None:
    """``value`` unchanged when it is valid SLURM syntax for ``option`` (None passes)."""
    if value is None:
        return None
    pattern, what = SYNTAX[option]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RequestError(f"{option} {shown(value)} is not {what}")
    return value


@dataclass(frozen=True)
class JobRequest:
    nodes: int
    gpus_per_node: int
    ntasks_per_node: int
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    exclusive: bool = False

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


def make_request(nodes: int, gpus_per_node: int, ntasks_per_node: int | None,
                 site: SiteProfile, partition: str | None = None, time: str | None = None,
                 account: str | None = None, cpus_per_task: int | None = None,
                 mem: str | None = None) -> JobRequest:
    """One task per GPU unless told otherwise; GPU jobs take the site's whole-node defaults,
    CPU jobs request nothing beyond their tasks unless given."""
    if nodes < 1:
        raise RequestError(f"--nodes must be >= 1, got {nodes}")
    if gpus_per_node < 0:
        raise RequestError(f"--gpus-per-node must be >= 0, got {gpus_per_node}")
    if ntasks_per_node is None:
        if gpus_per_node == 0:
            raise RequestError("--gpus-per-node 0 (a CPU job) needs --ntasks-per-node")
        ntasks_per_node = gpus_per_node
    if ntasks_per_node < 1:
        raise RequestError(f"--ntasks-per-node must be >= 1, got {ntasks_per_node}")
    if gpus_per_node and ntasks_per_node > gpus_per_node:
        raise RequestError(f"--ntasks-per-node {ntasks_per_node} exceeds --gpus-per-node "
                           f"{gpus_per_node}: ranks would share GPUs")
    for option, value in (("--partition", partition), ("--time", time),
                          ("--account", account), ("--mem", mem)):
        slurm_value(option, value)
    if cpus_per_task is not None and cpus_per_task < 1:
        raise RequestError(f"--cpus-per-task must be >= 1, got {cpus_per_task}")
    gpu = site.gpu_job if gpus_per_node else None
    return JobRequest(
        nodes=nodes, gpus_per_node=gpus_per_node, ntasks_per_node=ntasks_per_node,
        partition=partition, time=time, account=account,
        cpus_per_task=cpus_per_task if cpus_per_task is not None else (gpu and gpu.cpus_per_task),
        mem=mem if mem is not None else (gpu and gpu.mem),
        exclusive=bool(gpu and gpu.exclusive),
    )
