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
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class LocalCoreAttention(DotProductAttention):
    def __init__(self, *args, fused: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused
        self.num_groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition

    def forward(self, query, key, value, attention_mask: Optional[torch.Tensor],
                attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None,
                packed_seq_params: Optional[PackedSeqParams] = None):
        if attention_bias is not None:
            raise ValueError("attention bias is not supported by the local core attention")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
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
