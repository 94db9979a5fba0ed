"""Candidate layouts for a GPU count, their memory (``scaling.memory``) and a relative step
time from what the layout adds to the same model FLOPs: pipeline bubble, recompute, unequal
stages. Communication volume is not modelled; ties go to less TP x PP (less of it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_sail.config.validation import padded_vocab_size
from megatron_sail.costs.flops import Conventions, adapter_forward, llm_forward, vision_forward
from megatron_sail.scaling.memory import (
    GIB, Parallel, StageMemory, Workload, estimate, peak_stage, stage_layers,
)
from megatron_sail.costs.shapes import ModelShape


@dataclass
class Plan:
    par: Parallel
    stages: list[StageMemory]
    microbatches: int
    relative_time: float  # 1.0 = no bubble, no recompute, balanced stages
    fits: bool

    @property
    def peak(self) -> StageMemory:
        return peak_stage(self.stages)


def _layer_flops(shape: ModelShape, work: Workload) -> tuple[float, float]:
    """Forward FLOPs of one LLM layer and of the ViT + adapter, per micro-batch."""
    conv = Conventions()
    llm = llm_forward(shape.llm, work.seq_length, conv)
    logits = llm.items["logits"]
    per_layer = (llm.total - logits) / shape.llm.num_layers
    front = (vision_forward(shape.vision, work.tiles).total
             + adapter_forward(shape, work.tiles).total)
    return per_layer, front


def _balanced_first_stage(shape: ModelShape, pp: int, work: Workload) -> Optional[int]:
    """LLM layers on stage 0 (next to the ViT) that best balance the stages' compute."""
    n = shape.llm.num_layers
    if pp == 1:
        return None
    per_layer, front = _layer_flops(shape, work)
    best = None
    for first in range(0, n + 1):
        rest = n - first
        if rest % (pp - 1) or rest == 0:
            continue
        worst = max(front + first * per_layer, rest // (pp - 1) * per_layer)
        if best is None or worst < best[0]:
            best = (worst, first)
    return best[1] if best else None


def _relative_time(shape: ModelShape, par: Parallel, work: Workload, microbatches: int) -> float:
    per_layer, front = _layer_flops(shape, work)
    layers = stage_layers(shape.llm.num_layers, par.pp, par.first_stage_llm_layers)
    stage_flops = [n * per_layer + (front if s == 0 else 0) for s, n in enumerate(layers)]
    imbalance = max(stage_flops) * len(stage_flops) / sum(stage_flops)
    bubble = (par.pp - 1) / microbatches
    # Recompute re-runs forward work: full = every layer's forward again (+1/3 of training);
    # selective = core attention only (about free with flash attention, S^2 with local).
    extra = 0.0
    train = 3 * (shape.llm.num_layers * per_layer + front)
    attn = llm_forward(shape.llm, work.seq_length, Conventions()).attention
    for recompute, flops, attention in ((par.llm_recompute, shape.llm.num_layers * per_layer, attn),
                                        (par.vision_recompute, front,
                                         vision_forward(shape.vision, work.tiles).attention)):
        if recompute == "full":
            extra += flops / train
        elif recompute == "selective":
            extra += attention / train
    return (1 + extra) * (1 + bubble) * imbalance


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidates(shape: ModelShape, gpus: int, work: Workload, max_tp: int = 8,
               recompute: tuple = (None, "selective", "full")) -> list[Parallel]:
    llm, out = shape.llm, []
    for tp in (t for t in _divisors(gpus) if t <= max_tp):
        if llm.heads % tp or llm.kv_heads % tp or (llm.moe is None and llm.ffn % tp):
            continue
        if padded_vocab_size(llm.vocab) % tp or (tp > 1 and work.seq_length % tp):
            continue
        for pp in _divisors(gpus // tp):
            if pp > llm.num_layers:
                continue
            dp = gpus // (tp * pp)
            if work.global_batch_size % (work.micro_batch_size * dp):
                continue
            first = _balanced_first_stage(shape, pp, work)
            if pp > 1 and first is None:
                continue
            eps = [1]
            if llm.moe is not None:
                eps = [e for e in _divisors(llm.moe.num_experts) if (gpus // pp) % e == 0]
            for ep in eps:
                for rc in recompute:
                    out.append(Parallel(tp=tp, pp=pp, dp=dp, ep=ep, first_stage_llm_layers=first,
                                        llm_recompute=rc, vision_recompute=rc))
    return out


def plan(shape: ModelShape, gpus: int, gpu_mem_gib: float, work: Workload,
         reserve_gib: float = 4.0, **kwargs) -> list[Plan]:
    """Every candidate layout, feasible ones first, each group fastest first.
    ``reserve_gib`` is kept free for CUDA/NCCL workspaces and fragmentation."""
    plans = []
    for par in candidates(shape, gpus, work, **kwargs):
        microbatches = work.global_batch_size // (work.micro_batch_size * par.dp)
        stages = estimate(shape, par, work)
        fits = peak_stage(stages).total <= (gpu_mem_gib - reserve_gib) * GIB
        plans.append(Plan(par, stages, microbatches,
                          _relative_time(shape, par, work, microbatches), fits))
    plans.sort(key=lambda p: (not p.fits, round(p.relative_time, 3), p.par.tp * p.par.pp,
                              p.par.ep, p.peak.total))
    return plans
