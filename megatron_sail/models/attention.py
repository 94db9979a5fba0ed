"""Core attention for the local (non-Transformer-Engine) specs.

Megatron-Core's ``DotProductAttention`` materialises the full [b, heads, s, s] probabilities
and refuses packed sequences. ``LocalCoreAttention`` is swapped in by spec instead:

- ``fused=False`` keeps Megatron's unfused math for ordinary batches (the reference path);
- ``fused=True`` runs torch's ``scaled_dot_product_attention`` (flash / memory-efficient
  kernels on GPUs, a fused kernel on CPUs);
- packed rows (``PackedSeqParams`` in THD layout, ``cu_seqlens``) always take the SDPA path,
  one call per segment, so no token attends across a sample boundary and no [t, t] mask is
  built. Megatron's attention has already squeezed the batch dimension and restarted the
  rotary positions at every ``cu_seqlens`` boundary.

Under context parallelism (``config.context_parallel_size > 1``) each rank holds 2 of the
2 x CP load-balanced chunks of every sequence or packed segment (models/context_parallel.py).
Keys and values are all-gathered over the CP group (backward: their gradients are
reduce-scattered back) and put into global order; each local query chunk then attends to its
segment's keys up to its own end, causal aligned to the bottom right (the chunk is the last
rows of that prefix). The all-gather-KV scheme holds the full keys/values of a layer at once
(2 x t x groups x head_dim per rank) but needs one collective per layer and no ring schedule;
with GQA the K/V it moves are a fraction of the activations.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from megatron_sail.compat.local_attention_cp import init_without_cp_assert
from megatron_sail.models.context_parallel import gathered_order, local_query_chunks


class LocalCoreAttention(DotProductAttention):
    def __init__(self, config, *args, fused: bool = True, **kwargs):
        init_without_cp_assert(self, DotProductAttention.__init__, config, *args, **kwargs)
        self.fused = fused
        self.num_groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        self.cp_group = None
        if config.context_parallel_size > 1:
            self.cp_group = getattr(self.pg_collection, "cp", None) \
                or parallel_state.get_context_parallel_group()

    def forward(self, query, key, value, attention_mask: Optional[torch.Tensor],
                attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None,
                packed_seq_params: Optional[PackedSeqParams] = None):
        if attention_bias is not None:
            raise ValueError("attention bias is not supported by the local core attention")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if self.cp_group is not None and self.cp_group.size() > 1:
            if attention_mask is not None and packed_seq_params is None:
                raise ValueError("context parallelism takes no attention mask (causal or "
                                 "packed-row attention only)")
            return self._context_parallel(query, key, value, mask_type, packed_seq_params)
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd":
                raise ValueError(f"packed sequences must use the THD layout, got "
                                 f"{packed_seq_params.qkv_format!r}")
            return self._packed(query, key, value, mask_type, packed_seq_params)
        if not self.fused:
            return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type)
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = self._sdpa(q, k, v, mask_type == AttnMaskType.causal, attention_mask)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, self.hidden_size_per_partition)

    def _packed(self, query, key, value, mask_type: AttnMaskType, params: PackedSeqParams):
        """THD layout: query [t, n, d], key/value [t, g, d] -> [t, n * d]."""
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None \
            else params.cu_seqlens_q
        bounds = cu_q.tolist()
        if bounds[0] != 0 or bounds[-1] != query.shape[0]:
            raise ValueError(f"cu_seqlens {bounds} do not cover the {query.shape[0]} packed "
                             f"tokens")
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end == start:
                continue
            q, k, v = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))
            outputs.append(self._sdpa(q, k, v, causal, None)[0].transpose(0, 1))
        out = torch.cat(outputs, dim=0)
        return out.reshape(out.shape[0], self.hidden_size_per_partition)

    def _context_parallel(self, query, key, value, mask_type: AttnMaskType,
                          params: Optional[PackedSeqParams]):
        """All-gather-KV attention. Ordinary rows: [s/cp, b, n, d] -> [s/cp, b, n * d];
        packed rows (THD, ``cu_seqlens_q_padded`` global): [t/cp, n, d] -> [t/cp, n * d]."""
        cp, rank = self.cp_group.size(), self.cp_group.rank()
        bounds = None
        if params is not None:
            if params.qkv_format != "thd":
                raise ValueError(f"packed sequences must use the THD layout, got "
                                 f"{params.qkv_format!r}")
            cu = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None \
                else params.cu_seqlens_q
            bounds = cu.tolist()
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        # Imported here: torch.nn.attention.bias loads TorchDynamo, which CPU rank processes
        # without CP should not pay for at start-up (tests/unit/test_cpu_import.py).
        from torch.nn.attention.bias import causal_lower_right

        # [local, ...] on every rank -> [cp * local, ...] rank-major -> global token order
        order = gathered_order(query.shape[0] * cp, cp, bounds).to(key.device)
        key, value = (tensor_parallel.gather_from_sequence_parallel_region(
            t.contiguous(), tensor_parallel_output_grad=True, group=self.cp_group
        ).index_select(0, order) for t in (key, value))
        if params is None:  # [s, b, h, d] -> [b, h, s, d]
            query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        else:  # [t, h, d] -> [1, h, t, d]
            query, key, value = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
        outputs = []
        for local, length, seg_start, key_end in local_query_chunks(query.shape[2], cp, rank,
                                                                    bounds):
            q = query[:, :, local:local + length]
            seg_end = key_end if causal else _segment_end(bounds, seg_start, key.shape[2])
            k, v = key[:, :, seg_start:seg_end], value[:, :, seg_start:seg_end]
            mask = causal_lower_right(length, seg_end - seg_start) if causal else None
            outputs.append(self._sdpa_bias(q, k, v, mask))
        out = torch.cat(outputs, dim=2)  # [b, n, local, d]
        if params is None:
            s, b = out.shape[2], out.shape[0]
            return out.permute(2, 0, 1, 3).reshape(s, b, self.hidden_size_per_partition)
        return out[0].transpose(0, 1).reshape(out.shape[2], self.hidden_size_per_partition)

    def _sdpa_bias(self, q, k, v, bias):
        """SDPA with an optional torch attention bias (e.g. a bottom-right causal mask)."""
        if self.num_groups > 1:
            k = k.repeat_interleave(self.num_groups, dim=1)
            v = v.repeat_interleave(self.num_groups, dim=1)
        dropout = self.config.attention_dropout if self.training else 0.0
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else nullcontext()
        with rng:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout,
                                                  scale=self.softmax_scale)

    def _sdpa(self, q, k, v, causal: bool, attention_mask: Optional[torch.Tensor]):
        """q [b, n, s, d], k/v [b, g, s, d]; Megatron's masks are True where *masked*."""
        if self.num_groups > 1:  # GQA: each key/value head serves num_groups query heads
            k = k.repeat_interleave(self.num_groups, dim=1)
            v = v.repeat_interleave(self.num_groups, dim=1)
        mask = None
        if attention_mask is not None and not causal:
            mask = ~attention_mask
        dropout = self.config.attention_dropout if self.training else 0.0
        # Dropout draws from the model-parallel RNG stream, as Megatron's attention does.
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else nullcontext()
        with rng:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                  is_causal=causal and mask is None,
                                                  scale=self.softmax_scale)


def _segment_end(bounds: Optional[list], start: int, total: int) -> int:
    """End of the segment starting at ``start`` (the whole row without bounds)."""
    if bounds is None:
        return total
    return bounds[bounds.index(start) + 1]
