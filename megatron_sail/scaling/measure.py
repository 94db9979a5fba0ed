"""Measure the memory a real training run holds, per rank, to check the planner against.

``python -m megatron_sail.scaling.measure CONFIG.yaml [key=value ...] [--nproc N]
[--iterations K] [--out FILE.json]`` builds the real ``Trainer`` (model, DDP buffers,
distributed optimizer, data) and runs K training steps. On CPU it counts live tensor bytes
(``LiveTensorBytes``); on a GPU it reads ``torch.cuda.max_memory_allocated``. Each rank
reports the bytes held after set-up, after every step (optimizer state appears after the
first) and the peak during the steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_sail.distributed.launcher import start_ranks, wait_ranks
from megatron_sail.distributed.runtime import free_port
from megatron_sail.utils.processes import terminate


@dataclass
class MemoryMeasurement:
    rank: int
    source: str  # live-tensor-bytes (CPU) | cuda-max-memory-allocated (GPU)
    setup_bytes: int  # after the trainer is built, before the first step
    after_step_bytes: list[int]
    peak_bytes: int  # the maximum while the steps ran


class _CudaPeak:
    """The GPU counterpart of ``LiveTensorBytes``: the caching allocator's own counters, less
    what was allocated on entry. A previous case measured in the same process leaves its
    model, gradients and optimizer state allocated (even after ``gc.collect()``: the
    references are held on the C++ side), which is no part of this one."""

    def __init__(self):
        import torch

        self._cuda = torch.cuda
        self._base = 0

    def __enter__(self):
        self._base = self._cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        return False

    @property
    def live(self) -> int:
        return self._cuda.memory_allocated() - self._base

    @property
    def peak(self) -> int:
        return self._cuda.max_memory_allocated() - self._base

    def reset_peak(self) -> None:
        self._cuda.reset_peak_memory_stats()


def measure_trainer(cfg, env, iterations: int = 2) -> MemoryMeasurement:
    import torch

    from megatron_sail.distributed.runtime import shutdown
    from megatron_sail.scaling.live_memory import LiveTensorBytes
    from megatron_sail.training.trainer import Trainer

    on_gpu = torch.cuda.is_available()
    tracker = _CudaPeak() if on_gpu else LiveTensorBytes("cpu")
    trainer = None
    try:
        with tracker:
            trainer = Trainer(cfg, env)
            setup = tracker.live
            tracker.reset_peak()
            after = []
            for _ in range(iterations):
                trainer.run_iteration()  # its batch dies with the step, as in training
                after.append(tracker.live)
            peak = tracker.peak
    finally:
        if trainer is not None and trainer.metrics:
            trainer.metrics.close()
        shutdown()
    return MemoryMeasurement(env.rank, "cuda-max-memory-allocated" if on_gpu else
                             "live-tensor-bytes", setup, after, peak)


def _rank_main(config: str | None, cases: list[list[str]], ports: list[int], iterations: int,
               out: Path) -> int:
    """One rank: measure every case in turn, each in a fresh process group on its own port."""
    from megatron_sail.compat.startup import check_stack
    from megatron_sail.distributed.cpu_compat import import_megatron

    import_megatron()
    check_stack()
    from megatron_sail.config import load_config
    from megatron_sail.distributed.runtime import detect_env

    results = []
    for overrides, port in zip(cases, ports):
        os.environ["MASTER_PORT"] = str(port)
        cfg = load_config(config, overrides)
        results.append(asdict(measure_trainer(cfg, detect_env(), iterations)))
    out.write_text(json.dumps(results))
    return 0


def measure(config: str | None, cases: list[list[str]], nproc: int = 1, iterations: int = 2,
            timeout: float = 600) -> list[list[MemoryMeasurement]]:
    """Measure each case (a list of overrides) on ``nproc`` fresh processes, one per rank,
    that import everything once. Returns, per case, one measurement per rank."""
    with tempfile.TemporaryDirectory(prefix="sail-measure-") as tmp:
        cases = [[f"run.output_dir={tmp}/case{i}", "run.tensorboard=false", *overrides]
                 for i, overrides in enumerate(cases)]
        spec = Path(tmp) / "cases.json"
        spec.write_text(json.dumps({"config": config, "cases": cases,
                                    "ports": [free_port() for _ in cases]}))
        logs = [open(f"{tmp}/rank{rank}.log", "w") for rank in range(nproc)]
        try:  # a rank that fails stops the others (they would wait for it in a collective)
            procs = start_ranks(nproc, ["-m", "megatron_sail.scaling.measure", "--rank-spec",
                                        str(spec), "--rank-out", tmp,
                                        "--iterations", str(iterations)], "local",
                                per_rank=lambda rank: {"stdout": logs[rank]},
                                stderr=subprocess.STDOUT)
            codes, _ = wait_ranks(procs, grace=0, stop=terminate, timeout=timeout)
        finally:
            for log in logs:
                log.close()
        for rank, code in enumerate(codes):
            if code != 0:
                log = Path(f"{tmp}/rank{rank}.log").read_text()
                raise RuntimeError(f"memory measurement rank {rank} failed:\n{log[-4000:]}")
        per_rank = [json.loads(Path(f"{tmp}/rank{r}.json").read_text()) for r in range(nproc)]
        return [[MemoryMeasurement(**per_rank[r][i]) for r in range(nproc)]
                for i in range(len(cases))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_sail.scaling.measure",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("args", nargs="*", help="CONFIG.yaml and key=value overrides")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--out", default=None, help="write the per-rank results as JSON here")
    p.add_argument("--rank-spec", default=None, help=argparse.SUPPRESS)  # a spawned rank
    p.add_argument("--rank-out", default=None, help=argparse.SUPPRESS)  # a directory
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.rank_spec:
        spec = json.loads(Path(ns.rank_spec).read_text())
        with contextlib.redirect_stdout(sys.stderr):
            return _rank_main(spec["config"], spec["cases"], spec["ports"], ns.iterations,
                              Path(ns.rank_out) / f"rank{os.environ['RANK']}.json")
    config = ns.args[0] if ns.args and "=" not in ns.args[0] else None
    overrides = ns.args[1:] if config else ns.args
    (results,) = measure(config, [overrides], ns.nproc, ns.iterations)
    text = json.dumps([asdict(r) for r in results], indent=2)
    if ns.out:
        from megatron_sail.utils.atomic import write_atomic

        write_atomic(ns.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
