"""Random access to the samples of one dataset of a blend: a JSONL file or a shard directory.

A source answers two questions about sample ``i``: its plan (length and visual tokens, from
metadata: image headers for JSONL, the index for shards) and its encoding (decoded media,
tokens). Both raise ``RecordError`` / ``SampleError`` for a bad sample; the loader skips and
counts those. Sources are picklable (loader workers get copies).
"""

from __future__ import annotations

import os
from typing import Protocol, Union

import numpy as np

from megatron_sail.data.records.record import Record, RecordError, media_base, parse_line
from megatron_sail.data.encoding.sample_encoder import (
    EncodedRecord, FileMedia, SampleEncoder, SamplePlan,
)
from megatron_sail.data.records.shards import INDEX_FILE, ShardReader


class SampleSource(Protocol):
    name: str
    in_order: bool  # samples already in random order: the blend reads them by index, unshuffled

    def __len__(self) -> int: ...
    def plan(self, index: int, encoder: SampleEncoder) -> SamplePlan: ...
    def encode(self, index: int, encoder: SampleEncoder) -> EncodedRecord: ...


class JsonlSource:
    """One record per non-blank line; line offsets are read once, lines on demand."""

    in_order = False

    def __init__(self, path: str, root: str | None = None, name: str | None = None) -> None:
        self.path = os.path.abspath(path)
        self.name = name or os.path.basename(path)
        self.base_dir = media_base(self.path, root)
        lines, offsets, offset = [], [], 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if raw.strip():
                    lines.append(line_no)
                    offsets.append(offset)
                offset += len(raw)
        self._lines = np.asarray(lines, dtype=np.int64)
        self._offsets = np.asarray(offsets + [offset], dtype=np.int64)
        self._media = FileMedia(None)  # parse_record resolves paths against base_dir

    def __len__(self) -> int:
        return len(self._lines)

    def record(self, index: int) -> Record:
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        with open(self.path, "rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        return parse_line(raw, self.path, int(self._lines[index]), self.base_dir)

    def plan(self, index: int, encoder: SampleEncoder) -> SamplePlan:
        return encoder.plan(self.record(index), self._media)

    def encode(self, index: int, encoder: SampleEncoder) -> EncodedRecord:
        return encoder.encode(self.record(index), self._media)


class ShardSource:
    """A ``sail data prepare`` directory. Plans come from the index (stored lengths when they
    were computed at this encoder's settings, else stored image sizes and the record's text)."""

    in_order = False

    def __init__(self, directory: str, name: str | None = None) -> None:
        self.reader = ShardReader(directory)
        self.index = self.reader.index
        self.name = name or os.path.basename(os.path.abspath(directory))

    def __len__(self) -> int:
        return len(self.reader)

    def _stored_plan_usable(self, encoder: SampleEncoder) -> bool:
        s = self.index.settings
        tok = getattr(encoder.tokenizer, "model_path", None) or getattr(encoder.tokenizer, "path", None)
        return (tok is not None and s.get("tokenizer") is not None
                and os.path.abspath(s["tokenizer"]) == os.path.abspath(tok)
                and s.get("tokens_per_tile") == encoder.tokens_per_tile
                and s.get("image_size") == encoder.image_size
                and s.get("min_tiles") == encoder.min_tiles
                and s.get("max_tiles") == encoder.max_tiles
                and s.get("use_thumbnail") == encoder.use_thumbnail
                and s.get("num_frames") == encoder.num_frames)

    def plan(self, index: int, encoder: SampleEncoder) -> SamplePlan:
        ix = self.index
        length = ix.length[index]
        fits = encoder.seq_length is None or (length or 0) <= encoder.seq_length
        if length is not None and fits and self._stored_plan_usable(encoder):
            tiles = ix.visual_tokens[index] // encoder.tokens_per_tile
            return SamplePlan(length, ix.visual_tokens[index], tiles)
        # From the record: also what names a too-long sample with its context.
        record = self.reader.read(index).record
        return encoder.plan_from_sizes(record, [tuple(s) for s in ix.image_sizes[index]],
                                       ix.video_frames[index])

    def encode(self, index: int, encoder: SampleEncoder) -> EncodedRecord:
        sample = self.reader.read(index)
        return encoder.encode(sample.record, sample.media)


def open_source(path: str, root: str | None = None, name: str | None = None
                ) -> Union[JsonlSource, ShardSource]:
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, INDEX_FILE)):
            raise RecordError(path, None, f"a directory but not a shard directory (no {INDEX_FILE})")
        return ShardSource(path, name)
    if not os.path.isfile(path):
        raise RecordError(path, None, "no such file or directory")
    return JsonlSource(path, root, name)


__all__ = ["JsonlSource", "SampleSource", "ShardSource", "open_source"]
