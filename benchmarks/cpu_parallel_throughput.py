"""Training tokens/s of the tiny model at TP=1, TP=2 (+SP) and PP=2 on CPU, in one run.

    python benchmarks/cpu_parallel_throughput.py [--iters 30] [--seq-length 256] [--threads 1]

Every layout trains the same global batches through the real ``sail train`` (gloo between
processes, one OS thread per rank). TP=1 is one process; TP=2 and PP=2 are two, so a ratio of
2.0 would be perfect scaling and the shortfall is communication plus pipeline bubble. DP=2 is
the reference for two processes that only exchange gradients once per step.
Tokens/s is the median over the steps after the first ``--warmup`` (metrics.jsonl's
``tokens_per_sec``: global batch x sequence length / step time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "tiny" / "pretrain.yaml"

LAYOUTS = {  # name: (processes, overrides)
    "TP=1": (1, []),
    "TP=2": (2, ["parallel.tensor_model_parallel_size=2"]),
    "PP=2": (2, ["parallel.pipeline_model_parallel_size=2"]),
    "DP=2": (2, []),
}


def run_layout(name: str, nproc: int, overrides: list[str], common: list[str], threads: int,
               workdir: Path) -> list[float]:
    out = workdir / name.replace("=", "")
    cmd = [sys.executable, "-m", "megatron_sail.cli", "train", str(TINY), f"run.output_dir={out}",
           *common, *overrides, "--nproc-per-node", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_sec"] for r in records]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    ns = p.parse_args()
    common = [f"train.train_iters={ns.iters}", f"data.seq_length={ns.seq_length}",
              f"train.micro_batch_size={ns.micro_batch}",
              f"train.global_batch_size={ns.global_batch}", "train.eval_interval=null",
              "checkpoint.save_interval=null", "run.tensorboard=false"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="sail-bench-") as tmp:
        from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer

        tokenizer = Path(tmp) / "tokenizer.model"
        train_synthetic_tokenizer(str(tokenizer))
        common.append(f"data.tokenizer={tokenizer}")
        for name in ns.layouts.split(","):
            nproc, overrides = LAYOUTS[name]
            rates = run_layout(name, nproc, overrides, common, ns.threads, Path(tmp))
            results[name] = (nproc, statistics.median(rates[ns.warmup:]))
    base = results.get("TP=1", next(iter(results.values())))[1]
    print(f"tiny model, seq {ns.seq_length}, global batch {ns.global_batch}, micro-batch "
          f"{ns.micro_batch}, {ns.threads} thread(s) per rank, median of steps "
          f"{ns.warmup + 1}..{ns.iters}, {os.cpu_count()} CPUs visible")
    print(f"{'layout':8s} {'ranks':>5s} {'tokens/s':>10s} {'vs TP=1':>8s} {'per rank':>9s}")
    for name, (nproc, rate) in results.items():
        print(f"{name:8s} {nproc:5d} {rate:10.0f} {rate / base:8.2f} {rate / base / nproc:9.2f}")
    print("vs TP=1: throughput ratio; per rank: the ratio divided by the processes used "
          "(1.00 = perfect scaling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
