"""A dependency-free progress line for long conversions."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line on stderr, rewritten in place on a terminal, every ~10% otherwise."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.start, self.shown = time.perf_counter(), -1
        self.tty = sys.stderr.isatty()

    def update(self, done: int, nbytes: int) -> None:
        if not self.enabled:
            return
        pct = 100 * done // self.total
        if not self.tty and pct // 10 == self.shown // 10 and done != self.total:
            return
        self.shown = pct
        rate = nbytes / 2**20 / max(time.perf_counter() - self.start, 1e-9)
        end = "\n" if done == self.total or not self.tty else ""
        print(f"\r[{self.label}] {done}/{self.total} tensors {pct:3d}% {rate:8.1f} MiB/s",
              end=end, file=sys.stderr, flush=True)
