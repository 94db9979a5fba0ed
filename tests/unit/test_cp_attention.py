"""All-gather-KV attention on one process: each CP rank's output, with the other ranks'
keys and values handed in as the all-gather would, equals that rank's chunks of full causal
attention - on ordinary rows and on packed rows (per-sample causal segments), with GQA."""

from __future__ import annotations

import pytest
import torch
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_sail.models.attention import LocalCoreAttention
from megatron_sail.models.context_parallel import split_for_rank
from tests.helpers import fp32_tolerance

HEADS, GROUPS, DIM = 4, 2, 8


class _Group:
    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


def _attention(cp: int) -> LocalCoreAttention:
    config = TransformerConfig(num_layers=1, hidden_size=HEADS * DIM, num_attention_heads=HEADS,
                               num_query_groups=GROUPS, kv_channels=DIM, use_cpu_initialization=True,
                               context_parallel_size=cp, attention_dropout=0.0)
    return LocalCoreAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal,
                              attention_type="self")


def _run_cp(monkeypatch, q, k, v, cp, bounds, params):
    """Every rank's output of the CP path; the gather returns all ranks' parts in rank order."""
    outputs = []
    for rank in range(cp):
        def gather(t, tensor_parallel_output_grad=True, group=None, rank=rank):
            for full in (k, v):
                if torch.equal(split_for_rank(full, 0, cp, rank, bounds), t):
                    return torch.cat([split_for_rank(full, 0, cp, r, bounds) for r in range(cp)])
            raise AssertionError("gathered an unknown tensor")

        monkeypatch.setattr(tensor_parallel, "gather_from_sequence_parallel_region", gather)
        attn = _attention(cp)
        attn.cp_group = _Group(cp, rank)
        local = [split_for_rank(t, 0, cp, rank, bounds) for t in (q, k, v)]
        outputs.append(attn(*local, None, packed_seq_params=params))
    return outputs


@pytest.mark.parametrize("cp", [2, 4])
def test_rows_equal_full_causal_attention(megatron_single_rank, monkeypatch, cp):
    g = torch.Generator().manual_seed(0)
    seq, batch = 8 * cp, 2
    q = torch.randn(seq, batch, HEADS, DIM, generator=g)
    k, v = (torch.randn(seq, batch, GROUPS, DIM, generator=g) for _ in range(2))
    full = _attention(1)(q, k, v, None)  # [s, b, h * d]
    tol = fp32_tolerance(float(full.abs().max()), seq, 1)
    for rank, out in enumerate(_run_cp(monkeypatch, q, k, v, cp, None, None)):
        expected = split_for_rank(full, 0, cp, rank)
        assert torch.allclose(out, expected, atol=tol, rtol=0), (out - expected).abs().max()


def test_packed_rows_equal_per_sample_attention(megatron_single_rank, monkeypatch):
    cp, bounds = 2, [0, 8, 12, 28, 32]  # samples of 8, 4, 16 tokens, then padding
    g = torch.Generator().manual_seed(1)
    t = bounds[-1]
    q = torch.randn(t, HEADS, DIM, generator=g)
    k, v = (torch.randn(t, GROUPS, DIM, generator=g) for _ in range(2))
    cu = torch.tensor(bounds, dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                             cu_seqlens_q_padded=cu, cu_seqlens_kv_padded=cu,
                             max_seqlen_q=16, max_seqlen_kv=16)
    full = _attention(1)(q, k, v, None, packed_seq_params=params)  # [t, h * d]
    tol = fp32_tolerance(float(full.abs().max()), 16, 1)
    for rank, out in enumerate(_run_cp(monkeypatch, q, k, v, cp, bounds, params)):
        expected = split_for_rank(full, 0, cp, rank, bounds)
        assert torch.allclose(out, expected, atol=tol, rtol=0), (out - expected).abs().max()
