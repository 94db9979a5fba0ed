"""``--nproc-per-node N``: run N worker processes on this machine, like torchrun, forwarding
SIGTERM/SIGINT/SIGUSR1 so that every rank can checkpoint before it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from megatron_sail.distributed.runtime import free_port

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def launch_local(nproc: int, worker_args: list[str],
                 module: str = "megatron_sail.training.worker") -> int:
    """``module``: the rank entry point (the training worker, or the RL worker)."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   SAIL_LAUNCHER="local", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        procs.append(subprocess.Popen([sys.executable, "-m", module,
                                       *worker_args], env=env))

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
    """Return the first non-zero exit code (stopping the other ranks), else 0."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            deadline = time.monotonic() + 15
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)
