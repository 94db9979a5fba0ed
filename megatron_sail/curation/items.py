"""The records moving through a curation: where each came from, its current form (the input
object, or the QA record ``caption_to_qa`` made of it), its scores and, once a stage drops it,
why. Items are stored as JSON lines in the per-chunk work files.

Inputs are cut into chunks of ``chunk_size`` records that never span two inputs; chunk ``k``
stays chunk ``k`` through every phase, so a record's place in the input order (its global
index ``i``) decides every tie, whichever worker handled it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from megatron_sail.utils.atomic import staged_file
from megatron_sail.data.media.errors import MediaError
from megatron_sail.data.media.files import read_media_file
from megatron_sail.data.records.record import RecordError, media_base, parse_record
from megatron_sail.data.records.shards import ShardIndex, ShardReader, sample_key


@dataclass
class Item:
    i: int                               # place in the input order
    where: str                           # file:line, or shard dir#index
    record: Any                          # the record as it is now (a dict; the raw text if unparseable)
    base: Optional[str] = None           # where relative media paths resolve (JSONL inputs)
    shard: Optional[list] = None         # [directory, index] for shard inputs
    scores: dict = field(default_factory=dict)
    drop: Optional[dict] = None          # {"stage", "reason", "detail"?}
    extra: dict = field(default_factory=dict)      # e.g. duplicate_of, qa source caption
    features: dict = field(default_factory=dict)   # a global stage's per-record inputs

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items()
                           if v not in (None, {}) or k in ("i", "record")},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Item":
        return cls(**json.loads(line))

    def dropped(self, stage: str, reason: str, detail: str | None = None) -> None:
        self.drop = {"stage": stage, "reason": reason}
        if detail:
            self.drop["detail"] = detail

    @property
    def alive(self) -> bool:
        return self.drop is None

    # -- media ------------------------------------------------------------------------------
    def media_refs(self) -> list[tuple[str, str]]:
        """(kind, reference) for each image, then the video."""
        rec = self.record if isinstance(self.record, dict) else {}
        images = rec.get("image")
        images = [images] if isinstance(images, str) else list(images or [])
        out = [("image", str(r)) for r in images]
        if rec.get("video"):
            out.append(("video", str(rec["video"])))
        return out

    def media_name(self, ref: str) -> str:
        if self.shard is not None:
            return f"{self.shard[0]}#{self.shard[1]}:{ref}"
        return ref if self.base is None or os.path.isabs(ref) else os.path.join(self.base, ref)

    def read_media(self, ref: str) -> bytes:
        if self.shard is not None:
            members = _shard_reader(self.shard[0]).members(self.shard[1])
            if ref not in members:
                raise MediaError(self.media_name(ref), "no such member in the shard sample")
            return members[ref]
        return read_media_file(self.media_name(ref))


_READERS: dict[str, ShardReader] = {}


def _shard_reader(directory: str) -> ShardReader:
    if directory not in _READERS:
        _READERS[directory] = ShardReader(directory)
    return _READERS[directory]


# -- chunks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    index: int
    input: str            # a JSONL file or a shard directory
    first: int            # global index of the chunk's first record
    count: int
    offset: int = 0       # JSONL: byte offset of the first line; shards: first sample index
    line: int = 1         # JSONL: line number at ``offset``

    def to_json(self) -> dict:
        return self.__dict__.copy()


def plan_chunks(inputs: list[str], chunk_size: int) -> list[Chunk]:
    """Chunks of ``chunk_size`` non-blank lines (JSONL) or samples (shard directories)."""
    chunks: list[Chunk] = []
    first = 0
    for path in inputs:
        if os.path.isdir(path):
            total = len(ShardIndex.load(path))
            for start in range(0, total, chunk_size):
                n = min(chunk_size, total - start)
                chunks.append(Chunk(len(chunks), path, first, n, offset=start))
                first += n
            continue
        count, offset, line, start_offset, start_line = 0, 0, 0, 0, 1
        with open(path, "rb") as f:
            for raw in f:
                line += 1
                if raw.strip():
                    if count == 0:
                        start_offset, start_line = offset, line
                    count += 1
                    if count == chunk_size:
                        chunks.append(Chunk(len(chunks), path, first, count, start_offset, start_line))
                        first, count = first + count, 0
                offset += len(raw)
        if count:
            chunks.append(Chunk(len(chunks), path, first, count, start_offset, start_line))
            first += count
    return chunks


def read_chunk(chunk: Chunk) -> list[Item]:
    """The chunk's records as items; a line that is not a training-format record is dropped
    at stage ``input`` right away (kept whole, so nothing is lost)."""
    if os.path.isdir(chunk.input):
        return _read_shard_chunk(chunk)
    items = []
    base = media_base(chunk.input)
    with open(chunk.input, "rb") as f:
        f.seek(chunk.offset)
        line = chunk.line - 1
        while len(items) < chunk.count:
            raw = f.readline()
            line += 1
            if not raw:
                break
            if not raw.strip():
                continue
            where = f"{chunk.input}:{line}"
            item = Item(chunk.first + len(items), where, None, base=base)
            try:
                obj = json.loads(raw.decode("utf-8"))
                item.record = obj
                parse_record(obj, chunk.input, line, base)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                item.record = raw.decode("utf-8", "replace").rstrip("\n")
                item.dropped("input", "unparseable_record", str(exc))
            except RecordError as exc:
                item.dropped("input", "invalid_record", exc.reason)
            items.append(item)
    return items


def _read_shard_chunk(chunk: Chunk) -> list[Item]:
    reader = _shard_reader(chunk.input)
    items = []
    for n in range(chunk.count):
        index = chunk.offset + n
        item = Item(chunk.first + n, f"{chunk.input}#{index}", None, shard=[chunk.input, index])
        try:
            members = reader.members(index)
            meta = json.loads(members[f"{sample_key(index)}.json"])
            item.record = meta
            parse_record(meta, item.where, None, None)
        except (RecordError, ValueError, KeyError) as exc:
            item.record = item.record if item.record is not None else {"shard_sample": item.where}
            item.dropped("input", "invalid_record", str(exc))
        items.append(item)
    return items


def write_items(path: Path, items: list[Item]) -> None:
    """Atomically: a reader sees the whole chunk file or none (a per-process temp name, so
    two processes finishing the same chunk never share a temp file)."""
    with staged_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(item.to_json() + "\n")


def read_items(path: Path) -> Iterator[Item]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield Item.from_json(line)
