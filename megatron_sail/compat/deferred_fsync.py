"""Defer the file syncs of Megatron's checkpoint writer by swapping ``os.fsync`` globally.

Megatron's torch_dist writer (``strategies.filesystem_async``, 0.16.1-0.19.2) calls
``os.fsync`` on each file it writes, and its forked writer processes inherit the swap. A
caller that has other work to do meanwhile and syncs the whole tree itself (``sync_tree``)
before publishing it overlaps that cost instead of paying it first (about 3 s per 2.5 GB
here). The check makes sure the writer still syncs through ``os.fsync``, so the swap never
silently defers nothing.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from typing import Iterator


def check() -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if "os.fsync(" not in inspect.getsource(filesystem_async):
        raise RuntimeError("dist_checkpointing.strategies.filesystem_async no longer calls "
                           "os.fsync")


@contextmanager
def fsync_deferred() -> Iterator[None]:
    """Skip the file syncs made inside this block (the caller syncs afterwards)."""
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = real
