"""The built-in synthetic shapes data (``data.dataset=synthetic``) as a source of the multimodal
loader: records with one in-memory PNG each, encoded by the same ``SampleEncoder`` (chat
template, tiles, uint8 pixels) as every real dataset, packed when ``data.packing`` asks.

Sample ``i`` of a split is a pure function of (seed, split, i), so any rank or worker produces
any sample without coordination and restarts reproduce exactly. The generator's draws are
already random, so the blend schedule reads the source in index order (``in_order``): no
permutation of its 2**31 - 1 samples is ever built.
"""

from __future__ import annotations

import io

from PIL import Image

from megatron_sail.config.loader import ConfigError
from megatron_sail.data.encoding.sample_encoder import (
    EncodedRecord, MemberMedia, SampleEncoder, SampleError, SampleErrorKind, SamplePlan,
)
from megatron_sail.data.records.record import ASSISTANT, IMAGE_PLACEHOLDER, USER, Record, Turn
from megatron_sail.data.records.synthetic import make_sample

SPLITS: tuple[str, ...] = ("train", "val")
# Effectively infinite; within int32 so any index arithmetic stays safe.
SYNTHETIC_LENGTH = 2**31 - 1
IMAGE_MEMBER = "image.png"


def split_seed(seed: int, split: str) -> int:
    """Injective (seed, split) -> generator seed, so splits never share a stream."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return seed * len(SPLITS) + SPLITS.index(split)


def _png(pixels) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")  # lossless: the decoder sees these pixels
    return out.getvalue()


class SyntheticSource:
    """Shapes-and-colours captions of one split. ``mismatched``: sample ``i`` carries the image
    of sample ``i + 1`` (an evaluation control: a model that reads the images scores clearly
    worse on it than on the matched samples)."""

    in_order = True  # generated samples are already in random order

    def __init__(self, seed: int, split: str, image_size: int, mismatched: bool = False) -> None:
        self.generator_seed = split_seed(seed, split)
        self.split, self.image_size, self.mismatched = split, image_size, mismatched
        self.name = f"synthetic-{split}" + ("-mismatched-images" if mismatched else "")

    def __len__(self) -> int:
        return SYNTHETIC_LENGTH

    def _check(self, index: int) -> None:
        if not 0 <= index < SYNTHETIC_LENGTH:
            raise IndexError(f"index {index} out of range [0, {SYNTHETIC_LENGTH})")

    def record(self, index: int) -> Record:
        """The conversation of sample ``index``: its image, then its question; its caption."""
        self._check(index)
        return self._record(index, make_sample(self.generator_seed, index, self.image_size))

    def _record(self, index: int, sample) -> Record:
        return Record(source=self.name, line=index,
                      turns=(Turn(USER, f"{IMAGE_PLACEHOLDER}\n{sample.question}"),
                             Turn(ASSISTANT, sample.answer)),
                      images=(IMAGE_MEMBER,))

    def media(self, index: int, sample=None) -> MemberMedia:
        """The image the record of ``index`` is shown with (the next sample's when mismatched);
        ``sample``: sample ``index`` when the caller has drawn it already."""
        self._check(index)
        image_index = index + 1 if self.mismatched else index
        if sample is None or image_index != index:
            sample = make_sample(self.generator_seed, image_index, self.image_size)
        return MemberMedia({IMAGE_MEMBER: _png(sample.image)}, f"{self.name}:{index}")

    def plan(self, index: int, encoder: SampleEncoder) -> SamplePlan:
        # Every image is image_size square: no PNG needed for its size.
        try:
            return encoder.plan_from_sizes(self.record(index),
                                           [(self.image_size, self.image_size)])
        except SampleError as exc:
            # All generated samples are about this long: skipping them would never end.
            if exc.kind is SampleErrorKind.TOO_LONG:
                raise ConfigError(f"data.seq_length={encoder.seq_length} is too short for the "
                                  f"synthetic data: sample {index} {exc.reason.split(' but ')[0]}"
                                  ) from None
            raise

    def encode(self, index: int, encoder: SampleEncoder) -> EncodedRecord:
        self._check(index)
        sample = make_sample(self.generator_seed, index, self.image_size)  # drawn once
        return encoder.encode(self._record(index, sample), self.media(index, sample))


__all__ = ["SPLITS", "SYNTHETIC_LENGTH", "SyntheticSource", "split_seed"]
