"""The one rank launcher: N local processes with torchrun's environment, stopped together
when one fails - for training (``--nproc-per-node N``, forwarding SIGTERM/SIGINT/SIGUSR1 so
that every rank can checkpoint before it stops), conversion and memory measurement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from megatron_sail.distributed.runtime import free_port
from megatron_sail.utils.processes import terminate

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def start_ranks(world_size: int, argv: list[str], launcher: str,
                env: Optional[dict] = None, per_rank: Optional[Callable[[int], dict]] = None,
                **popen) -> list[subprocess.Popen]:
    """``python argv...`` once per rank, with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    (a free port), ``SAIL_LAUNCHER=launcher`` and ``env`` on top of this process's
    environment; ``per_rank(rank)`` adds a rank's own keyword arguments of ``Popen``."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size),
                        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SAIL_LAUNCHER=launcher,
                        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        rank_env.update(env or {})
        procs.append(subprocess.Popen([sys.executable, *argv], env=rank_env, **popen,
                                      **(per_rank(rank) if per_rank else {})))
    return procs


def wait_ranks(procs: list[subprocess.Popen], grace: float,
               stop: Callable[[subprocess.Popen], None],
               timeout: Optional[float] = None) -> tuple[list[int], Optional[int]]:
    """Exit codes by rank, and the code of the failure that came first (None: none failed).
    After the first failure the others get ``grace`` seconds to end on their own (to report
    their own errors), then ``stop`` ends each one still running - a failed rank never leaves
    its peers waiting in a collective. Past ``timeout`` seconds all are stopped."""
    deadline = first = None
    if timeout is not None:
        deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed and first is None:
            first = failed[0]
            deadline = min(deadline or float("inf"), time.monotonic() + grace)
        if all(c is not None for c in codes):
            return codes, first
        if deadline is not None and time.monotonic() >= deadline:
            for p in procs:
                if p.poll() is None:
                    stop(p)
            return [p.wait() for p in procs], first
        time.sleep(0.1)


def launch_local(nproc: int, worker_args: list[str],
                 module: str = "megatron_sail.training.worker") -> int:
    """``module``: the rank entry point (the training worker, or the RL worker)."""
    procs = start_ranks(nproc, ["-m", module, *worker_args], "local")

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return _wait(procs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(procs: list[subprocess.Popen]) -> int:
    """The first non-zero exit code (the other ranks stopped at once), else 0."""
    _, first = wait_ranks(procs, grace=0, stop=terminate)
    if first is None:
        return 0
    return first if first > 0 else 128 - first
