"""Safetensors without holding a checkpoint in memory.

Reading parses the headers only and copies one tensor at a time into its own buffer with a
positioned read (no mmap: mapped pages would count against the process and outlive their
use). Writing streams tensors in an order fixed up front, so a shard file is never
assembled in memory. The format is the documented one: an 8-byte little-endian header
length, a JSON header of {name: {dtype, shape, data_offsets}}, then the raw bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import torch

from megatron_sail.utils.atomic import SyncBehind
from megatron_sail.convert.errors import ConversionError, listing

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in ``file``
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_MAX_HEADER, size - 8):
            raise ConversionError(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{path}: unreadable safetensors header: {exc}") from None
    base = 8 + length
    out, bad = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            shape = tuple(int(n) for n in entry["shape"])
            dtype = entry["dtype"]
        except (KeyError, TypeError, ValueError):
            bad.append(f"{name}: malformed header entry {entry!r}")
            continue
        itemsize = DTYPES[dtype].itemsize if dtype in DTYPES else None
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:
            bad.append(f"{name}: {end - begin} bytes for {dtype} {list(shape)}")
        elif base + end > size:
            bad.append(f"{name}: data ends at byte {base + end} but the file has {size} "
                       f"(truncated?)")
        out[name] = TensorInfo(path, dtype, shape, base + begin, base + end)
    if bad:
        raise ConversionError(f"{path}: corrupt safetensors file\n" + listing("bad entries", bad))
    return out


def _inside_name(file: str) -> bool:
    """A relative path that stays inside its directory: no root, no ``..``, no NUL."""
    parts = Path(file).parts
    return bool(parts) and not Path(file).is_absolute() and ".." not in parts \
        and "\0" not in file and "\\" not in file


class SafetensorsDir:
    """The weights of a checkpoint directory: ``model.safetensors``, or exactly the files that
    ``model.safetensors.index.json`` names. Nothing is read until ``read``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index, single = self.directory / INDEX_FILE, self.directory / SINGLE_FILE
        if not self.directory.is_dir():
            raise ConversionError(f"{self.directory}: not a directory")
        if index.is_file():
            self.tensors = self._from_index(index)
        elif single.is_file():
            self.tensors = read_header(single)
        else:
            raise ConversionError(f"{self.directory}: no {SINGLE_FILE} and no {INDEX_FILE}")
        self._files: dict[Path, BinaryIO] = {}
        self._lock = threading.Lock()

    def _from_index(self, index: Path) -> dict[str, TensorInfo]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConversionError(f"{index}: unreadable index: {exc!r}") from None
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index}: unreadable index: weight_map is not a mapping")
        outside = [f"{name}: {file!r}" for name, file in weight_map.items()
                   if not isinstance(file, str) or not _inside_name(file)]
        if outside:
            more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
            raise ConversionError(f"{index}: names files outside {self.directory} (an index "
                                  f"may name only files in it): {', '.join(outside[:3])}{more}")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (self.directory / f).is_file()]
        if missing:
            raise ConversionError(f"{index}: "
                                  + listing("files named by the index are missing", missing))
        headers = {f: read_header(self.directory / f) for f in files}
        problems = [f"{name} (index says {file})" for name, file in weight_map.items()
                    if name not in headers[file]]
        listed = set(weight_map)
        extra = [f"{name} (in {file})" for file, h in headers.items() for name in h
                 if name not in listed]
        if problems or extra:
            parts = ([listing("tensors named by the index but absent from their file", problems)]
                     if problems else [])
            parts += [listing("tensors in the files but not in the index", extra)] if extra else []
            raise ConversionError(f"{index}: index and files disagree\n" + "\n".join(parts))
        return {name: headers[file][name] for name, file in weight_map.items()}

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        if info.dtype not in DTYPES:
            raise ConversionError(f"{name}: unsupported dtype {info.dtype}")
        out = torch.empty(info.shape, dtype=DTYPES[info.dtype])
        self.read_into(name, 0, out)
        return out

    def read_into(self, name: str, byte_offset: int, dest: torch.Tensor) -> None:
        """Bytes of ``name`` from ``byte_offset`` straight into contiguous ``dest``."""
        info = self.tensors[name]
        n = dest.numel() * dest.element_size()
        if byte_offset + n > info.nbytes:
            raise ConversionError(f"{name}: read past the end of the tensor")
        buf = memoryview(dest.view(-1).view(torch.uint8).numpy())
        fd, at, done = self._file(info.file).fileno(), info.start + byte_offset, 0
        while done < n:  # positioned reads: threads may share the file
            got = os.preadv(fd, [buf[done:]], at + done)
            if got == 0:
                raise ConversionError(f"{info.file}: short read of {name}")
            done += got

    def _file(self, path: Path) -> BinaryIO:
        with self._lock:
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = open(path, "rb")
            return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def parse_size(text: str) -> int:
    """``5GB`` / ``500MB`` / ``1GiB`` / plain bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30,
             "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    lower = text.strip().lower()
    for unit, factor in units.items():
        if lower.endswith(unit) and lower[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(lower[: -len(unit)]) * factor)
    if lower.isdigit():
        return int(lower)
    raise ConversionError(f"cannot parse size {text!r} (e.g. 5GB, 500MB, 2GiB)")


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class ShardedWriter:
    """Writes ``model-XXXXX-of-YYYYY.safetensors`` + ``model.safetensors.index.json``.

    The plan (names, dtypes, shapes, in the order ``write`` will be called) fixes every
    header before any data exists; shards are filled in plan order up to ``max_shard_bytes``.
    """

    def __init__(self, directory: Path, plan: list[PlannedTensor], max_shard_bytes: int,
                 sync: Optional[SyncBehind] = None):
        """``sync``: told about every write, to put the files on disk as they grow."""
        self.directory = Path(directory)
        self.plan = plan
        self._sync = sync
        groups: list[list[PlannedTensor]] = [[]]
        size = 0
        for item in plan:
            if groups[-1] and size + item.nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += item.nbytes
        n = len(groups)
        self.files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._file_of = {t.name: i for i, g in enumerate(groups) for t in g}
        self._last_of_file = {g[-1].name for g in groups if g}
        self._headers = [self._header(g) for g in groups]
        self._next = 0
        self._handle: BinaryIO | None = None

    @staticmethod
    def _header(group: list[PlannedTensor]) -> bytes:
        entries, offset = {"__metadata__": {"format": "pt"}}, 0
        for t in group:
            entries[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                               "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(entries, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the reference writer does
        return struct.pack("<Q", len(raw)) + raw

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.plan[self._next] if self._next < len(self.plan) else None
        if expected is None or expected.name != name:
            wanted = expected.name if expected else "nothing"
            raise RuntimeError(f"writer expected {wanted}, got {name}")
        if tensor.dtype != expected.dtype or tuple(tensor.shape) != expected.shape:
            raise RuntimeError(f"{name}: planned {expected.dtype} {list(expected.shape)}, got "
                               f"{tensor.dtype} {list(tensor.shape)}")
        file = self._file_of[name]
        path = self.directory / self.files[file]
        if self._handle is None:
            self._handle = open(path, "wb")
            self._handle.write(self._headers[file])
        if tensor.numel():
            self._handle.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
            if self._sync is not None:
                self._handle.flush()
                self._sync.wrote(path, tensor.nbytes)
        self._next += 1
        if name in self._last_of_file:
            self._handle.close()
            self._handle = None
            if self._sync is not None:
                self._sync.closed(path)

    def finish(self) -> None:
        if self._next != len(self.plan):
            raise RuntimeError(f"writer finished after {self._next} of {len(self.plan)} tensors")
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in self.plan)},
            "weight_map": {t.name: self.files[self._file_of[t.name]]
                           for t in sorted(self.plan, key=lambda t: t.name)},
        }
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
