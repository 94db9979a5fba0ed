"""A finished run as a point of a scaling study: parameters N, tokens D, compute C, loss L.

N is the trainable parameter count without embeddings and output layer (Kaplan et al.'s
convention: embeddings scale with the vocabulary, not with capacity); D counts every LLM
token (visual ones included) of every step; C is the model FLOPs of ``costs.flops`` (the
ViT and adapter included) summed over the steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


from megatron_sail.config import config_from_dict
from megatron_sail.config.loader import read_yaml
from megatron_sail.costs.flops import train_flops_per_iteration
from megatron_sail.scaling.memory import count_params
from megatron_sail.costs.shapes import shape_from_config


@dataclass
class RunPoint:
    name: str
    run_dir: str
    params: float  # N
    tokens_per_iteration: float
    flops_per_iteration: float
    iterations: list[int]
    losses: list[float]
    final_loss: float  # mean of the last ``tail`` logged training losses
    final_iteration: int

    @property
    def tokens(self) -> float:  # D
        return self.tokens_per_iteration * self.final_iteration

    @property
    def compute(self) -> float:  # C
        return self.flops_per_iteration * self.final_iteration


def trainable_params(cfg) -> float:
    parts = count_params(shape_from_config(cfg))
    frozen = set(cfg.model.freeze)
    n = sum(parts[p] for p in ("vision", "adapter") if p not in frozen)
    return n + (0 if "llm" in frozen else parts["llm_layers"])


def load_run(run_dir: str | Path, tail: int = 3) -> RunPoint:
    run_dir = Path(run_dir)
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    for path in (config, metrics):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (is {run_dir} a finished run directory?)")
    cfg = config_from_dict(read_yaml(config))
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r]
    if not records:
        raise ValueError(f"{metrics}: no training losses logged")
    last = records[-tail:]
    return RunPoint(
        name=run_dir.name, run_dir=str(run_dir), params=trainable_params(cfg),
        tokens_per_iteration=cfg.train.global_batch_size * cfg.data.seq_length,
        flops_per_iteration=train_flops_per_iteration(cfg),
        iterations=[r["iteration"] for r in records], losses=[r["loss"] for r in records],
        final_loss=sum(r["loss"] for r in last) / len(last),
        final_iteration=records[-1]["iteration"],
    )
