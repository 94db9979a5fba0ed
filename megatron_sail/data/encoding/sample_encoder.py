"""Record + media -> one training sample (ids, labels, loss mask, positions, uint8 tiles), and
the cheap plan of its length from image headers alone.

Every failure is a ``SampleError`` whose ``kind`` says what to do about it (the data checker
counts by kind; a loader may skip and count): media_missing, media_corrupt,
video_undecodable, malformed_record, too_long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_sail.config import presets
from megatron_sail.config.schema import IMAGE_DECODERS
from megatron_sail.data.encoding.conversation import (
    ChatTokenizer, encode_conversation, encoded_length,
)
from megatron_sail.data.media.errors import MediaError
from megatron_sail.data.media.images import decode_image, probe_image
from megatron_sail.data.media.tiling import dynamic_tiles, num_tiles
from megatron_sail.data.records.reading import (  # noqa: F401 - re-exported for the pipeline
    FileMedia, MediaReader, MemberMedia, SampleError, SampleErrorKind,
)
from megatron_sail.data.records.record import IMAGE_PLACEHOLDER, USER, VIDEO_PLACEHOLDER, Record


DECODERS = tuple(d for d in IMAGE_DECODERS if d != "auto")  # "auto" is resolved by then


@dataclass(frozen=True)
class SamplePlan:
    length: int  # tokens, unpadded
    visual_tokens: int
    num_tiles: int  # image tiles + video frames


@dataclass
class EncodedRecord:
    tokens: torch.Tensor  # int64 [n]
    labels: torch.Tensor  # int64 [n]
    loss_mask: torch.Tensor  # float32 [n]
    position_ids: torch.Tensor  # int64 [n]
    pixel_values: torch.Tensor  # uint8 [tiles, 3, S, S], placeholder order; [0, 3, S, S] for text
    num_visual_tokens: int
    where: str  # the record's file:line
    # AnyRes: pixel_values are then flattened patches [P, 3 * 14 * 14] of images (and video
    # frames) with these (rows, cols) patch grids, int64 [n, 2]
    image_grids: torch.Tensor | None = None


def media_order(record: Record) -> list[str]:
    """Media references in the order their placeholders appear (images in list order)."""
    images = iter(record.images)
    order = []
    for turn in record.turns:
        if turn.role != USER:
            continue
        i = 0
        while True:
            hits = [(turn.text.find(p, i), p) for p in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)]
            hits = [(pos, p) for pos, p in hits if pos >= 0]
            if not hits:
                break
            pos, p = min(hits)
            order.append(next(images) if p == IMAGE_PLACEHOLDER else record.video)
            i = pos + len(p)
    return order


class SampleEncoder:
    """Turns records into samples at fixed image/video settings. ``tokens_per_tile`` defaults
    to SAIL-ViT's (image_size / 14 patches per side, 2x2 pixel shuffle): 256 at 448 px.
    With ``seq_length`` set, longer samples raise SampleError(too_long)."""

    def __init__(self, tokenizer: ChatTokenizer, image_size: int = 448, max_tiles: int = 12,
                 num_frames: int = 16, min_tiles: int = 1, use_thumbnail: bool = True,
                 tokens_per_tile: int | None = None, seq_length: int | None = None,
                 system_message: str | None = None, video_backend: str = "auto",
                 anyres: bool = False, anyres_max_tokens: int = 4096,
                 anyres_min_tokens: int = 4, patch_size: int = 14,
                 image_decoder: str = "pillow", chat_template: str = "chatml") -> None:
        if image_decoder not in DECODERS:
            raise ValueError(f"image_decoder must be one of {DECODERS}, got {image_decoder!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.min_tiles, self.max_tiles, self.use_thumbnail = min_tiles, max_tiles, use_thumbnail
        self.num_frames = num_frames
        self.tokens_per_tile = (tokens_per_tile if tokens_per_tile is not None
                                else presets.tokens_per_tile(image_size, patch_size))
        self.seq_length = seq_length
        self.system_message = system_message
        self.chat_template = chat_template
        self.video_backend = video_backend
        # AnyRes: each image at about its native resolution (multiples of 2 patches a side,
        # within the token budget) instead of 448 px tiles; video frames stay one tile each.
        self.anyres = anyres
        self.anyres_max_tokens, self.anyres_min_tokens = anyres_max_tokens, anyres_min_tokens
        self.patch_size = patch_size
        # pillow | dali-cpu (libjpeg-turbo: the same pixels) | dali-gpu (nvJPEG, UNVERIFIED)
        self.image_decoder = image_decoder

    # -- planning (no pixel decoding) -------------------------------------------------------
    def image_tiles(self, width: int, height: int) -> int:
        return num_tiles(width, height, self.image_size, self.min_tiles, self.max_tiles, self.use_thumbnail)

    def plan_from_sizes(self, record: Record, image_sizes: Sequence[tuple[int, int]],
                        video_frames: int | None = None) -> SamplePlan:
        """The plan from stored metadata: (width, height) per image in ``record.images`` order
        and the video's decoded frame count (None: ``num_frames``)."""
        if len(image_sizes) != len(record.images):
            raise SampleError(record.where, f"{len(image_sizes)} image sizes for {len(record.images)} images",
                              SampleErrorKind.MALFORMED_RECORD)
        frames = (video_frames or self.num_frames) if record.video is not None else 0
        if self.anyres:
            tiles = [1] * len(image_sizes)
            image_tokens = [self.anyres_tokens(w, h) for w, h in image_sizes]
        else:
            tiles = [self.image_tiles(w, h) for w, h in image_sizes]
            image_tokens = [t * self.tokens_per_tile for t in tiles]
        try:
            length = encoded_length(self.tokenizer, record.turns, tiles,
                                    frames, self.tokens_per_tile, self.system_message,
                                    chat_template=self.chat_template,
                                    image_tokens=image_tokens)
        except ValueError as exc:
            raise SampleError(record.where, str(exc), SampleErrorKind.MALFORMED_RECORD) from None
        visual = sum(image_tokens) + frames * self.tokens_per_tile
        plan = SamplePlan(length, visual, sum(tiles) + frames)
        self._check_length(record, plan.length, plan.visual_tokens)
        return plan

    def anyres_tokens(self, width: int, height: int) -> int:
        from megatron_sail.data.media.anyres import anyres_tokens

        return anyres_tokens(width, height, self.anyres_max_tokens, self.anyres_min_tokens)

    def image_sizes(self, record: Record, media: MediaReader) -> list[tuple[int, int]]:
        """(width, height) of each image from its header."""
        sizes = []
        for ref in record.images:
            data = media.read(ref)
            try:
                sizes.append(probe_image(data, media.name(ref)))
            except MediaError as exc:
                raise SampleError(exc.source, exc.reason, SampleErrorKind.MEDIA_CORRUPT) from None
        return sizes

    def plan(self, record: Record, media: MediaReader) -> SamplePlan:
        """Length and visual tokens from image headers; videos count ``num_frames`` frames."""
        return self.plan_from_sizes(record, self.image_sizes(record, media))

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, record: Record, media: MediaReader) -> EncodedRecord:
        pixels: dict[str, torch.Tensor] = {}
        for ref in record.images:
            data = media.read(ref)
            try:
                image = self._decode_image(data, media.name(ref))
            except MediaError as exc:
                raise SampleError(exc.source, exc.reason, SampleErrorKind.MEDIA_CORRUPT) from None
            if self.anyres:
                from megatron_sail.data.media.anyres import anyres_image

                pixels[ref] = anyres_image(image, self.anyres_max_tokens,
                                           self.anyres_min_tokens)[None]
            else:
                pixels[ref] = dynamic_tiles(image, self.image_size, self.min_tiles,
                                            self.max_tiles, self.use_thumbnail)
        if record.video is not None:
            pixels[record.video] = self.decode_video(media, record.video)

        frames = pixels[record.video].shape[0] if record.video is not None else 0
        if self.anyres:
            image_tiles = [1] * len(record.images)
            merge = 2 * self.patch_size
            image_tokens = [pixels[r].shape[-2] // merge * (pixels[r].shape[-1] // merge)
                            for r in record.images]
        else:
            image_tiles = [pixels[ref].shape[0] for ref in record.images]
            image_tokens = None
        try:
            enc = encode_conversation(self.tokenizer, record.turns, image_tiles,
                                      frames, record.loss, self.tokens_per_tile, self.system_message,
                                      chat_template=self.chat_template,
                                      image_tokens=image_tokens)
        except ValueError as exc:
            raise SampleError(record.where, str(exc), SampleErrorKind.MALFORMED_RECORD) from None
        self._check_length(record, len(enc.tokens), enc.num_visual_tokens)
        ordered = [pixels[ref] for ref in media_order(record)]
        if self.anyres:
            return self._anyres_record(enc, ordered, record.where)
        s = self.image_size
        pixel_values = torch.cat(ordered) if ordered else torch.empty((0, 3, s, s), dtype=torch.uint8)
        return EncodedRecord(enc.tokens, enc.labels, enc.loss_mask, enc.position_ids, pixel_values,
                             enc.num_visual_tokens, record.where)

    def _anyres_record(self, enc, ordered: list[torch.Tensor], where: str) -> EncodedRecord:
        """Images and frames as flattened patches with their grids (the ViT packs them)."""
        from megatron_sail.data.media.anyres import patchify

        patches, grids = [], []
        for block in ordered:  # [n, 3, H, W]: one AnyRes image, or a video's frames
            for image in block:
                p, grid = patchify(image, self.patch_size)
                patches.append(p)
                grids.append(grid)
        values = 3 * self.patch_size ** 2
        pixel_values = torch.cat(patches) if patches else torch.empty((0, values), dtype=torch.uint8)
        image_grids = torch.tensor(grids, dtype=torch.int64).reshape(-1, 2)
        return EncodedRecord(enc.tokens, enc.labels, enc.loss_mask, enc.position_ids, pixel_values,
                             enc.num_visual_tokens, where, image_grids)

    def _decode_image(self, data: bytes, source: str):
        if self.image_decoder == "pillow":
            return decode_image(data, source)
        from PIL import Image

        from megatron_sail.data.media.images import decode_images_dali

        device = "cpu" if self.image_decoder == "dali-cpu" else "mixed"
        (pixels,) = decode_images_dali([data], [source], device=device)
        return Image.fromarray(pixels)

    def decode_video(self, media: MediaReader, ref: str) -> torch.Tensor:
        """uint8 [frames, 3, S, S], one tile per frame."""
        from megatron_sail.data.media.video import decode_video, video_tiles

        data = media.read(ref)
        try:
            frames = decode_video(data, media.name(ref), num_frames=self.num_frames, backend=self.video_backend)
        except MediaError as exc:
            raise SampleError(exc.source, exc.reason, SampleErrorKind.VIDEO_UNDECODABLE) from None
        return video_tiles(frames, self.image_size)

    # -- helpers ----------------------------------------------------------------------------
    def _check_length(self, record: Record, length: int, visual: int) -> None:
        if self.seq_length is not None and length > self.seq_length:
            raise SampleError(record.where, f"needs {length} tokens ({visual} visual, {length - visual} "
                              f"text) but seq_length is {self.seq_length}", SampleErrorKind.TOO_LONG)
