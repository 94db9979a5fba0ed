"""File syncs: ``fsync_deferred`` skips them inside its block only (and restores them on
errors); ``SyncBehind`` syncs a growing file every ``chunk`` bytes and reports failures."""

from __future__ import annotations

import os

import pytest

from megatron_sail.checkpointing import layout_files
from megatron_sail.checkpointing.layout_files import SyncBehind, sync_tree
from megatron_sail.compat.deferred_fsync import fsync_deferred


def test_syncs_skipped_inside_the_block_and_restored_after(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    (tmp_path / "a").write_text("x")
    with fsync_deferred():
        sync_tree(tmp_path)
    assert synced == []
    sync_tree(tmp_path)  # the file and the directory
    assert len(synced) == 2
    with pytest.raises(RuntimeError), fsync_deferred():
        raise RuntimeError("writer failed")
    sync_tree(tmp_path)
    assert len(synced) == 4


def test_sync_behind_syncs_every_chunk_and_at_close(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(layout_files, "fsync_path", lambda path: synced.append(path.name))
    sync = SyncBehind(chunk=100)
    for _ in range(5):
        sync.wrote(tmp_path / "a", 40)  # 40, 80, 120 -> sync; 40, 80
    sync.closed(tmp_path / "a")
    sync.wrote(tmp_path / "b", 10)
    sync.closed(tmp_path / "b")
    sync.wait()
    assert synced == ["a", "a", "b"]


def test_sync_behind_raises_the_first_failure(tmp_path):
    sync = SyncBehind()
    sync.closed(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        sync.wait()
