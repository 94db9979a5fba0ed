"""Normalisation layers usable in Megatron-Core specs, with sequence parallelism.

Megatron's local specs wrap plain torch norms, which refuse sequence parallelism. These
norms mark their weights ``sequence_parallel`` so Megatron's ``finalize_model_grads``
sums their gradients over the tensor-parallel group, the same contract TE's norms follow.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """``weight * (x / rms(x))`` computed in fp32, as the SAIL-ViT and Qwen3 references do.

    ``fused=True`` runs ``torch.nn.functional.rms_norm``: the same formula (fp32 statistics,
    the normalised value rounded to the input dtype before the weight multiplies it) in one
    kernel that saves its input and the per-token 1/rms for backward, where the unfused one
    keeps an fp32 copy of the input and the normalised value."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6,
                 fused: bool = False):
        super().__init__()
        self.eps = eps
        self.fused = fused
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return torch.nn.functional.rms_norm(x, self.weight.shape, self.weight.to(x.dtype),
                                                self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class LayerNorm(torch.nn.LayerNorm):
    """torch LayerNorm (with bias) taking Megatron's norm constructor arguments."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        for p in self.parameters():
            setattr(p, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)
