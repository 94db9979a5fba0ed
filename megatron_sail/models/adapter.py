"""Token merge and projection into the LLM: pixel shuffle (v2) + LN -> Linear -> GELU -> Linear."""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_sail.config.presets import AdapterArch
from megatron_sail.models.norms import LayerNorm


def pixel_shuffle_v2(x: torch.Tensor) -> torch.Tensor:
    """[N, h, w, C] -> [N, (h/2)*(w/2), 4C], row-major; output token (i, j) concatenates
    x[2i,2j], x[2i,2j+1], x[2i+1,2j], x[2i+1,2j+1] (the release's "v2" order)."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"pixel shuffle needs an even patch grid, got {h}x{w}")
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // 2) * (w // 2), 4 * c)


class VisionAdapter(MegatronModule):
    """``mlp1`` of the release, tensor-parallel over the LLM's TP group."""

    def __init__(self, config: TransformerConfig, arch: AdapterArch, vision_hidden: int):
        super().__init__(config=config)
        merged = 4 * vision_hidden
        self.norm = LayerNorm(config, merged, eps=arch.norm_eps)
        self.mlp = MLP(
            config=config,
            submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            input_size=merged,
        )

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """[N, h, w, C_vit] -> [N * h*w/4, H_llm] visual embeddings, tile by tile."""
        return self.project(pixel_shuffle_v2(patch_features))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Merged tokens [..., 4 C_vit] -> [tokens, H_llm]."""
        out, bias = self.mlp(self.norm(tokens))
        if bias is not None:
            out = out + bias
        return out.reshape(-1, out.shape[-1])
