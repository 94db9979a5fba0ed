"""Run outputs for people: metrics.jsonl, TensorBoard scalars and a console progress line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

from megatron_sail.utils.atomic import write_atomic
from megatron_sail.utils.logs import get_logger
from megatron_sail.utils.progress import ProgressLine

log = get_logger("megatron_sail.training")


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
                log.warning(f"skipped sample ({skip['kind']}): {skip['where']}")

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
    """The console line of training:
    ``[iter] 12/30  40% | 2.10 it/s | ETA 0:00:09 | loss 3.1200 lr 9.800e-04``"""

    def __init__(self, start_iteration: int, total: int, stream=sys.stdout):
        self.start_iteration = start_iteration
        self._line = ProgressLine("iter", total, start=start_iteration, stream=stream)
        self.stream = stream

    def line(self, iteration: int, loss: Optional[float], lr: float,
             extra: Optional[str] = None) -> str:
        """``loss`` None: the iteration made no update (an RL episode whose groups were all
        dropped)."""
        rate = (iteration - self.start_iteration) / self._line.elapsed()
        text = f"loss {'- (no update)' if loss is None else f'{loss:.4f}'} lr {lr:.3e}"
        return self._line.line(iteration, rate=f"{rate:.2f} it/s",
                               detail=f"{text} | {extra}" if extra else text)

    def show(self, *args, **kwargs) -> None:
        self._line.emit(self.line(*args, **kwargs))
