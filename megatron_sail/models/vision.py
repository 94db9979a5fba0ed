"""SAIL-ViT: conv patchify -> RMSNorm -> learned absolute positions -> bidirectional blocks."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_sail.config.presets import VisionArch
from megatron_sail.models.norms import RMSNorm
from megatron_sail.models.specs import vision_block_spec


def num_vision_blocks(arch: VisionArch) -> tuple[int, bool]:
    """Blocks to build for ``select_layer`` and whether the final norm applies.

    -1 (the release) is the last block followed by the final RMSNorm; any other value k picks
    ``hidden_states[k]`` of the reference (k blocks, or L + 1 + k when negative), unnormed.
    """
    k = arch.select_layer
    if k == -1:
        return arch.num_layers, True
    return (k if k >= 0 else arch.num_layers + 1 + k), False


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Resize learned positions [g*g, C] to a [h, w] patch grid (bicubic): the AnyRes path."""
    tokens, channels = pos_embed.shape
    side = math.isqrt(tokens)
    if (side, side) == tuple(grid_hw):
        return pos_embed
    grid = pos_embed.reshape(1, side, side, channels).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=grid_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(grid_hw[0] * grid_hw[1], channels).to(pos_embed.dtype)


class SailViT(MegatronModule):
    """Maps pixel tiles [N, 3, H, W] to patch features [N, H/14, W/14, C]."""

    def __init__(self, config: TransformerConfig, arch: VisionArch, impl: str,
                 pg_collection: ProcessGroupCollection, attention_kernel: str = "sdpa",
                 fused_norm: bool = False):
        super().__init__(config=config)
        self.arch = arch
        channels, patch = arch.hidden_size, arch.patch_size
        self.patch_embed = torch.nn.Conv2d(3, channels, patch, stride=patch, bias=True,
                                           dtype=config.params_dtype)
        self.patch_norm = RMSNorm(config, channels, eps=arch.norm_eps, fused=fused_norm)
        grid = arch.image_size // patch
        self.pos_embed = torch.nn.Parameter(torch.empty(grid * grid, channels, dtype=config.params_dtype))
        blocks, final_norm = num_vision_blocks(arch)
        self.blocks = TransformerBlock(
            config=config,
            spec=vision_block_spec(impl, blocks, final_norm, attention_kernel, fused_norm),
            post_layer_norm=final_norm,
            pre_process=True,
            post_process=True,
            pg_collection=pg_collection,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [N, C, h, w]
        n, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # row-major patches [N, h*w, C]
        x = self.patch_norm(x) + interpolate_pos_embed(self.pos_embed, (h, w))
        x = self.blocks(hidden_states=x.transpose(0, 1).contiguous(), attention_mask=None)
        return x.transpose(0, 1).reshape(n, h, w, c)

    def forward_packed(self, patches: torch.Tensor, grids: torch.Tensor) -> list[torch.Tensor]:
        """AnyRes: images of different patch grids as one packed sequence, each image attending
        only to itself. ``patches`` [P, 3*p*p]: every image's patches row-major, each flattened
        like the conv weight (channel, row, column); ``grids`` [n, 2]: (rows, cols) per image.
        Returns each image's features [rows, cols, C]."""
        weight = self.patch_embed.weight
        hw = [(int(h), int(w)) for h, w in grids.tolist()]
        sizes = [h * w for h, w in hw]
        if sum(sizes) != patches.shape[0] or patches.shape[1] != weight[0].numel():
            raise ValueError(f"{patches.shape[0]} patches of {patches.shape[1]} values do not "
                             f"match image grids {hw} of {weight[0].numel()}-value patches")
        # The conv with stride = kernel is a linear map of each flattened patch.
        x = patches.to(weight.dtype) @ weight.reshape(weight.shape[0], -1).t() + self.patch_embed.bias
        pos = torch.cat([interpolate_pos_embed(self.pos_embed, g) for g in hw])
        x = self.patch_norm(x) + pos
        cu = torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.int32, device=x.device)
        packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                 max_seqlen_q=max(sizes), max_seqlen_kv=max(sizes))
        x = self.blocks(hidden_states=x.unsqueeze(1), attention_mask=None,
                        packed_seq_params=packed)
        return [f.reshape(h, w, -1) for f, (h, w) in zip(x.squeeze(1).split(sizes), hw)]
