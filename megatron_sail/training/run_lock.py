"""One writer per run directory: an advisory ``flock`` on ``RUN_DIR/.sail.lock``.

The process that owns a run (the local launcher, a single-process run, or rank 0 under
torchrun/srun) holds the lock for the run's lifetime; the file records who holds it (host, PID,
start time, SLURM job id) so that a second ``sail train`` into the directory is refused naming
the holder, before any process group or model exists.

Stale locks need no clean-up: the kernel releases a ``flock`` when its holder dies, so a lock
file whose lock is free is taken over, whatever host wrote it. On a shared file system the
lock is only as global as the file system's ``flock`` (NFSv4 and Lustre mounted with ``flock``
extend it to every client; a mount with ``localflock`` keeps it per host). A SLURM requeue of
the same job (same SLURM_JOB_ID) takes the lock over from the previous attempt: SLURM has ended
that attempt, and a network file system may hold its lock a little longer.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from megatron_sail.errors import UserError

LOCK_NAME = ".sail.lock"
REQUEUE_WAIT_S = 30.0   # how long a requeued job waits for its previous attempt's lock

log = logging.getLogger(__name__)
_held: dict[Path, int] = {}   # run directories this process holds -> lock file descriptor


class RunDirInUse(UserError):
    """Another live process writes this run directory."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096) or b"{}")
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}   # being written, or not ours: described as unknown


def _describe(record: dict) -> str:
    text = f"pid {record.get('pid', '?')} on host {record.get('host', '?')} " \
           f"since {record.get('start', '?')}"
    return text + (f" (SLURM job {record['slurm_job_id']})" if record.get("slurm_job_id") else "")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def acquire(run_dir: str | os.PathLike, requeue_wait_s: float = REQUEUE_WAIT_S) -> bool:
    """Lock ``run_dir`` for this process (creating it); False when this process already holds
    it. Raises RunDirInUse naming the holder when another live process does."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:
        return False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot create the run directory's lock file: "
                        f"{exc.strerror}") from None
    try:
        locked = _try_lock(fd)
        previous = _holder(fd)
        job = os.environ.get("SLURM_JOB_ID")
        if not locked and job and previous.get("slurm_job_id") == job:
            deadline = time.monotonic() + requeue_wait_s
            while not locked and time.monotonic() < deadline:
                time.sleep(0.5)
                locked = _try_lock(fd)
            if not locked:
                log.warning("%s: taking over the lock of the previous attempt of SLURM job %s "
                            "(%s)", run_dir, job, _describe(previous))
        elif not locked:
            raise RunDirInUse(f"{run_dir} is in use by {_describe(previous)}; wait for it, stop "
                              "it, or train into another run.output_dir")
        if previous.get("pid") and (previous.get("pid"), previous.get("host")) != \
                (os.getpid(), socket.gethostname()):
            log.info("%s: lock of %s is stale, taking it over", run_dir, _describe(previous))
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "slurm_job_id": job}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    _held[run_dir] = fd
    return True


def release(run_dir: str | os.PathLike) -> None:
    fd = _held.pop(Path(run_dir).absolute(), None)
    if fd is not None:
        os.ftruncate(fd, 0)   # a record left behind means a holder that died
        os.close(fd)          # closing the descriptor drops the flock


@contextlib.contextmanager
def hold_run_dir(run_dir: str | os.PathLike) -> Iterator[None]:
    """The lock for the block (kept when this process already held it before)."""
    acquired = acquire(run_dir)
    try:
        yield
    finally:
        if acquired:
            release(run_dir)
