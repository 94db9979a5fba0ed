"""Where the time before the first iteration goes, split by phase, for one log line.

At thousands of ranks start-up is paid by every rank at once; the line shows which phase
to attack (imports, process groups, model build, checkpoint load, data start-up).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

import psutil


class StartupClock:
    """Phases timed with ``phase(name)``; whatever ran before the clock was made (the
    interpreter, imports, reading the config) counts as ``imports``."""

    def __init__(self) -> None:
        now = time.time()
        self.started = psutil.Process(os.getpid()).create_time()
        self.phases: dict[str, float] = {"imports": max(0.0, now - self.started)}
        self.notes: dict[str, str] = {}
        self._running: dict[str, float] = {}

    def start(self, name: str) -> None:
        self._running[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        seconds = time.perf_counter() - self._running.pop(name)
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def note(self, name: str, text: str) -> None:
        self.notes[name] = text

    def line(self) -> str:
        """``start-up 9.3 s before the first iteration: imports 4.1 s, ... , other 0.2 s``"""
        total = time.time() - self.started
        other = total - sum(self.phases.values())
        parts = [f"{name} {seconds:.1f} s" + (f" ({self.notes[name]})" if name in self.notes else "")
                 for name, seconds in self.phases.items()]
        return f"start-up {total:.1f} s before the first iteration: " + ", ".join(
            parts + [f"other {max(0.0, other):.1f} s"])
