"""Run a conversion job on N fresh rank processes (CPU, gloo) and collect their results.

Each rank is ``python -m megatron_sail.convert.worker``; conversions always run on CPU (the
GPU paths of Megatron's initialisation are not needed to move weights). The ranks start
before their job is known - importing torch and Megatron costs each about 3 s here, which
then overlaps the caller's own start-up and input checks - and read the job from stdin. The
first rank to fail stops the others, and its error - not a hang or a traceback of a peer -
is raised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from megatron_sail.convert.errors import ConversionError
from megatron_sail.distributed.launcher import start_ranks, wait_ranks


class Ranks:
    """``world_size`` started rank processes that wait for one job. As a context manager it
    stops whatever is still running on exit (a job that was never sent included)."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._tmp = tempfile.TemporaryDirectory(prefix="sail-convert-")
        cores = max(1, (os.cpu_count() or 1) // max(1, world_size))
        threads = os.environ.get("OMP_NUM_THREADS") or str(cores)
        # own process group: stopping a rank also stops the writer processes that Megatron's
        # checkpoint saving starts
        self._procs = start_ranks(
            world_size, ["-m", "megatron_sail.convert.worker", self._tmp.name], "convert",
            env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads},
            stdin=subprocess.PIPE, start_new_session=True)

    def run(self, job: str, spec: dict) -> list[dict]:
        """Send the job to every rank and wait for all of them; their results, by rank."""
        payload = json.dumps(dict(spec, job=job, sent_at=time.time())).encode()
        for proc in self._procs:
            try:
                proc.stdin.write(payload)
                proc.stdin.close()
            except BrokenPipeError:  # it died starting up; its exit code tells
                pass
        # after the first failure the others get 15 s to report their own errors
        codes, _ = wait_ranks(self._procs, grace=15, stop=_kill_group)
        results = []
        for rank, code in enumerate(codes):
            path = Path(self._tmp.name) / f"rank{rank}.json"
            results.append(json.loads(path.read_text()) if path.is_file()
                           else {"ok": False, "error": f"rank {rank} exited with code {code}"})
        failed = [r for r in results if not r.get("ok")]
        if failed:
            # Prefer a clear error (exit code 2) over the peers' fallout.
            first = min(failed, key=lambda r: ("Traceback" in r["error"],
                                               "exited with" in r["error"]))
            raise ConversionError(first["error"])
        return results

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                _kill_group(proc)
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
        self._tmp.cleanup()

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_ranks(job: str, spec: dict, world_size: int) -> list[dict]:
    with Ranks(world_size) as ranks:
        return ranks.run(job, spec)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a rank and the writer processes it forked. Returns once none of them can still
    create a file: a killed process first finishes the system call it is in."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 5
    while any(map(_alive, family)) and time.monotonic() < deadline:
        time.sleep(0.01)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def peak_rss(results: list[dict]) -> int:
    return sum(r.get("peak_rss", 0) for r in results)
