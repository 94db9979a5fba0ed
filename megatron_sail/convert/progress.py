"""Dependency-free progress lines for long conversions: counted steps (``Progress``) and
phases that run inside other libraries, followed through a byte counter (``watch``)."""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from megatron_sail.utils.progress import ProgressLine

GiB = 2**30


class Progress:
    """One line on stderr, rewritten in place on a terminal, every ~10% otherwise, with the
    rate and the time left (from bytes when ``total_bytes`` is known, else from items)."""

    def __init__(self, label: str, total: int, enabled: bool, total_bytes: int = 0,
                 unit: str = "tensors"):
        self.total, self.enabled = max(total, 1), enabled
        self.total_bytes, self.unit = total_bytes, unit
        self.shown = -1
        self.tty = sys.stderr.isatty()
        self._line = ProgressLine(label, self.total, unit, rewrite=self.tty)

    @property
    def start(self) -> float:  # when counting began (tests move it back)
        return self._line.t0

    @start.setter
    def start(self, value: float) -> None:
        self._line.t0 = value

    def update(self, done: int, nbytes: int) -> None:
        if not self.enabled:
            return
        finished = done >= self.total
        fraction = nbytes / self.total_bytes if self.total_bytes else done / self.total
        pct = 100 if finished else min(99, int(100 * fraction))
        if not self.tty and pct // 10 == self.shown // 10 and not finished:
            return
        self.shown = pct
        count = (f"{nbytes / GiB:.2f}/{self.total_bytes / GiB:.2f} GiB" if self.unit == "bytes"
                 else None)
        self._line.show(done, rate=f"{nbytes / 2**20 / self._line.elapsed():.1f} MiB/s",
                        fraction=fraction, count=count)


@contextmanager
def watch(label: str, total_bytes: int, counter: Callable[[], int], enabled: bool,
          every: float = 0.5) -> Iterator[None]:
    """Report a phase that another library runs (Megatron's save, its load) from a byte
    counter sampled in a thread: bytes on disk, bytes this process has read."""
    if not enabled:
        yield
        return
    bar = Progress(label, total_bytes, True, total_bytes, unit="bytes")
    base = counter()
    stop = threading.Event()

    def run():
        while not stop.wait(every):
            done = min(counter() - base, total_bytes - 1)
            bar.update(done, done)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    bar.update(total_bytes, total_bytes)


def bytes_under(root: Path) -> Callable[[], int]:
    """Total size of the files under ``root`` (what a writer has put there so far)."""
    def count() -> int:
        total = 0
        for dirpath, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # renamed or removed meanwhile
                    pass
        return total
    return count


def bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux; else 0)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
