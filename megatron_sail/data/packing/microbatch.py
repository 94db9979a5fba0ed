"""The micro-batch the model steps on, unpacked collation, and pixel normalisation on the
device. With the loss summed over tokens and normalised by the global token count, the update
does not depend on how a global batch is cut into micro-batches or ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class MicroBatch:
    tokens: torch.Tensor  # [b, s] int64
    position_ids: torch.Tensor  # [b, s]
    labels: torch.Tensor  # [b, s]
    loss_mask: torch.Tensor  # [b, s] float, 1 where the loss counts
    pixel_values: Optional[torch.Tensor]  # [tiles, 3, H, W] for all samples, in order
    # Packed rows (b == 1): sample boundaries in the row, int32 [n + 1], starting at 0 and
    # ending at s (trailing padding is a segment of its own, outside the loss); position ids
    # restart at 0 in every segment. None: one sample per row, causal over the whole row.
    cu_seqlens: Optional[torch.Tensor] = None
    max_seqlen: Optional[int] = None
    # AnyRes images: pixel_values are then flattened patches [P, 3 * p * p] (see ``patchify``)
    # of images with these (rows, cols) patch grids, int64 [n, 2]. None: fixed-size tiles.
    image_grids: Optional[torch.Tensor] = None
    # Samples padded to a multiple of 2 x CP (context parallelism): ``cu_seqlens`` are then the
    # padded segments (attention, positions and the CP split follow them), these the cumulative
    # real lengths (Transformer Engine's cu_seqlens beside cu_seqlens_padded), int32 [n + 1].
    # None: no sample was padded.
    cu_seqlens_unpadded: Optional[torch.Tensor] = None

    def to(self, device: torch.device) -> "MicroBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(move(self.tokens), move(self.position_ids), move(self.labels),
                          move(self.loss_mask), move(self.pixel_values), move(self.cu_seqlens),
                          self.max_seqlen, self.image_grids, move(self.cu_seqlens_unpadded))


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 tiles [N, 3, H, W] or AnyRes patches [P, 3 * p * p] -> float32 ImageNet-normalised,
    where they are (the loader ships uint8: a quarter of the bytes, normalised on the GPU)."""
    from megatron_sail.data.media.tiling import normalize

    if pixels.dim() == 2:
        n, values = pixels.shape
        return normalize(pixels.reshape(n, 3, values // 3, 1)).reshape(n, values)
    return normalize(pixels)


def concat_visual(samples: list[dict], key: str) -> Optional[torch.Tensor]:
    """``pixel_values`` or ``image_grids`` of all samples in order; text-only samples carry
    None or an empty tensor. None when no sample has any."""
    parts = [v for v in (s.get(key) for s in samples) if v is not None and len(v)]
    return torch.cat(parts) if parts else None


def collate(samples: list[dict]) -> MicroBatch:
    """Samples of ``seq_length`` tokens each -> one [b, s] micro-batch."""
    return MicroBatch(
        tokens=torch.stack([s["tokens"] for s in samples]),
        position_ids=torch.stack([s["position_ids"] for s in samples]),
        labels=torch.stack([s["labels"] for s in samples]),
        loss_mask=torch.stack([s["loss_mask"] for s in samples]).float(),
        pixel_values=concat_visual(samples, "pixel_values"),
        image_grids=concat_visual(samples, "image_grids"),
    )
