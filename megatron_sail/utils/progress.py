"""The one progress line of every long command (training, data check/prepare, conversion):

    [label] done/total unit  pct% | rate | ETA 0:01:23 | detail
    [label] done/total unit 100% | rate | done in 83.2 s

The rate and the time left come from the progress made since the line was created (a resumed
run's earlier iterations do not count), from a fraction the caller gives when items differ in
size (bytes of tensors), else from items. On a terminal a caller may rewrite the line in place.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

SETTLED = 0.01  # estimates from the first 1% of the work swing wildly: "ETA ?" until then


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    def __init__(self, label: str, total: int, unit: str = "", start: int = 0,
                 stream: Optional[TextIO] = None, rewrite: bool = False):
        self.label, self.total, self.unit, self.start = label, max(total, 1), unit, start
        self.stream, self.rewrite = stream, rewrite
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)

    def line(self, done: int, rate: Optional[str] = None, fraction: Optional[float] = None,
             detail: Optional[str] = None, count: Optional[str] = None) -> str:
        """``rate``: the rate as the caller words it (default: items/s since the start);
        ``fraction`` of the work done (default: done / total); ``count`` replaces
        ``done/total unit``."""
        elapsed = self.elapsed()
        finished = done >= self.total
        fraction = done / self.total if fraction is None else fraction
        since = fraction - self.start / self.total
        if rate is None:
            per_s = (done - self.start) / elapsed
            rate = f"{per_s:,.2f} {self.unit or 'items'}/s" if per_s < 100 else \
                f"{per_s:,.0f} {self.unit or 'items'}/s"
        if finished:
            tail = f"done in {elapsed:.1f} s"
        elif since >= SETTLED * (1 - self.start / self.total) and since > 0:
            tail = f"ETA {clock(elapsed * (1 - fraction) / since)}"
        else:
            tail = "ETA ?"
        pct = 100 if finished else min(99, int(100 * fraction))
        count = count or f"{done}/{self.total}" + (f" {self.unit}" if self.unit else "")
        text = f"[{self.label}] {count} {pct:3d}% | {rate} | {tail}"
        return f"{text} | {detail}" if detail else text

    def show(self, done: int, **parts) -> None:
        self.emit(self.line(done, **parts), final=done >= self.total)

    def emit(self, text: str, final: bool = False) -> None:
        """Write one line of this progress (or a message in its place): rewritten in place
        when ``rewrite`` (a terminal), the cursor left on the line until ``final``."""
        stream = self.stream or sys.stderr
        if self.rewrite:
            print(f"\r{text}\033[K", end="\n" if final else "", file=stream, flush=True)
        else:
            print(text, file=stream, flush=True)
