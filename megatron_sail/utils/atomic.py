"""Outputs appear whole or not at all, and stay on disk once they appear.

Every file or directory ``sail`` hands to a user (configs, metrics, tokenizers, converted
checkpoints, checkpoint markers, launch scripts) is written here: into a hidden sibling in the
same directory, synced, renamed into place, and then the parent directory's entry synced - a
crash or a power cut leaves the old state or the new one, never a partial file. Readers
running at the same time (other ranks) never see a half-written file either.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from megatron_sail.errors import UserError


class OutputExistsError(UserError, ValueError):
    """An output path that already exists where a command refuses to overwrite."""


def fsync_path(path: str | os.PathLike) -> None:
    """Sync one file or directory (a directory: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: str | os.PathLike) -> None:
    """Every file under ``root`` on disk, then the directory entries (deepest first). Files a
    writer already synced cost next to nothing."""
    for dirpath, _, files in sorted(os.walk(root), key=lambda w: -w[0].count(os.sep)):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def rename_synced(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put the directory ``src`` in place as ``dst`` (absent or an empty directory) durably:
    its contents on disk first, then the rename, then the parent's entry."""
    sync_tree(src)
    os.replace(src, dst)
    fsync_path(Path(dst).absolute().parent)


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that opens the file itself (e.g.
    safetensors, other processes). When the block ends without an error the file is synced
    and renamed to ``path``; on an error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name: several ranks may write the same file at once
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with staged_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text`` (UTF-8), whole, or keeps what it held before."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, indent: Optional[int] = None) -> None:
    """``data`` as JSON (with a final newline when indented, as a person reads it)."""
    text = json.dumps(data, indent=indent)
    write_atomic(path, text + "\n" if indent is not None else text)


@contextmanager
def staging_dir(out: str | os.PathLike) -> Iterator[Path]:
    """A hidden directory next to ``out`` to write a directory output into; on success it is
    synced to disk and renamed to ``out``, so a crash or a power cut never leaves a partial
    ``out``. An existing ``out`` is refused before anything is written."""
    out = Path(out)
    if out.exists():
        raise OutputExistsError(f"{out}: already exists; remove it or choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        rename_synced(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class SyncBehind:
    """Puts a writer's files on disk in a background thread while it goes on writing, so
    that the disk works from the first bytes on and the sync before publishing finds little
    left. The writer reports ``wrote(path, nbytes)`` after each write - a sync of ``path``
    starts whenever ``chunk`` bytes have piled up - and ``closed(path)`` when a file is done;
    ``wait()`` returns once everything reported is synced (and raises the first error)."""

    def __init__(self, chunk: int = 256 * 2**20):
        self.chunk = chunk
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sync-behind")
        self._unsynced: dict[Path, int] = {}
        self._syncs: list[Future] = []

    def wrote(self, path: Path, nbytes: int) -> None:
        self._unsynced[path] = self._unsynced.get(path, 0) + nbytes
        if self._unsynced[path] >= self.chunk:
            self.closed(path)

    def closed(self, path: Path) -> None:
        self._unsynced[path] = 0
        self._syncs.append(self._pool.submit(fsync_path, path))

    def wait(self) -> None:
        try:
            for future in self._syncs:
                future.result()
        finally:
            self._pool.shutdown()
