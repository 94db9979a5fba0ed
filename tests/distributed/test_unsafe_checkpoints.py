"""A checkpoint crafted to run a command when unpickled - in its DCP ``.metadata``, its
``common.pt`` or a non-tensor item inside a ``.distcp`` file - is refused by export, verify,
forward, resume and ``checkpoint.load`` (exit 2, one line naming the file and the class), and
the command never runs. Real checkpoints are written by a tiny ``sail train`` run (2 ranks,
distributed optimizer)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO

RUN = ["train.train_iters=2", "checkpoint.save_interval=2", "train.eval_interval=null"]
ITER = "iter_0000002"


class _Payload:
    """Unpickling it runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(sail, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    sail.train(out, *RUN, nproc=2)
    return out


def _poison_metadata(ckpt, marker):
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    return ckpt / ".metadata", "posix.system"


def _poison_common(ckpt, marker):
    if not (ckpt / "common.pt").exists():  # megatron-core >= 0.19: inside the .distcp files
        from megatron_sail.compat.dist_ckpt_internals import EMBEDDED_COMMON_KEY

        return _poison_bytes_item(ckpt, marker, EMBEDDED_COMMON_KEY)
    common = torch.load(ckpt / "common.pt", weights_only=True)
    common["sail"]["extra"] = _Payload(marker)
    torch.save(common, ckpt / "common.pt")
    return ckpt / "common.pt", "posix.system"


def _poison_item(ckpt, marker):
    return _poison_bytes_item(ckpt, marker, "rng_state")


def _poison_bytes_item(ckpt, marker, fqn_prefix):
    """Appends a torch.save blob holding the payload to the .distcp file that stores the
    non-tensor item ``fqn_prefix...`` (the RNG state; megatron-core >= 0.19's common state)
    and points the metadata at it."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with open(ckpt / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # written by the fixture's own run
    index = next(i for i, info in metadata.storage_data.items()
                 if i.fqn.startswith(fqn_prefix)
                 and isinstance(metadata.state_dict_metadata[i.fqn], BytesStorageMetadata))
    info = metadata.storage_data[index]
    blob = io.BytesIO()
    torch.save({"python": _Payload(marker)}, blob)
    path = ckpt / info.relative_path
    info.offset, info.length = path.stat().st_size, len(blob.getvalue())
    with open(path, "ab") as f:
        f.write(blob.getvalue())
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    return path, "posix.system"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The clean checkpoint in the release layout, for ``verify``."""
    out = tmp_path_factory.mktemp("exported") / "hf"
    proc = _sail("convert", "export-hf", "--ckpt", str(trained / "checkpoints"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


POISONS = {"metadata": _poison_metadata, "common": _poison_common, "item": _poison_item}


def _sail(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "megatron_sail.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _assert_refused(proc, cmd, path, cls, marker):
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{cmd}: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]  # one line, from one rank
    assert str(path) in errors[0] and f"refuses to load class '{cls}'" in errors[0], errors
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists(), "the checkpoint's command ran"


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_poisoned_checkpoint_is_refused_everywhere(sail, trained, exported, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "command_ran"
    path, cls = POISONS[kind](run / "checkpoints" / ITER, marker)

    proc = _sail("convert", "export-hf", "--ckpt", str(run / "checkpoints"),
                 "--out", str(tmp_path / "hf"))
    _assert_refused(proc, "sail convert export-hf", path, cls, marker)
    assert not (tmp_path / "hf").exists()
    proc = _sail("convert", "verify", "--hf", str(exported), "--ckpt", str(run / "checkpoints"))
    _assert_refused(proc, "sail convert verify", path, cls, marker)
    proc = _sail("forward", "--ckpt", str(run / "checkpoints"), "--inputs", str(tmp_path / "in"),
                 "--out", str(tmp_path / "logits.safetensors"))
    _assert_refused(proc, "sail forward", path, cls, marker)

    # resume (2 ranks: the refusal is reported once) and fine-tuning from it
    proc = sail.train(run, *RUN, "train.train_iters=3", nproc=2 if kind == "item" else 1,
                      expect_ok=False)
    _assert_refused(proc, "sail train", path, cls, marker)
    proc = sail.train(tmp_path / "finetune", "train.train_iters=1",
                      f"checkpoint.load={run / 'checkpoints'}", nproc=1, expect_ok=False)
    _assert_refused(proc, "sail train", path, cls, marker)
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "2\n"
