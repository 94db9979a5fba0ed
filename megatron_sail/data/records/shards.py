"""WebDataset-style tar shards of conversation records with their media, plus an index for
random access and length planning without decoding.

Layout of a shard directory::

    DIR/shard-000000.tar ...   samples in order; a sample is contiguous members
        KEY.json                 the record, media replaced by member names, "origin" = file:line
        KEY.img0.jpg, KEY.img1.png   its images, in record order (extension kept)
        KEY.mp4                  its video, if any (extension kept)
    DIR/index.json

``KEY`` is the global sample index, zero-padded to 9 digits; keys contain no dots because
WebDataset ends the key at the first dot of a member name. ``index.json`` holds the shard list
(file, sample count, bytes) and per-sample columns: shard, byte range of the sample's members
(one read fetches them all), origin, image (width, height) list, decoded video frame count,
and, when prepared with a tokenizer, length and visual tokens at the recorded settings. At
about 100 bytes of index per sample, keep one directory to a few million samples and blend
several directories for more.

A directory is written under a temporary name next to ``DIR`` and renamed into place when
complete, so readers never see a partial dataset.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field

from megatron_sail.data.records.record import Record, RecordError, parse_record
from megatron_sail.data.records.reading import MemberMedia, SampleError, SampleErrorKind
from megatron_sail.utils.atomic import fsync_path, rename_synced

INDEX_FILE = "index.json"
FORMAT = "sail-shards/1"
DEFAULT_SHARD_SIZE = 1 << 30
_BLOCK = 512
_EXT = re.compile(r"^[a-z0-9]{1,8}$")


def sample_key(index: int) -> str:
    return f"{index:09d}"


def shard_file(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def _ext(path: str, default: str) -> str:
    ext = os.path.splitext(path)[1][1:].lower()
    return ext if _EXT.match(ext) and ext != "json" else default


def _member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


@dataclass
class ShardSample:
    """What the writer stores: a record whose media references are keys of ``media``."""

    record: Record
    media: dict[str, bytes]
    origin: str  # file:line of the source record
    image_sizes: list[tuple[int, int]]
    video_frames: int | None = None
    length: int | None = None
    visual_tokens: int | None = None


@dataclass
class ShardIndex:
    shards: list[dict]  # {"file", "num_samples", "bytes"}
    shard: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    image_sizes: list[list[list[int]]] = field(default_factory=list)
    video_frames: list[int | None] = field(default_factory=list)
    length: list[int | None] = field(default_factory=list)
    visual_tokens: list[int | None] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    COLUMNS = ("shard", "offset", "size", "origin", "image_sizes", "video_frames", "length", "visual_tokens")

    def __len__(self) -> int:
        return len(self.shard)

    def to_json(self) -> dict:
        return {"format": FORMAT, "num_samples": len(self), "settings": self.settings,
                "shards": self.shards, "samples": {c: getattr(self, c) for c in self.COLUMNS}}

    @classmethod
    def load(cls, directory: str) -> "ShardIndex":
        path = os.path.join(directory, INDEX_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                tree = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{directory}: not a shard directory (no {INDEX_FILE})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if tree.get("format") != FORMAT:
            raise ValueError(f"{path}: format is {tree.get('format')!r}, expected {FORMAT!r}")
        for shard in tree["shards"]:
            name = shard.get("file") if isinstance(shard, dict) else None
            if not isinstance(name, str) or name in ("", ".", "..") or "/" in name \
                    or "\\" in name or "\0" in name:
                raise ValueError(f"{path}: shard file {name!r} is not a file name inside "
                                 f"{directory} (shard indexes name their tar files only)")
        samples = tree["samples"]
        index = cls(shards=tree["shards"], settings=tree.get("settings") or {},
                    **{c: samples[c] for c in cls.COLUMNS})
        lengths = {c: len(samples[c]) for c in cls.COLUMNS}
        if len(set(lengths.values())) != 1 or len(index) != tree["num_samples"] \
                or sum(s["num_samples"] for s in index.shards) != len(index):
            raise ValueError(f"{path}: inconsistent sample counts {lengths}, num_samples "
                             f"{tree['num_samples']}, shards {[s['num_samples'] for s in index.shards]}")
        return index


class ShardWriter:
    """Writes samples into byte-sized shards. Use as a context manager: a clean exit commits
    (index + atomic rename), an exception discards everything."""

    def __init__(self, out_dir: str, shard_size: int = DEFAULT_SHARD_SIZE, settings: dict | None = None) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir) and (not os.path.isdir(self.out_dir) or os.listdir(self.out_dir)):
            raise FileExistsError(f"{out_dir} exists and is not an empty directory; remove it or "
                                  f"choose another output")
        self.shard_size = shard_size
        self.tmp_dir = f"{self.out_dir}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir)
        self.index = ShardIndex(shards=[], settings=dict(settings or {}))
        self._file: io.BufferedWriter | None = None
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: reproducible bytes
        self._tar.addfile(info, io.BytesIO(data))

    def _roll(self, sample_bytes: int) -> None:
        current = self.index.shards[-1] if self.index.shards else None
        if current is not None and current["num_samples"] and current["bytes"] + sample_bytes > self.shard_size:
            self._close_shard()
            current = None
        if current is None:
            name = shard_file(len(self.index.shards))
            self._file = open(os.path.join(self.tmp_dir, name), "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
            self.index.shards.append({"file": name, "num_samples": 0, "bytes": 0})

    def add(self, sample: ShardSample) -> int:
        """Append a sample; returns its global index."""
        index = len(self.index)
        key = sample_key(index)
        record = sample.record
        names = {ref: f"{key}.img{i}.{_ext(ref, 'img')}" for i, ref in enumerate(record.images)}
        if record.video is not None:
            names[record.video] = f"{key}.{_ext(record.video, 'video')}"
        stored = record.with_media(tuple(names[r] for r in record.images),
                                   None if record.video is None else names[record.video])
        meta = json.dumps({**stored.to_json(), "origin": sample.origin}, ensure_ascii=False).encode()
        members = [(f"{key}.json", meta)] + [(names[ref], sample.media[ref]) for ref in record.media]
        self._roll(sum(_member_bytes(len(data)) for _, data in members))
        start = self._file.tell()
        for name, data in members:
            self._add_member(name, data)
        end = self._file.tell()
        shard = self.index.shards[-1]
        shard["num_samples"] += 1
        shard["bytes"] = end
        ix = self.index
        ix.shard.append(len(ix.shards) - 1)
        ix.offset.append(start)
        ix.size.append(end - start)
        ix.origin.append(sample.origin)
        ix.image_sizes.append([list(s) for s in sample.image_sizes])
        ix.video_frames.append(sample.video_frames)
        ix.length.append(sample.length)
        ix.visual_tokens.append(sample.visual_tokens)
        return index

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()  # writes the end-of-archive blocks
            self._file.flush()
            fsync_path(self._file.name)  # now, while the next shard is written
            self.index.shards[-1]["bytes"] = self._file.tell()
            self._file.close()
            self._tar = self._file = None

    def commit(self) -> ShardIndex:
        self._close_shard()
        with open(os.path.join(self.tmp_dir, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(self.index.to_json(), f, ensure_ascii=False)
        if os.path.isdir(self.out_dir):
            os.rmdir(self.out_dir)  # empty (checked on construction)
        rename_synced(self.tmp_dir, self.out_dir)
        return self.index

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tar = self._file = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _member_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"hard link (to {info.linkname!r})"
    kinds = {tarfile.DIRTYPE: "directory", tarfile.CHRTYPE: "character device",
             tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}
    return kinds.get(info.type, f"non-regular (type {info.type!r})")


@dataclass
class ShardRecord:
    record: Record
    media: MemberMedia
    index: int
    origin: str


class ShardReader:
    """Random access by global sample index. Files open lazily, are read with ``pread`` (no
    shared file position), and are reopened in a new process, so one reader can be handed to
    DataLoader workers whether they fork or spawn."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.index = ShardIndex.load(self.directory)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():  # __init__ may have failed early
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to use
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(os.path.join(self.directory, self.index.shards[shard]["file"]), os.O_RDONLY)
        return self._fds[shard]

    def shard_path(self, index: int) -> str:
        return os.path.join(self.directory, self.index.shards[self.index.shard[index]]["file"])

    def members(self, index: int) -> dict[str, bytes]:
        """All members of sample ``index``, by name."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        ix = self.index
        blob = os.pread(self._fd(ix.shard[index]), ix.size[index], ix.offset[index])
        where = f"{self.shard_path(index)}@{ix.offset[index]}"
        if len(blob) != ix.size[index]:
            raise ValueError(f"{where}: shard is truncated (read {len(blob)} of {ix.size[index]} bytes)")
        out = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
                for info in tar:
                    if not info.isreg():  # a link would be followed to another member or file
                        raise SampleError(f"{self.shard_path(index)}:{info.name}",
                                          f"{_member_type(info)} member; shards hold only "
                                          f"regular files", SampleErrorKind.UNSAFE_MEMBER)
                    out[info.name] = tar.extractfile(info).read()
        except tarfile.TarError as exc:
            raise ValueError(f"{where}: corrupt tar data: {exc}") from None
        return out

    def read(self, index: int) -> ShardRecord:
        members = self.members(index)
        key = sample_key(index)
        meta_name = f"{key}.json"
        source = f"{self.shard_path(index)}:{meta_name}"
        if meta_name not in members:
            raise RecordError(source, None, f"no member {meta_name} (found {sorted(members)})")
        try:
            obj = json.loads(members.pop(meta_name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError(source, None, f"malformed JSON: {exc}") from None
        origin = obj.pop("origin", "?") if isinstance(obj, dict) else "?"
        record = parse_record(obj, f"{source} (from {origin})", None, base_dir=None)
        return ShardRecord(record, MemberMedia(members, self.shard_path(index)), index, origin)
