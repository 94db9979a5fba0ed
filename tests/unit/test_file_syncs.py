"""File syncs and atomic outputs: ``fsync_deferred`` skips syncs inside its block only (and
restores them on errors); ``SyncBehind`` syncs a growing file every ``chunk`` bytes and reports
failures; every atomic write leaves the old file or the whole new one, and is the only place
in the package that renames outputs into place or syncs them."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from megatron_sail.compat.deferred_fsync import fsync_deferred
from megatron_sail.utils import atomic
from megatron_sail.utils.atomic import (
    OutputExistsError, SyncBehind, staged_file, staging_dir, sync_tree, write_atomic,
    write_bytes_atomic, write_json_atomic,
)

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_sail"


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
    monkeypatch.setattr(atomic, "fsync_path", lambda path: synced.append(path.name))
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


def test_atomic_writes_sync_the_file_then_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    write_atomic(tmp_path / "a.txt", "x")
    # the temporary file (renamed afterwards), then the directory holding the new entry
    assert len(synced) == 2 and synced[1] == str(tmp_path) and synced[0] != synced[1]
    assert (tmp_path / "a.txt").read_text() == "x"
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff")
    write_json_atomic(tmp_path / "c.json", {"k": [1]}, indent=1)
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": [1]}
    assert (tmp_path / "c.json").read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.yaml"
    write_atomic(path, "old\n")
    with pytest.raises(RuntimeError), staged_file(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("writer died")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_staging_dir_publishes_whole_or_nothing_and_refuses_an_existing_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staging_dir(out) as tmp:
        (tmp / "part").write_text("x")
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []
    with staging_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w").write_text("y")
    assert (out / "sub" / "w").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(OutputExistsError, match="out: already exists"):
        with staging_dir(out):
            pass


def _calls(tree: ast.AST) -> set[str]:
    """Dotted names of everything called in ``tree`` (``os.replace``, ``tmp.rename``, ...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, parts = node.func, []
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            names.add(".".join(reversed(parts)))
    return names


# Syncs that are not outputs: the run lock rewrites the record of the process holding it in
# place (the locked file must stay the same file).
NOT_OUTPUTS = {"training/run_lock.py": {"os.fsync"}}


def test_one_atomic_write_implementation():
    """Renaming into place, syncing and temporary siblings live in utils/atomic.py alone."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "utils/atomic.py" or rel.startswith("compat/"):
            continue
        calls = {c for c in _calls(ast.parse(path.read_text()))
                 if c.split(".")[-1] in ("replace", "rename", "fsync", "mkstemp")
                 and (c.startswith(("os.", "tempfile.")) or c.endswith(".rename"))}
        calls -= NOT_OUTPUTS.get(rel, set())
        if calls:
            found[rel] = sorted(calls)
    assert found == {}
