"""Reading media files from disk, with a missing or unreadable file reported as a MediaError."""

from __future__ import annotations

import os

from megatron_sail.data.media.errors import MediaError, describe


def read_media_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image or video file; MediaError (source = the path) if it cannot be read."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MediaError(source, "file not found") from None
    except OSError as exc:
        raise MediaError(source, f"cannot read file ({describe(exc)})") from exc
