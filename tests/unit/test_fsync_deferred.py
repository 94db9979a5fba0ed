"""``fsync_deferred`` skips file syncs inside its block only, and restores them on errors."""

from __future__ import annotations

import os

import pytest

from megatron_sail.checkpointing.layout_files import fsync_deferred, sync_tree


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
