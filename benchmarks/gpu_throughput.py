"""Training throughput and MFU of a 2B-shaped SAIL-VL2 on one GPU, bf16.

    python benchmarks/gpu_throughput.py [--llm-layers 8] [--seq-length 4096] [--steps 10]

UNVERIFIED: written for one H100/H200 and never run (no GPU where it was written).

The model is sailvl2-2b (SAIL-ViT-Huge + Qwen3-1.7B widths, untied 151936-token vocabulary)
with fewer LLM layers so that a run, model build included, stays well under 8 minutes. It
trains through the real ``Trainer`` (Megatron DDP, distributed optimizer, the pipeline
schedule) on synthetic caption samples (one 448 px tile, 256 visual tokens each); the batches
are built once and reused so that data generation is not timed. It prints tokens/s, model
TFLOP/s per GPU and MFU (FLOPs from ``megatron_sail.costs.flops``, peak from
``costs.hardware``), the peak of ``torch.cuda.max_memory_allocated`` next to the memory
planner's estimate, for the local spec with torch's fused scaled-dot-product attention
(``model.attention=sdpa``, flash kernels), the local spec with Megatron's unfused attention
(S x S probabilities materialised) and - when Transformer Engine is importable - the TE spec,
with ratios to the first. Only torch and megatron-core are imported beyond this project.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time


def _peak(name: str, override: float | None) -> float:
    from megatron_sail.costs.hardware import peak_tflops

    if override:
        return override
    kind = "h200" if "H200" in name else "h100-pcie" if ("H100" in name and "PCIe" in name) \
        else "h100" if "H100" in name else None
    if kind is None:
        raise SystemExit(f"unknown GPU '{name}': pass --peak-tflops (dense bf16 TFLOP/s)")
    return peak_tflops(kind, "bf16")


IMPLS = {  # name -> config overrides
    "local-sdpa": ["model.transformer_impl=local", "model.attention=sdpa"],
    "local-unfused": ["model.transformer_impl=local", "model.attention=unfused"],
    "transformer_engine": ["model.transformer_impl=transformer_engine"],
}


def _as_packed(batch, samples: int):
    """One micro-batch row cut into ``samples`` attention segments (positions restart)."""
    import dataclasses

    import torch

    if batch.tokens.shape[0] != 1:
        raise SystemExit("--packed-samples needs --micro-batch 1 (a packed row per micro-batch)")
    seq = batch.tokens.shape[1]
    bounds = torch.linspace(0, seq, samples + 1).round().to(torch.int32)
    positions = torch.cat([torch.arange(int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])])
    return dataclasses.replace(batch, position_ids=positions[None], cu_seqlens=bounds,
                               max_seqlen=int((bounds[1:] - bounds[:-1]).max()))


def bench(impl: str, ns: argparse.Namespace, out_dir: str) -> dict:
    import torch

    from megatron_sail.config import load_config
    from megatron_sail.distributed.runtime import detect_env, shutdown
    from megatron_sail.costs.flops import train_flops_per_iteration
    from megatron_sail.scaling.memory import GIB, estimate, from_config, peak_stage
    from megatron_sail.training.step import run_step
    from megatron_sail.training.trainer import Trainer

    cfg = load_config(None, [
        "model.preset=sailvl2-2b", f"model.llm.num_layers={ns.llm_layers}",
        f"model.vision.num_layers={ns.vision_layers}",
        *IMPLS[impl], "train.precision=bf16",
        f"data.seq_length={ns.seq_length}", f"train.micro_batch_size={ns.micro_batch}",
        f"train.global_batch_size={ns.global_batch}", f"train.train_iters={ns.steps + ns.warmup}",
        "train.eval_interval=null", "checkpoint.save_interval=null", "run.tensorboard=false",
        f"run.output_dir={out_dir}/{impl}",
    ])
    shape, par, work = from_config(cfg, 1, device="gpu")
    planned = peak_stage(estimate(shape, par, work)).total
    device_mem = torch.cuda.get_device_properties(0).total_memory
    if planned > 0.95 * device_mem:
        raise SystemExit(f"{impl}: the planner expects {planned / GIB:.1f} GiB, more than the "
                         f"GPU's {device_mem / GIB:.1f}; lower --seq-length or --llm-layers")
    trainer = Trainer(cfg, detect_env())
    try:
        batches = trainer.batches.microbatches(0)
        if ns.packed_samples > 1:  # the same rows as packed THD rows of equal-length samples
            batches = [_as_packed(b, ns.packed_samples) for b in batches]
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(ns.warmup + ns.steps):
            for chunk in trainer.model:
                chunk.train()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = run_step(trainer.model, trainer.optimizer, trainer.scheduler, batches,
                              cfg.data.seq_length, cfg.train.micro_batch_size)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            print(f"  {impl} step {step + 1}: {times[-1]:.3f} s, loss {result.loss:.4f}",
                  flush=True)
        peak_mem = torch.cuda.max_memory_allocated()
    finally:
        if trainer.metrics:
            trainer.metrics.close()
        shutdown()
    step_time = statistics.median(times[ns.warmup:])
    flops = train_flops_per_iteration(cfg)
    return {"impl": impl, "step_time": step_time,
            "tokens_per_s": cfg.train.global_batch_size * cfg.data.seq_length / step_time,
            "tflops": flops / step_time / 1e12, "peak_mem": peak_mem, "planned_mem": planned}


def _bench_or_oom(impl: str, ns: argparse.Namespace, out_dir: str) -> dict:
    """One implementation; running out of memory is a result, not the end of the run."""
    import gc

    import torch

    try:
        return bench(impl, ns, out_dir)
    except torch.OutOfMemoryError as exc:
        print(f"  {impl}: out of GPU memory", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        return {"impl": impl, "oom": str(exc).split(".")[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm-layers", type=int, default=8)
    p.add_argument("--vision-layers", type=int, default=24)
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--impls", default=None,
                   help=f"comma-separated, from {', '.join(IMPLS)} (default: both local ones, "
                        f"and TE when it is importable)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--packed-samples", type=int, default=1,
                   help="cut every row into this many packed samples (THD, cu_seqlens)")
    ns = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU here", file=sys.stderr)
        return 2
    from megatron_sail.scaling.memory import GIB
    from megatron_sail.training.trainer import transformer_engine_available

    impls = ns.impls.split(",") if ns.impls else (
        ["local-sdpa", "local-unfused"]
        + (["transformer_engine"] if transformer_engine_available() else []))
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise SystemExit(f"unknown --impls {unknown}; choose from {list(IMPLS)}")
    name = torch.cuda.get_device_name(0)
    peak = _peak(name, ns.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="sail-gpu-bench-") as tmp:
        results = [_bench_or_oom(impl, ns, tmp) for impl in impls]
    print(f"\n{name}, peak {peak:.1f} dense bf16 TFLOP/s; sailvl2-2b widths, {ns.llm_layers} "
          f"LLM and {ns.vision_layers} ViT layers, seq {ns.seq_length}, micro-batch "
          f"{ns.micro_batch}, global batch {ns.global_batch}, median of {ns.steps} steps after "
          f"{ns.warmup}" + (f", rows packed from {ns.packed_samples} samples"
                            if ns.packed_samples > 1 else ""))
    print(f"{'impl':20s} {'step s':>7s} {'tokens/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'max alloc GiB':>13s} {'planned GiB':>11s}")
    for r in results:
        if "oom" in r:
            print(f"{r['impl']:20s} out of GPU memory ({r['oom']})")
            continue
        print(f"{r['impl']:20s} {r['step_time']:7.3f} {r['tokens_per_s']:9.0f} "
              f"{r['tflops']:8.1f} {r['tflops'] / peak:6.1%} {r['peak_mem'] / GIB:13.1f} "
              f"{r['planned_mem'] / GIB:11.1f}")
    ran = [r for r in results if "oom" not in r]
    base = ran[0] if ran else None
    for r in ran[1:]:  # ratios within this run
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{r['impl']} / {base['impl']}: tokens/s x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
