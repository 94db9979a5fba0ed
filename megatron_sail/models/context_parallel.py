"""Context parallelism (CP): which tokens of a sequence each CP rank holds.

Causal attention costs more for late tokens than for early ones, so a sequence is cut into
2 x CP equal chunks and CP rank ``r`` holds chunks ``r`` and ``2 CP - 1 - r`` (an early and a
late one: the same work on every rank). A packed row is cut so sample by sample: every
segment of ``cu_seqlens`` (padded to a multiple of 2 x CP by the packer) contributes its
chunks ``r`` and ``2 CP - 1 - r``, in segment order. This is the layout Megatron-Core's
rotary embedding (``get_pos_emb_on_this_cp_rank``, ``_apply_rotary_pos_emb_thd``) and
Transformer Engine's CP attention expect, so one split serves both specs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def _bounds(seq_len: int, cu_seqlens: Optional[Sequence[int]]) -> list[int]:
    bounds = [0, seq_len] if cu_seqlens is None else [int(b) for b in cu_seqlens]
    if bounds[0] != 0 or bounds[-1] != seq_len:
        raise ValueError(f"segment bounds {bounds} do not cover the {seq_len} tokens")
    return bounds


def chunk_indices(seq_len: int, cp: int, rank: int,
                  cu_seqlens: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Global positions (int64) of the tokens CP rank ``rank`` holds, in its local order."""
    if not 0 <= rank < cp:
        raise ValueError(f"CP rank {rank} is outside 0..{cp - 1}")
    bounds = _bounds(seq_len, cu_seqlens)
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if (end - start) % (2 * cp):
            raise ValueError(f"a segment of {end - start} tokens does not split into 2 x CP = "
                             f"{2 * cp} chunks (pad it to a multiple of {2 * cp})")
        c = (end - start) // (2 * cp)
        for chunk in (rank, 2 * cp - 1 - rank):
            parts.append(torch.arange(start + chunk * c, start + (chunk + 1) * c))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def split_for_rank(tensor: torch.Tensor, dim: int, cp: int, rank: int,
                   cu_seqlens: Optional[Sequence[int]] = None) -> torch.Tensor:
    """This CP rank's tokens of ``tensor`` along ``dim`` (the full sequence)."""
    if cp == 1:
        return tensor
    index = chunk_indices(tensor.shape[dim], cp, rank, cu_seqlens).to(tensor.device)
    return tensor.index_select(dim, index)


def gathered_order(seq_len: int, cp: int,
                   cu_seqlens: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Permutation that puts the concatenation of all ranks' local tokens (rank-major, as an
    all-gather returns them) back into global order: ``gathered[order] == full``."""
    positions = torch.cat([chunk_indices(seq_len, cp, r, cu_seqlens) for r in range(cp)])
    return torch.argsort(positions)


def unsplit(parts: Sequence[torch.Tensor], dim: int,
            cu_seqlens: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Inverse of ``split_for_rank``: every rank's part (rank order) -> the full sequence."""
    gathered = torch.cat(list(parts), dim)
    order = gathered_order(gathered.shape[dim], len(parts), cu_seqlens).to(gathered.device)
    return gathered.index_select(dim, order)


def local_query_chunks(local_len: int, cp: int, rank: int,
                       cu_seqlens: Optional[Sequence[int]] = None):
    """For attention on CP rank ``rank``: per chunk it holds, ``(local_start, length,
    segment_start, key_end)`` - its queries are local tokens ``[local_start, local_start +
    length)``, and causally they see the segment's global tokens ``[segment_start, key_end)``,
    the chunk itself being the last ``length`` of them."""
    seq_len = local_len * cp
    bounds = _bounds(seq_len, cu_seqlens)
    out, local = [], 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        c = (end - start) // (2 * cp)
        for chunk in (rank, 2 * cp - 1 - rank):
            if c:
                out.append((local, c, start, start + (chunk + 1) * c))
            local += c
    if local != local_len:
        raise ValueError(f"{local_len} local tokens do not match the segments {bounds} at "
                         f"CP={cp}")
    return out
