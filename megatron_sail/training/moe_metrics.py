"""Routing observability for MoE LLMs: per layer and overall expert load, its imbalance and
entropy, split by token kind (text vs visual) - the signal SAIL-VL2 uses to check that
routing stays balanced when images enter - plus the balancing losses Megatron tracks.

Counts come from forward hooks on Megatron's routers; every rank routes different tokens
(sequence-parallel shards, data-parallel batches) and owns different layers (pipeline
stages), so a world-wide sum gives the global statistics.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.transformer.moe.router import TopKRouter

from megatron_sail.compat.moe_router import clear_layer_metrics, layer_metrics, routing_map

KINDS = ("text", "visual")  # token kind ids 1 and 2; 0 is padding, not counted

# Megatron's tracker names, and over how many ranks each tracked value is replicated or
# averaged after a world-wide sum (global: partial sums of one loss; others: per DP rank).
_TRACKED = {"global_load_balancing_loss": "global", "load_balancing_loss": "dp",
            "seq_load_balancing_loss": "dp", "z_loss": "tp_dp"}


class RoutingStats:
    def __init__(self, model_chunks, num_layers: int, num_experts: int, pad_id: int,
                 img_context_id: int):
        self.num_layers, self.num_experts = num_layers, num_experts
        self.pad_id, self.img_context_id = pad_id, img_context_id
        self.counts = torch.zeros(len(KINDS), num_layers, num_experts, dtype=torch.float64)
        self.token_kinds: Optional[torch.Tensor] = None
        self.aux: dict[str, float] = {}
        self.routers = [m for chunk in model_chunks for m in chunk.modules()
                        if isinstance(m, TopKRouter)]
        for router in self.routers:
            router.register_forward_hook(self._hook)

    # -- per micro-batch -------------------------------------------------------------------
    def observe(self, batch) -> None:
        """Called before each micro-batch's forward (``run_step(before_microbatch=...)``)."""
        self.set_tokens(batch.tokens)

    def set_tokens(self, tokens: torch.Tensor) -> None:
        """Token kinds in the routers' row order: [s, b] flattened, this rank's SP shard."""
        kinds = torch.ones_like(tokens)
        kinds[tokens == self.pad_id] = 0
        kinds[tokens == self.img_context_id] = 2
        kinds = kinds.transpose(0, 1)
        if self.routers and self.routers[0].config.sequence_parallel:
            tp = parallel_state.get_tensor_model_parallel_world_size()
            rank = parallel_state.get_tensor_model_parallel_rank()
            kinds = kinds.chunk(tp, dim=0)[rank]
        self.token_kinds = kinds.reshape(-1)

    def _hook(self, router, _inputs, outputs) -> None:
        if not torch.is_grad_enabled() or self.token_kinds is None:
            return  # evaluation, or the no-grad first pass of activation recompute
        routed = routing_map(outputs)
        layer = router.layer_number - 1
        kinds = self.token_kinds.to(routed.device)
        for k in range(len(KINDS)):
            rows = routed[kinds == k + 1]
            self.counts[k, layer] += rows.sum(0).to(torch.float64).cpu()

    def reset_step(self) -> None:
        """Before a training step: Megatron's global-batch statistics start afresh."""
        clear_layer_metrics()
        for router in self.routers:
            if getattr(router, "global_tokens_per_expert", None) is not None:
                router.reset_global_aux_loss_tracker()

    # -- per iteration (collective) ---------------------------------------------------------
    def end_step(self, num_microbatches: int) -> None:
        """Reduce this step's balancing losses (collective: every rank calls it)."""
        tracker = layer_metrics()
        values = torch.zeros(len(_TRACKED), self.num_layers, dtype=torch.float64)
        for i, name in enumerate(_TRACKED):
            if name in tracker:
                values[i] = tracker[name].detach().to(torch.float64).cpu()
        values = _world_sum(values)
        dp = parallel_state.get_data_parallel_world_size()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        divisor = {"global": 1, "dp": dp, "tp_dp": tp * dp}
        for i, (name, kind) in enumerate(_TRACKED.items()):
            if name in tracker or values[i].abs().sum() > 0:
                per_layer = values[i] / (divisor[kind] * num_microbatches)
                self.aux[name] = self.aux.get(name, 0.0) + float(per_layer.mean())
        self.steps = getattr(self, "steps", 0) + 1
        clear_layer_metrics()

    def metrics(self) -> dict:
        """Collective. Statistics since the last call, then reset."""
        counts = _world_sum(self.counts)
        out: dict = {}
        steps = max(getattr(self, "steps", 1), 1)
        if "global_load_balancing_loss" in self.aux or "load_balancing_loss" in self.aux \
                or "seq_load_balancing_loss" in self.aux:
            balancing = [v for k, v in self.aux.items() if k != "z_loss"]
            out["moe/aux_loss"] = sum(balancing) / steps
        if "z_loss" in self.aux:
            out["moe/z_loss"] = self.aux["z_loss"] / steps
        total = counts.sum(0)
        layers = [i for i in range(self.num_layers) if total[i].sum() > 0]
        for i in layers:
            out[f"moe/layer_{i}/tokens_per_expert"] = [int(x) for x in total[i].tolist()]
            out[f"moe/layer_{i}/max_over_mean_load"] = max_over_mean(total[i])
            out[f"moe/layer_{i}/entropy"] = load_entropy(total[i])
        if layers:
            out["moe/max_over_mean_load"] = sum(out[f"moe/layer_{i}/max_over_mean_load"]
                                                for i in layers) / len(layers)
            out["moe/entropy"] = sum(out[f"moe/layer_{i}/entropy"] for i in layers) / len(layers)
            for k, kind in enumerate(KINDS):
                used = [i for i in layers if counts[k, i].sum() > 0]
                if used:
                    out[f"moe/{kind}/max_over_mean_load"] = sum(
                        max_over_mean(counts[k, i]) for i in used) / len(used)
                    out[f"moe/{kind}/entropy"] = sum(
                        load_entropy(counts[k, i]) for i in used) / len(used)
        self.counts.zero_()
        self.aux, self.steps = {}, 0
        return out


def max_over_mean(load: torch.Tensor) -> float:
    return float(load.max() / load.mean()) if load.sum() > 0 else float("nan")


def load_entropy(load: torch.Tensor) -> float:
    """Entropy of the expert-load distribution over log(E): 1 = perfectly balanced."""
    p = load / load.sum()
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / math.log(load.numel()))


def _world_sum(tensor: torch.Tensor) -> torch.Tensor:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = tensor.to(device)
    torch.distributed.all_reduce(out)
    return out.cpu()
