"""Layout-independent weight initialisation, drawn only for the shard a rank holds.

Element ``i`` (row-major index in the full, unsharded tensor) of the tensor with checkpoint key
``k`` in layer ``l`` is a standard normal computed from (seed, k, l, i) alone, by a
counter-based generator: SplitMix64's output number ``i`` gives two uniforms, Box-Muller
turns them into a normal. So a rank computes its shard directly (no whole-tensor draw on every
rank), on the device the weights live on, and the same seed gives the same model under any
TP/PP/VPP/DP/EP layout - Megatron's own initialisation seeds every pipeline stage
differently and draws per-rank shards. The integer steps are exact on every device; the
float32 log/cos of Box-Muller may differ in the last bit between CPU and GPU math libraries.
"""

from __future__ import annotations

import hashlib
import math

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_sail.compat.sharded_tensors import is_flat_slice, stacked_axes

# Output projections of residual branches get Megatron's scaled init, std / sqrt(2 L).
_RESIDUAL_OUTPUTS = ("linear_proj.weight", "linear_fc2.weight")

_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment and finaliser constants
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_CHUNK = 1 << 20  # elements per pass: bounds the int64 and float32 temporaries


def _signed(value: int) -> int:
    """A 64-bit constant as torch's int64 holds it (two's complement; arithmetic wraps)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _stream(seed: int, key: str, layer_offsets: tuple[int, ...]) -> int:
    digest = hashlib.sha256(f"{seed}|{key}|{layer_offsets}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _normals(stream: int, flat_index: torch.Tensor) -> torch.Tensor:
    """Standard normals at element indices ``flat_index`` of ``stream`` (float32)."""
    # SplitMix64's output number i: state = stream + (i + 1) * golden, mixed. Its two 32-bit
    # halves give two 24-bit uniforms in the open interval (0, 1) for Box-Muller.
    z = flat_index.add(1).mul_(_signed(_GOLDEN)).add_(_signed(stream))
    z.bitwise_xor_(_shift_right(z, 30)).mul_(_signed(_MIX1))
    z.bitwise_xor_(_shift_right(z, 27)).mul_(_signed(_MIX2))
    z.bitwise_xor_(_shift_right(z, 31))
    u1 = _shift_right(z, 40).to(torch.float32).add_(0.5).mul_(2.0 ** -24)
    u2 = ((z >> 8) & 0xFFFFFF).to(torch.float32).add_(0.5).mul_(2.0 ** -24)
    return u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(2.0 * math.pi).cos_())


def _flat_indices(global_shape: tuple[int, ...], offsets: tuple[int, ...],
                  local_shape: tuple[int, ...], device) -> torch.Tensor:
    """Row-major indices into ``global_shape`` of the block at ``offsets`` of ``local_shape``."""
    index = torch.zeros((), dtype=torch.int64, device=device)
    stride = 1
    for dim in reversed(range(len(global_shape))):
        along = torch.arange(offsets[dim], offsets[dim] + local_shape[dim], dtype=torch.int64,
                             device=device) * stride
        index = index + along.reshape((-1,) + (1,) * (len(global_shape) - 1 - dim))
        stride *= global_shape[dim]
    return index.reshape(local_shape)


def _scale(key: str, std: float, num_layers: dict[str, int]) -> float:
    if key.endswith(_RESIDUAL_OUTPUTS) and ".layers." in key:
        tower = "vision" if key.startswith("vision.") else "llm"
        return std / math.sqrt(2.0 * num_layers[tower])
    return std


def _constant(key: str, shape: tuple[int, ...]) -> float | None:
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf.endswith("_bias"):
        return 0.0
    if "norm" in key and len(shape) == 1:
        return 1.0
    return None


def initial_block(key: str, global_shape: tuple[int, ...], offsets: tuple[int, ...],
                  local_shape: tuple[int, ...], seed: int, layer_offsets: tuple[int, ...],
                  std: float, num_layers: dict[str, int], device=None) -> torch.Tensor:
    """The block at ``offsets`` of ``local_shape`` of one tensor's initial value, in fp32,
    computed on ``device`` without drawing the rest of the tensor."""
    constant = _constant(key, global_shape)
    if constant is not None:
        return torch.full(local_shape, constant, device=device)
    stream, scale = _stream(seed, key, layer_offsets), _scale(key, std, num_layers)
    out = torch.empty(local_shape, dtype=torch.float32, device=device)
    if out.numel() == 0:
        return out
    # In slabs along the first axis, so the temporaries stay small for big shards.
    row = max(1, math.prod(local_shape[1:]))
    rows_per_pass = max(1, _CHUNK // row)
    for start in range(0, local_shape[0], rows_per_pass):
        rows = min(rows_per_pass, local_shape[0] - start)
        block = (rows,) + tuple(local_shape[1:])
        index = _flat_indices(global_shape, (offsets[0] + start,) + tuple(offsets[1:]), block,
                              device)
        out[start:start + rows] = _normals(stream, index) * scale
    return out


def initial_value(key: str, shape: tuple[int, ...], seed: int, layer_offsets: tuple[int, ...],
                  std: float, num_layers: dict[str, int]) -> torch.Tensor:
    """The full (unsharded) initial value of one tensor, in fp32."""
    return initial_block(key, shape, (0,) * len(shape), shape, seed, layer_offsets, std,
                         num_layers)


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
            global_shape = tuple(sh.global_shape[lead:])
            local_shape = tuple(sh.local_shape[len(sh.local_shape) - len(global_shape):])
            block = initial_block(sh.key, global_shape, tuple(sh.global_offset[lead:]),
                                  local_shape, seed, layer_offsets, std, num_layers,
                                  device=sh.data.device)
            sh.data.copy_(block.reshape(sh.data.shape).to(sh.data.dtype))
