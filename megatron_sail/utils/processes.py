"""Process control every command shares: SIGTERM handling, stopping child processes, and a
queue of independent commands run a few at a time (the rank launcher is
``megatron_sail.distributed.launcher``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so staging directories and rank processes are cleaned up."""
    def stop(signum, _frame):
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def terminate_all(procs: list[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM to every one still running, then SIGKILL to those not ended ``timeout`` seconds
    later (one signal each: a process that is saving on SIGTERM is not hurried by a second)."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def terminate(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    terminate_all([proc], timeout)


@dataclass
class Job:
    """One command of a queue; its stdout and stderr go to ``log`` (its folder is made)."""
    name: str
    argv: list[str]
    log: Path


def run_jobs(jobs: list[Job], concurrency: int, env: Optional[dict] = None,
             on_done: Callable[[Job, int, float], None] = lambda job, code, seconds: None,
             poll: float = 0.2) -> dict[str, int]:
    """Run ``jobs`` in order, at most ``concurrency`` at a time; their exit codes by name.

    The jobs are independent: one that fails does not stop the others, and ``on_done(job,
    code, seconds)`` reports each as it ends. If this process is interrupted (Ctrl-C, or
    SIGTERM under :func:`exit_on_sigterm`) the running jobs are terminated, not left behind.
    """
    pending, running, codes = list(jobs), [], {}
    try:
        while pending or running:
            while pending and len(running) < concurrency:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "w") as log:
                    proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((job, proc, time.monotonic()))
            for item in list(running):
                job, proc, start = item
                if proc.poll() is not None:
                    running.remove(item)
                    codes[job.name] = proc.returncode
                    on_done(job, proc.returncode, time.monotonic() - start)
            if running:
                time.sleep(poll)
    finally:
        terminate_all([proc for _, proc, _ in running])
    return codes
