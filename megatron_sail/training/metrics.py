"""Run outputs for people: metrics.jsonl, TensorBoard scalars and a console progress line."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

from megatron_sail.utils.atomic import write_atomic


class MetricsWriter:
    """Rank 0 only. One JSON object per logged iteration; the same scalars to TensorBoard."""

    def __init__(self, output_dir: Path, tensorboard: bool):
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)
        self._reported: set[str] = set()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["iteration"]
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def skipped(self, iteration: int, skips: list[dict]) -> None:
        """Samples the loader skipped (file:line or shard member, and why): data_skipped.jsonl."""
        with open(self.path.with_name("data_skipped.jsonl"), "a") as f:
            for skip in skips:
                f.write(json.dumps({"iteration": iteration, **skip}) + "\n")
        for skip in skips:  # each bad sample once on the console; every time in the file
            if skip["where"] not in self._reported:
                self._reported.add(skip["where"])
                print(f"skipped sample ({skip['kind']}): {skip['where']}", file=sys.stderr,
                      flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: Path, iteration: int) -> None:
    """On resume, drop records the interrupted run logged past its last checkpoint."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    write_atomic(path, "".join(f"{line}\n" for line in kept))


class Progress:
    """``[iter 12/30  40%] loss 3.12 lr 9.8e-04 | 2.1 it/s ETA 0:00:09``"""

    def __init__(self, start_iteration: int, total: int, stream=sys.stdout):
        self.start_iteration, self.total = start_iteration, total
        self.t0 = time.monotonic()
        self.stream = stream

    def line(self, iteration: int, loss: float, lr: float, extra: Optional[str] = None) -> str:
        done = iteration - self.start_iteration
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - iteration) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        pct = 100.0 * iteration / self.total
        text = (f"[iter {iteration}/{self.total} {pct:3.0f}%] loss {loss:.4f} lr {lr:.3e} | "
                f"{rate:.2f} it/s ETA {eta_text}")
        return f"{text} | {extra}" if extra else text

    def show(self, *args, **kwargs) -> None:
        print(self.line(*args, **kwargs), file=self.stream, flush=True)
