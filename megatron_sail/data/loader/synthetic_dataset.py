"""Map-style dataset over the synthetic captioning generator.

Each item is a pure function of (seed, split, index), so any rank or worker
can produce any sample without coordination and restarts reproduce exactly.
"""

from __future__ import annotations

import torch

from megatron_sail.data.encoding.chat import ChatTokenizer, encode_sample
from megatron_sail.data.loader.images import to_pixel_values
from megatron_sail.data.records.synthetic import make_sample

SPLITS: tuple[str, ...] = ("train", "val")
# Effectively infinite; kept within int32 so samplers can index it safely.
DATASET_LENGTH = 2**31


def split_seed(seed: int, split: str) -> int:
    """Injective (seed, split) -> generator seed, so splits never share a stream."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return seed * len(SPLITS) + SPLITS.index(split)


class SyntheticCaptionDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        tokenizer: ChatTokenizer,
        seed: int,
        image_size: int,
        num_image_tokens: int,
        seq_length: int,
        split: str = "train",
    ) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self.split = split
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.seq_length = seq_length
        self._generator_seed = split_seed(seed, split)

    def __len__(self) -> int:
        return DATASET_LENGTH

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < DATASET_LENGTH:
            raise IndexError(f"index {index} out of range [0, {DATASET_LENGTH})")
        sample = make_sample(self._generator_seed, index, self.image_size)
        encoded = encode_sample(
            self.tokenizer, sample.question, sample.answer, self.num_image_tokens, self.seq_length, num_images=1
        )
        return {
            "tokens": encoded.tokens,
            "labels": encoded.labels,
            "loss_mask": encoded.loss_mask,
            "position_ids": encoded.position_ids,
            # One tile per sample: [num_tiles=1, 3, H, W].
            "pixel_values": to_pixel_values(sample.image, self.image_size).unsqueeze(0),
        }


class MismatchedImages(torch.utils.data.Dataset):
    """Sample ``i`` with the image of sample ``i + 1``: an evaluation control. A model that
    reads the images scores clearly worse here than on the matched samples."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = dict(self.dataset[index])
        item["pixel_values"] = self.dataset[index + 1]["pixel_values"]
        return item
