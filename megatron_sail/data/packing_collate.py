"""One packed row as a MicroBatch: samples back to back, each its own attention segment."""

from __future__ import annotations

from typing import Sequence

import torch

from megatron_sail.data.batches import MicroBatch, concat_visual


def collate_packed(samples: Sequence[dict], seq_length: int, pad_id: int) -> MicroBatch:
    """Concatenate unpadded samples into a ``[1, seq_length]`` row.

    Each sample is ``{tokens, labels, loss_mask, position_ids, pixel_values}`` with 1-D
    tensors of its own length ``n`` and ``pixel_values`` ``[tiles, 3, H, W]`` (any dtype; no
    tiles or None for text); other keys are ignored. Labels arrive shifted within the sample
    by the encoder, so sample ``k``'s last label is its own (padding or its end token), never
    sample ``k + 1``'s first token, and its loss mask there is whatever the encoder set. Position ids are the sample's (0..n-1), so they restart in
    every segment. Trailing padding is one more segment, positions from 0 and outside the
    loss, so ``cu_seqlens`` always ends at ``seq_length``.
    """
    if not samples:
        raise ValueError("a packed row needs at least one sample")
    lengths = []
    for k, s in enumerate(samples):
        n = s["tokens"].numel()
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            if s[key].dim() != 1 or s[key].numel() != n:
                raise ValueError(f"sample {k}: {key} has shape {tuple(s[key].shape)}, "
                                 f"expected ({n},) like its tokens")
        if n < 1:
            raise ValueError(f"sample {k} is empty")
        lengths.append(n)
    used = sum(lengths)
    if used > seq_length:
        raise ValueError(f"samples of {lengths} tokens ({used}) do not fit a row of {seq_length}")

    pad = seq_length - used
    segments = lengths + ([pad] if pad else [])
    cu_seqlens = torch.zeros(len(segments) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(segments, dtype=torch.int32), 0)

    def row(key: str, fill: torch.Tensor) -> torch.Tensor:
        return torch.cat([s[key] for s in samples] + [fill]).unsqueeze(0)

    filler = torch.full((pad,), pad_id, dtype=torch.int64)
    return MicroBatch(
        tokens=row("tokens", filler).long(),
        position_ids=row("position_ids", torch.arange(pad, dtype=torch.int64)).long(),
        labels=row("labels", filler).long(),
        loss_mask=torch.cat([s["loss_mask"].float() for s in samples]
                            + [torch.zeros(pad)]).unsqueeze(0),
        pixel_values=concat_visual(samples, "pixel_values"),
        cu_seqlens=cu_seqlens,
        max_seqlen=max(segments),
        image_grids=concat_visual(samples, "image_grids"),
    )
