"""Context-parallel chunking: every token lands on exactly one rank, the load-balanced
layout (rank r holds chunks r and 2 CP - 1 - r, per packed segment), and unsplit inverts
split; packed rows pad every sample to a multiple of 2 x CP and carry both cu_seqlens."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.data.packing.collate import collate_packed
from megatron_sail.models.context_parallel import (chunk_indices, local_query_chunks,
                                                   split_for_rank, unsplit)


def test_load_balanced_chunks_of_a_row():
    # 16 tokens, CP=2: chunks of 4; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
    assert chunk_indices(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert chunk_indices(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]


def test_packed_segments_are_chunked_one_by_one():
    bounds = [0, 4, 12]  # segments of 4 and 8 tokens, CP=2
    assert chunk_indices(12, 2, 0, bounds).tolist() == [0, 3, 4, 5, 10, 11]
    assert chunk_indices(12, 2, 1, bounds).tolist() == [1, 2, 6, 7, 8, 9]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
@pytest.mark.parametrize("bounds", [None, "packed"])
def test_split_then_unsplit_is_the_identity(cp, bounds):
    seq = 2 * cp * 6
    if bounds == "packed":
        bounds = [0, 2 * cp, 2 * cp * 4, seq]
    x = torch.randn(2, seq, 3)
    parts = [split_for_rank(x, 1, cp, r, bounds) for r in range(cp)]
    assert all(p.shape == (2, seq // cp, 3) for p in parts)
    together = torch.cat([chunk_indices(seq, cp, r, bounds) for r in range(cp)])
    assert sorted(together.tolist()) == list(range(seq))  # each token on exactly one rank
    assert torch.equal(unsplit(parts, 1, bounds), x)


def test_uneven_segment_is_refused():
    with pytest.raises(ValueError, match="pad it to a multiple of 4"):
        chunk_indices(8, 2, 0, [0, 3, 8])


def test_query_chunks_see_their_causal_prefix():
    # rank 1 of CP=2 on segments [0, 4) and [4, 12): chunk 1 of each, then chunk 2 of each
    assert local_query_chunks(6, 2, 1, [0, 4, 12]) == [(0, 1, 0, 2), (1, 1, 0, 3),
                                                       (2, 2, 4, 8), (4, 2, 4, 10)]


def _sample(n: int, first: int) -> dict:
    tokens = torch.arange(first, first + n)
    return {"tokens": tokens, "labels": tokens + 1, "loss_mask": torch.ones(n),
            "position_ids": torch.arange(n), "pixel_values": None}


def test_packed_samples_padded_to_2cp_with_real_and_padded_cu_seqlens():
    row = collate_packed([_sample(5, 100), _sample(2, 200)], seq_length=16, pad_id=0,
                         segment_multiple=4)
    assert row.cu_seqlens.tolist() == [0, 8, 12, 16]  # 5 -> 8, 2 -> 4, trailing 4
    assert row.cu_seqlens_unpadded.tolist() == [0, 5, 7, 11]  # real lengths, then the tail
    assert row.max_seqlen == 8
    assert row.tokens[0, :8].tolist() == [100, 101, 102, 103, 104, 0, 0, 0]
    assert row.loss_mask[0].tolist() == [1] * 5 + [0] * 3 + [1] * 2 + [0] * 6
    assert row.position_ids[0].tolist() == list(range(8)) + list(range(4)) + list(range(4))


def test_unpadded_rows_are_unchanged():
    row = collate_packed([_sample(5, 100), _sample(2, 200)], seq_length=16, pad_id=0)
    assert row.cu_seqlens.tolist() == [0, 5, 7, 16]
    assert row.cu_seqlens_unpadded is None
