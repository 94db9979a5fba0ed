"""``sail plan``: per-GPU memory of candidate layouts, the feasible ones ranked."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from megatron_sail.errors import check_option_ranges
from megatron_sail.costs.hardware import GPUS
from megatron_sail.scaling.memory import GIB, Workload
from megatron_sail.scaling.planner import plan
from megatron_sail.costs.shapes import preset_names, shape_from_preset

RECOMPUTE = {"none": None, "selective": "selective", "full": "full"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sail plan",
        description="Per-GPU parameter, gradient, optimizer-state and activation memory of "
                    "candidate TP/PP/EP/DP and recompute layouts; feasible layouts first, "
                    "fastest (least pipeline bubble, recompute and stage imbalance) first.")
    p.add_argument("--preset", required=True, choices=preset_names())
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100",
                   help="GPU kind, for its memory (default h100: 80 GiB)")
    p.add_argument("--gpu-mem", type=float, default=None, help="GiB per GPU (default: --gpu's)")
    p.add_argument("--reserve", type=float, default=4.0,
                   help="GiB kept free for CUDA/NCCL workspaces and fragmentation (default 4)")
    p.add_argument("--seq-length", type=int, default=8192)
    p.add_argument("--tiles", type=float, default=1, help="tiles per sample (thumbnail included)")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--global-batch", type=int, default=512)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--kernels", choices=("te", "local", "local-unfused"), default="te",
                   help="te: Transformer Engine + flash attention; local: Megatron's local "
                        "spec with fused (SDPA) attention; local-unfused: its unfused attention")
    p.add_argument("--freeze", default="", help="comma-separated: vision, adapter, llm")
    p.add_argument("--recompute", default="none,selective,full",
                   help="recompute choices to consider (default none,selective,full)")
    p.add_argument("--max-tp", type=int, default=8, help="largest TP (one node; default 8)")
    p.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--json", action="store_true")
    return p


def _gib(x: float) -> str:
    return f"{x / GIB:7.1f}"


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    check_option_ranges(ns, positive=("gpus", "gpu_mem", "seq_length", "tiles", "micro_batch",
                                      "global_batch", "max_tp", "top"),
                        non_negative=("reserve",))
    if ns.gpu_mem is None:
        ns.gpu_mem = GPUS[ns.gpu].memory_gib
    try:
        recompute = tuple(RECOMPUTE[r] for r in ns.recompute.split(",") if r)
        shape = shape_from_preset(ns.preset)
    except KeyError as exc:
        print(f"sail plan: error: unknown choice {exc} (recompute: none, selective, full)",
              file=sys.stderr)
        return 2
    work = Workload(seq_length=ns.seq_length, tiles=ns.tiles, micro_batch_size=ns.micro_batch,
                    global_batch_size=ns.global_batch, precision=ns.precision,
                    kernels=ns.kernels, frozen=tuple(x for x in ns.freeze.split(",") if x),
                    image_size=shape.vision.image_size)
    plans = plan(shape, ns.gpus, ns.gpu_mem, work, reserve_gib=ns.reserve, max_tp=ns.max_tp,
                 recompute=recompute)
    if not plans:
        print(f"sail plan: no layout of {ns.gpus} GPUs divides the model and the global batch "
              f"{ns.global_batch}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps([{"parallel": asdict(p.par), "fits": p.fits,
                           "relative_time": p.relative_time, "microbatches": p.microbatches,
                           "stages": [asdict(s) | {"total": s.total} for s in p.stages]}
                          for p in plans], indent=1))
        return 0
    feasible = sum(p.fits for p in plans)
    print(f"{ns.preset} on {ns.gpus} GPUs x {ns.gpu_mem:g} GiB ({ns.reserve:g} reserved), "
          f"seq {ns.seq_length}, {ns.tiles:g} tiles, micro-batch {ns.micro_batch}, global batch "
          f"{ns.global_batch}, {ns.precision}, {ns.kernels} kernels: {feasible} of {len(plans)} "
          f"layouts fit")
    print("GiB on the most loaded pipeline stage; time relative to a bubble-free, "
          "recompute-free, balanced run")
    print(f"{'#':>3s} {'TP':>3s} {'PP':>3s} {'EP':>3s} {'DP':>4s} {'recompute':>9s} {'L0':>3s} "
          f"{'params':>7s} {'grads':>7s} {'optim':>7s} {'activ':>7s} {'other':>7s} "
          f"{'total':>7s} {'fits':>4s} {'time':>5s}")
    for i, p in enumerate(plans[:ns.top], 1):
        s, par = p.peak, p.par
        first = "-" if par.first_stage_llm_layers is None else str(par.first_stage_llm_layers)
        print(f"{i:3d} {par.tp:3d} {par.pp:3d} {par.ep:3d} {par.dp:4d} "
              f"{par.llm_recompute or 'none':>9s} {first:>3s} {_gib(s.params)} {_gib(s.grads)} "
              f"{_gib(s.optimizer)} {_gib(s.activations)} {_gib(s.extras)} {_gib(s.total)} "
              f"{'yes' if p.fits else 'no':>4s} {p.relative_time:5.2f}")
    print("L0: LLM layers on stage 0 next to the ViT (chosen to balance compute). "
          "Estimates: megatron_sail/scaling/memory.py; checked against measured CPU peaks.")
    return 0
