"""Diagnostics go through ``logging``, rank-aware.

Every rank of a multi-process run meets the same events, so by default only rank 0 writes
them; ``SAIL_LOG_ALL_RANKS=1`` lets every rank write, each line then prefixed with its rank.
The console format is the message alone - on stdout, warnings and worse on stderr - as the
prints it replaces. A command's own output (what it wrote, its report) and the console
progress line are not diagnostics and stay prints.
"""

from __future__ import annotations

import logging
import os
import sys

ALL_RANKS_ENV = "SAIL_LOG_ALL_RANKS"


def process_rank() -> int:
    """This process's rank as its launcher (local, torchrun, srun) set it; 0 without one."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


class _Console(logging.Handler):
    """Writes to the streams current at each record (a test or a caller may swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


class _Ranks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rank = process_rank()
        if os.environ.get(ALL_RANKS_ENV) == "1":
            record.msg = f"[rank {rank}] {record.getMessage()}"
            record.args = None
            return True
        return rank == 0


def get_logger(name: str) -> logging.Logger:
    """The logger ``name``, writing to the console as described above (set up once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.addFilter(_Ranks())
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
