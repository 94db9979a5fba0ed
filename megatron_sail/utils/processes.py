"""Process control every command shares."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator


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
