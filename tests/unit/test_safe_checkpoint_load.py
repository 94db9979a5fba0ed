"""The guards under ``compat.safe_checkpoint_load`` on their own, without a training run:
torch's DCP reader and ``torch.load`` refuse a pickle that would run a command even when
nothing scanned the file first (a file swapped after the scan, or a future read path), and a
real DCP checkpoint with non-tensor items (numpy RNG state) still round-trips."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_sail.compat import safe_checkpoint_load as guard


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def installed(monkeypatch):
    """install() for one test; the environment and torch's reader are restored after."""
    from torch.distributed.checkpoint import filesystem

    monkeypatch.setattr(filesystem, "pickle", filesystem.pickle)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # install() must drop it
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    guard.install()
    yield


def test_check_passes_on_the_installed_torch():
    guard.check()


def _saved(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "numpy_rng": np.random.get_state(),
             "python_rng": (3, tuple(range(5)), None)}
    dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    return tmp_path / "ckpt", state


def test_real_checkpoint_round_trips(installed, tmp_path):
    ckpt, saved = _saved(tmp_path)
    guard.scan(ckpt)
    loaded = {"w": torch.zeros(2, 3), "numpy_rng": None, "python_rng": None}
    dcp.load(loaded, checkpoint_id=str(ckpt), no_dist=True)
    assert torch.equal(loaded["w"], saved["w"]) and loaded["python_rng"] == saved["python_rng"]
    assert np.array_equal(loaded["numpy_rng"][1], saved["numpy_rng"][1])


def test_dcp_metadata_reader_refuses_without_a_scan(installed, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    ckpt, _ = _saved(tmp_path)
    marker = tmp_path / "ran"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(guard.UnsafeCheckpointError, match=r"\.metadata: refuses to load class "
                       r"'posix\.system'"):
        FileSystemReader(str(ckpt)).read_metadata()
    with pytest.raises(guard.UnsafeCheckpointError, match="posix.system"):
        guard.scan(ckpt)
    assert not marker.exists()


def test_every_torch_load_is_weights_only(installed, tmp_path):
    """DCP's non-tensor items are read with torch.load(weights_only=False)."""
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "blob.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "blob.pt", weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("cls", ["builtins.eval", "subprocess.Popen", "torch.load",
                                 "torch.distributed.checkpoint.filesystem.FileSystemReader"])
def test_metadata_allows_only_record_classes(cls):
    module, name = cls.rsplit(".", 1)
    assert guard._metadata_class(module, name) is None
