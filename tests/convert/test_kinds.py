"""Mapping kinds: exact layouts, inverse pairs, and the direct-read pieces agreeing with the
full conversion for every row range a TP shard can have."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.convert.kinds import (
    QKV, ZEROS, Direct, FusedQKV, GatedMLP, PaddedVocab, Reshaped, Tied,
)

GEN = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=GEN)


def test_qkv_interleaves_query_groups():
    """GQA with 4 query heads in 2 groups, head dim 3: rows go [q0 q1 k0 v0 | q2 q3 k1 v1]."""
    heads, groups, d, hidden = 4, 2, 3, 5
    q, k, v = rand(heads * d, hidden), rand(groups * d, hidden), rand(groups * d, hidden)
    m = QKV(megatron="x", hf=("q", "k", "v"), heads=heads, groups=groups, head_dim=d,
            trailing=(hidden,))
    fused = m.to_megatron([q, k, v])

    def head(t, i):
        return t[i * d:(i + 1) * d]

    expected = torch.cat([head(q, 0), head(q, 1), head(k, 0), head(v, 0),
                          head(q, 2), head(q, 3), head(k, 1), head(v, 1)])
    assert torch.equal(fused, expected)
    back = m.to_hf(fused)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))
    # A column-parallel TP=2 split keeps whole groups: rank 1 holds group 1 only.
    rank1 = fused.chunk(2)[1]
    assert torch.equal(rank1, torch.cat([head(q, 2), head(q, 3), head(k, 1), head(v, 1)]))


def test_fused_vit_qkv_splits_thirds_then_interleaves_per_head():
    heads, d, c = 3, 2, 4
    qkv = rand(3 * heads * d, c)
    q, k, v = qkv.chunk(3)
    m = FusedQKV(megatron="x", hf=("qkv",), heads=heads, head_dim=d, trailing=(c,))
    fused = m.to_megatron([qkv])
    rows = [slice(h * d, (h + 1) * d) for h in range(heads)]
    expected = torch.cat([torch.cat([q[r], k[r], v[r]]) for r in rows])
    assert torch.equal(fused, expected)
    assert torch.equal(m.to_hf(fused)[0], qkv)


def test_gated_mlp_padded_vocab_tied_reshaped():
    gate, up = rand(6, 4), rand(6, 4)
    g = GatedMLP(megatron="x", hf=("g", "u"), ffn=6, trailing=(4,))
    assert torch.equal(g.to_megatron([gate, up]), torch.cat([gate, up]))
    assert all(torch.equal(a, b) for a, b in zip(g.to_hf(torch.cat([gate, up])), (gate, up)))

    emb = rand(300, 8)
    p = PaddedVocab(megatron="e", hf=("embed",), rows=300, padded_rows=384, cols=8)
    padded = p.to_megatron([emb])
    assert padded.shape == (384, 8) and torch.equal(padded[:300], emb) and not padded[300:].any()
    assert torch.equal(p.to_hf(padded)[0], emb)

    t = Tied(megatron="e", hf=("embed",), inner=p, alias="lm_head")
    assert t.export_names() == ("embed", "lm_head") and t.hf_names() == ("embed",)
    out = t.to_hf(padded)
    assert torch.equal(out[0], emb) and torch.equal(out[1], emb)

    pos = rand(1, 16, 8)
    r = Reshaped(megatron="p", hf=("pos",), shape=(16, 8), hf_shape=(1, 16, 8))
    assert torch.equal(r.to_megatron([pos]), pos[0]) and torch.equal(r.to_hf(pos[0])[0], pos)


def test_stacked_names():
    m = Direct(megatron="a.layers.w", hf=("x.{layer}.w",), layers=3, shape=(2,))
    assert m.indices() == [(0,), (1,), (2,)] and m.hf_names((2,)) == ("x.2.w",)
    assert m.stacked == (3,)
    e = Direct(megatron="a.layers.experts.w", hf=("x.{layer}.e.{expert}.w",), layers=2,
               experts=3, shape=(2,))
    assert e.stacked == (2, 3) and len(e.indices()) == 6 and e.indices()[4] == (1, 1)
    assert e.hf_names((1, 2)) == ("x.1.e.2.w",)
    plain = Direct(megatron="b", hf=("y",), shape=(2,))
    assert plain.indices() == [()] and plain.hf_names() == ("y",)


MAPPINGS = {
    "direct": (Direct(megatron="x", hf=("a",), shape=(12, 3)), [(12, 3)]),
    "reshaped": (Reshaped(megatron="x", hf=("a",), shape=(8, 3), hf_shape=(1, 8, 3)), [(1, 8, 3)]),
    "padded": (PaddedVocab(megatron="x", hf=("a",), rows=10, padded_rows=16, cols=3), [(10, 3)]),
    "gated": (GatedMLP(megatron="x", hf=("g", "u"), ffn=6, trailing=(3,)), [(6, 3), (6, 3)]),
    "qkv_gqa": (QKV(megatron="x", hf=("q", "k", "v"), heads=4, groups=2, head_dim=2, trailing=(3,)),
                [(8, 3), (4, 3), (4, 3)]),
    "qkv_bias": (QKV(megatron="x", hf=("q", "k", "v"), heads=4, groups=4, head_dim=2, trailing=()),
                 [(8,), (8,), (8,)]),
    "fused_qkv": (FusedQKV(megatron="x", hf=("qkv",), heads=2, head_dim=2, trailing=(3,)),
                  [(12, 3)]),
}


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_pieces_read_the_same_rows_as_the_conversion(name):
    """Direct reads into a shard must give exactly the rows of the converted tensor, for
    every contiguous row range (TP shards are such ranges)."""
    mapping, shapes = MAPPINGS[name]
    hf = [rand(*s) for s in shapes]
    full = mapping.to_megatron(hf)
    assert tuple(full.shape) == mapping.megatron_shape()
    assert [tuple(t.shape) for t in mapping.to_hf(full)] == [tuple(s) for s in mapping.hf_shapes()]
    assert all(torch.equal(a, b) for a, b in zip(mapping.to_hf(full), hf))
    rows = full.shape[0]
    for start in range(rows):
        for stop in range(start + 1, rows + 1):
            flat = [t.reshape(-1, *full.shape[1:]) for t in hf]
            parts = [torch.zeros(n, *full.shape[1:]) if i == ZEROS else flat[i][r:r + n]
                     for i, r, n in mapping.pieces(start, stop)]
            assert torch.equal(torch.cat(parts), full[start:stop]), (start, stop)
