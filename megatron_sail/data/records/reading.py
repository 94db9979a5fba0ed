"""Reading a record's media and the ways a sample fails.

A ``MediaReader`` is where media bytes come from (files on disk, the members of one shard
sample); every failure is a ``SampleError`` whose ``kind`` says what to do about it (the data
checker counts by kind; the loader skips and counts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from typing import Protocol


class SampleErrorKind(str, Enum):
    MEDIA_MISSING = "media_missing"
    MEDIA_CORRUPT = "media_corrupt"
    VIDEO_UNDECODABLE = "video_undecodable"
    MALFORMED_RECORD = "malformed_record"
    TOO_LONG = "too_long"
    UNSAFE_MEMBER = "unsafe_member"  # a shard sample with a link, device or other non-file member


class SampleError(ValueError):
    """``str()`` is ``source: kind: reason``; ``source`` names the record (file:line) or the
    media file that failed."""

    def __init__(self, source: str, reason: str, kind: SampleErrorKind | str) -> None:
        self.source, self.reason, self.kind = source, reason, SampleErrorKind(kind)
        super().__init__(f"{source}: {self.kind.value}: {reason}")

    def __reduce__(self):  # survives pickling back from worker processes
        return (type(self), (self.source, self.reason, self.kind.value))


class MediaReader(Protocol):
    """Where media bytes come from. ``read`` raises SampleError(media_missing) for an
    absent reference; ``name`` is how errors cite it."""

    def read(self, ref: str) -> bytes: ...
    def name(self, ref: str) -> str: ...


class FileMedia:
    """Media on a filesystem; relative references resolve against ``root`` (when given)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root

    def name(self, ref: str) -> str:
        return os.path.join(self.root, ref) if self.root is not None else ref

    def read(self, ref: str) -> bytes:
        path = self.name(ref)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise SampleError(path, "file not found", SampleErrorKind.MEDIA_MISSING) from None
        except OSError as exc:
            raise SampleError(path, f"cannot read file ({exc.strerror or exc})",
                              SampleErrorKind.MEDIA_MISSING) from None


class MemberMedia:
    """Media held in memory, e.g. the members of one shard sample."""

    def __init__(self, members: Mapping[str, bytes], container: str) -> None:
        self.members, self.container = members, container

    def name(self, ref: str) -> str:
        return f"{self.container}:{ref}"

    def read(self, ref: str) -> bytes:
        try:
            return self.members[ref]
        except KeyError:
            raise SampleError(self.name(ref), "no such member", SampleErrorKind.MEDIA_MISSING) from None
