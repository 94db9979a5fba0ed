"""Outputs appear whole or not at all: everything is written into a hidden sibling
directory that is renamed into place only after every check passed."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from megatron_sail.checkpointing.layout_files import rename_synced
from megatron_sail.convert.errors import ConversionError


@contextmanager
def staging_dir(out: str | Path) -> Iterator[Path]:
    """A hidden directory next to ``out``; on success it is synced to disk and renamed to
    ``out``, so a crash or a power cut never leaves a partial ``out``."""
    out = Path(out)
    if out.exists():
        raise ConversionError(f"{out}: already exists; remove it or choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        rename_synced(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
