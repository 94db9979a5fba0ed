"""Layout-independent weight initialisation.

Every tensor is drawn whole from a generator seeded by (seed, checkpoint key, layer index)
and each rank keeps only its shard, located through Megatron's sharded state dict. The
same seed therefore gives the same model under any TP/PP/VPP/DP layout - Megatron's own
initialisation seeds every pipeline stage differently and draws per-rank shards.
"""

from __future__ import annotations

import hashlib
import math

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_sail.compat.sharded_tensors import is_flat_slice, stacked_axes

# Output projections of residual branches get Megatron's scaled init, std / sqrt(2 L).
_RESIDUAL_OUTPUTS = ("linear_proj.weight", "linear_fc2.weight")


def _generator(seed: int, key: str, layer_offsets: tuple[int, ...]) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}|{key}|{layer_offsets}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def initial_value(key: str, shape: tuple[int, ...], seed: int, layer_offsets: tuple[int, ...],
                  std: float, num_layers: dict[str, int]) -> torch.Tensor:
    """The full (unsharded) initial value of one tensor, in fp32."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf.endswith("_bias"):
        return torch.zeros(shape)
    if "norm" in key and len(shape) == 1:
        return torch.ones(shape)
    scale = std
    if key.endswith(_RESIDUAL_OUTPUTS) and ".layers." in key:
        tower = "vision" if key.startswith("vision.") else "llm"
        scale = std / math.sqrt(2.0 * num_layers[tower])
    return torch.randn(shape, generator=_generator(seed, key, layer_offsets)) * scale


def _sharded_tensors(sharded_state_dict: dict):
    for item in sharded_state_dict.values():
        if isinstance(item, ShardedTensorFactory):
            built = item.build()
            yield from (built.values() if isinstance(built, dict) else built)
        elif isinstance(item, ShardedTensor):
            yield item


@torch.no_grad()
def initialize_weights(model_chunks, seed: int, std: float, num_layers: dict[str, int],
                       prefixes: tuple[str, ...] | None = None) -> None:
    """Draw every tensor (or only those whose key starts with one of ``prefixes``)."""
    for chunk in model_chunks:
        for sh in _sharded_tensors(chunk.sharded_state_dict()):
            if sh.data is None or is_flat_slice(sh):
                continue
            if prefixes is not None and not sh.key.startswith(prefixes):
                continue
            lead = stacked_axes(sh)  # stacked-layer axes: part of the tensor's identity
            layer_offsets = tuple(sh.global_offset[:lead])
            full = initial_value(sh.key, tuple(sh.global_shape[lead:]), seed, layer_offsets,
                                 std, num_layers)
            local_shape = sh.local_shape[len(sh.local_shape) - (len(sh.global_shape) - lead):]
            index = tuple(slice(o, o + n) for o, n in zip(sh.global_offset[lead:], local_shape))
            sh.data.copy_(full[index].reshape(sh.data.shape).to(sh.data.dtype))
