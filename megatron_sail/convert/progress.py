"""Dependency-free progress lines for long conversions: counted steps (``Progress``) and
phases that run inside other libraries, followed through a byte counter (``watch``)."""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

GiB = 2**30


class Progress:
    """One line on stderr, rewritten in place on a terminal, every ~10% otherwise, with the
    rate and the time left (from bytes when ``total_bytes`` is known, else from items)."""

    def __init__(self, label: str, total: int, enabled: bool, total_bytes: int = 0,
                 unit: str = "tensors"):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.total_bytes, self.unit = total_bytes, unit
        self.start, self.shown = time.perf_counter(), -1
        self.tty = sys.stderr.isatty()

    def update(self, done: int, nbytes: int) -> None:
        if not self.enabled:
            return
        finished = done >= self.total
        fraction = nbytes / self.total_bytes if self.total_bytes else done / self.total
        pct = 100 if finished else min(99, int(100 * fraction))
        if not self.tty and pct // 10 == self.shown // 10 and not finished:
            return
        self.shown = pct
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = nbytes / 2**20 / elapsed
        if finished:
            tail = f"done in {elapsed:.1f} s"
        elif fraction >= 0.01:  # earlier estimates swing wildly
            tail = f"ETA {elapsed * (1 - fraction) / fraction:5.0f} s"
        else:
            tail = "ETA     ? s"
        count = (f"{nbytes / GiB:.2f}/{self.total_bytes / GiB:.2f} GiB" if self.unit == "bytes"
                 else f"{done}/{self.total} {self.unit}")
        start, end = ("\r", "\n" if finished else "") if self.tty else ("", "\n")
        print(f"{start}[{self.label}] {count} {pct:3d}% {rate:8.1f} MiB/s {tail}",
              end=end, file=sys.stderr, flush=True)


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
