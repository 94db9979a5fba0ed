"""Process-group start-up from whatever launched us: ``sail train --nproc-per-node``,
torchrun, srun, or a plain single process.

torch is imported where a process group is made, not at module level: launchers use
``free_port`` and ``detect_env`` before their ranks exist and should not pay for it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

from megatron_sail.config.validation import Layout


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # local | torchrun | slurm | single


def transformer_engine_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # ImportError, or OSError for missing CUDA libraries
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_master_addr() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return first_host(nodes)


def first_host(nodelist: str) -> str:
    """First host of a SLURM hostlist without scontrol: ``gpu[003-010,12],cpu1`` -> ``gpu003``."""
    head = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist.strip())
    prefix, ranges = head.group(1), head.group(2)
    return prefix + re.split(r"[-,]", ranges)[0] if ranges else prefix


def detect_env() -> DistEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun or our local launcher
        return DistEnv(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher=env.get("SAIL_LAUNCHER", "torchrun"),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or _slurm_master_addr(),
            master_port=int(env.get("MASTER_PORT") or 20000 + job % 20000),
            launcher="slurm",
        )
    return DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1",
                   master_port=free_port(), launcher="single")


def init_process_group(env: DistEnv) -> None:
    """NCCL on GPUs; gloo on CPU with the CUDA-to-CPU layer that Megatron-Core needs there."""
    import torch

    if torch.cuda.is_available():
        # modulo: under srun --gpus-per-task / --gpu-bind each task may see only its own GPU(s)
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        from megatron_sail.distributed import cpu_compat

        cpu_compat.activate()
        backend = "gloo"
    torch.distributed.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(minutes=int(os.environ.get("SAIL_DIST_TIMEOUT_MIN", "30"))),
    )


def init_model_parallel(layout: Layout, seed: int) -> None:
    import torch
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.etp,
        context_parallel_size=layout.cp,
    )
    global _DATA_SHARING_GROUP
    _DATA_SHARING_GROUP = _same_data_group()
    # One seed for every rank: no stage- or rank-dependent randomness (dropout is off and
    # weights come from the layout-independent initialiser).
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


_DATA_SHARING_GROUP = None


def _same_data_group():
    """The ranks of one data-parallel replica: TP x PP x CP (Megatron's model-parallel group
    is TP x PP only, but every CP rank of a replica reads the same rows too). Every rank
    creates every group, in the same order, as torch.distributed requires."""
    import torch
    from megatron.core import parallel_state

    if parallel_state.get_context_parallel_world_size() == 1:
        return parallel_state.get_model_parallel_group()
    world = torch.distributed.get_world_size()
    replica_of = [None] * world
    torch.distributed.all_gather_object(replica_of, parallel_state.get_data_parallel_rank())
    mine = None
    for replica in sorted(set(replica_of)):
        ranks = [r for r in range(world) if replica_of[r] == replica]
        group = torch.distributed.new_group(ranks)
        if replica == parallel_state.get_data_parallel_rank():
            mine = group
    return mine


def data_sharing_group():
    """The ranks that consume the same micro-batches (one of them decodes, the others
    receive): TP x PP x CP of one data-parallel replica."""
    if _DATA_SHARING_GROUP is None:
        raise RuntimeError("init_model_parallel has not run")
    return _DATA_SHARING_GROUP


def shutdown() -> None:
    import torch
    from megatron.core import parallel_state

    global _DATA_SHARING_GROUP
    _DATA_SHARING_GROUP = None
    if torch.distributed.is_initialized():
        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()
