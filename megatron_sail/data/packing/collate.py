"""One packed row as a MicroBatch: samples back to back, each its own attention segment."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch

from megatron_sail.data.packing.microbatch import MicroBatch, concat_visual
from megatron_sail.data.packing.plan import SampleInfo


def padded_length(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def padded_infos(info: Callable[[int], Optional[SampleInfo]],
                 multiple: int) -> Callable[[int], Optional[SampleInfo]]:
    """The planner's view of the sample stream when samples are padded to ``multiple``."""
    if multiple == 1:
        return info

    def padded(position: int) -> Optional[SampleInfo]:
        found = info(position)
        return None if found is None else replace(found,
                                                  length=padded_length(found.length, multiple))
    return padded


def _pad_sample(sample: dict, length: int, pad_id: int) -> dict:
    """Pad a sample's tokens to ``length``: pad tokens outside the loss, positions going on."""
    n = sample["tokens"].numel()
    extra = length - n
    if extra == 0:
        return sample
    out = dict(sample)
    fill = torch.full((extra,), pad_id, dtype=torch.int64)
    out["tokens"] = torch.cat([sample["tokens"].long(), fill])
    out["labels"] = torch.cat([sample["labels"].long(), fill])
    out["loss_mask"] = torch.cat([sample["loss_mask"].float(), torch.zeros(extra)])
    out["position_ids"] = torch.cat([sample["position_ids"].long(),
                                     torch.arange(n, length, dtype=torch.int64)])
    return out


def collate_packed(samples: Sequence[dict], seq_length: int, pad_id: int,
                   segment_multiple: int = 1) -> MicroBatch:
    """Concatenate unpadded samples into a ``[1, seq_length]`` row.

    Each sample is ``{tokens, labels, loss_mask, position_ids, pixel_values}`` with 1-D
    tensors of its own length ``n`` and ``pixel_values`` ``[tiles, 3, H, W]`` (any dtype; no
    tiles or None for text); other keys are ignored. Labels arrive shifted within the sample
    by the encoder, so sample ``k``'s last label is its own (padding or its end token), never
    sample ``k + 1``'s first token, and its loss mask there is whatever the encoder set. Position ids are the sample's (0..n-1), so they restart in
    every segment. Trailing padding is one more segment, positions from 0 and outside the
    loss, so ``cu_seqlens`` always ends at ``seq_length``.

    ``segment_multiple`` > 1 (context parallelism: 2 x CP): every sample is padded to a
    multiple of it (pad tokens after its end, outside the loss; causal attention keeps them
    from changing any real token), ``cu_seqlens`` are the padded segments and
    ``cu_seqlens_unpadded`` the real ones.
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
    real = lengths
    if segment_multiple > 1:
        lengths = [padded_length(n, segment_multiple) for n in real]
        samples = [_pad_sample(s, n, pad_id) for s, n in zip(samples, lengths)]
    used = sum(lengths)
    if used > seq_length:
        raise ValueError(f"samples of {lengths} tokens ({used}) do not fit a row of {seq_length}")

    pad = seq_length - used
    if pad % segment_multiple:
        raise ValueError(f"the row's trailing padding ({pad}) is not a multiple of "
                         f"{segment_multiple}: seq_length {seq_length} must be one")
    segments = lengths + ([pad] if pad else [])
    cu_seqlens = _cumulative(segments)
    unpadded = None
    if segment_multiple > 1:  # always both under CP: TE's THD attention reads the padded ones
        # Transformer Engine's convention: cumulative real lengths (the trailing padding
        # segment counted whole), so they end short of seq_length.
        unpadded = _cumulative(real + ([pad] if pad else []))

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
        cu_seqlens_unpadded=unpadded,
    )


def _cumulative(lengths: list[int]) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu
