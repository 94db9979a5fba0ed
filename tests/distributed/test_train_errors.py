"""What a user gets from `sail train` (2 processes) for a bad blend file, a data stream that
changed since the checkpoint, and a corrupt checkpoint: one line `sail train: error: ...`
naming the problem, exit code 2, no traceback, reported by rank 0 only."""

from __future__ import annotations

import shutil

import pytest

from tests.data.dataset_fixtures import make_dataset

TRAIN = ["train.micro_batch_size=1", "train.global_batch_size=4", "data.seq_length=256",
         "data.max_tiles=4", "data.num_frames=4", "data.num_workers=1",
         "checkpoint.save_interval=2", "train.eval_interval=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer

    root = tmp_path_factory.mktemp("dataset")
    dataset = make_dataset(root, good=20, bad=False)
    train_synthetic_tokenizer(str(root / "tokenizer.model"))
    return root, dataset.jsonl, ["data.dataset=blend", "data.packing=true",
                                 f"data.tokenizer={root / 'tokenizer.model'}",
                                 *TRAIN]


@pytest.fixture(scope="module")
def checkpointed(sail, data, tmp_path_factory):
    """Two iterations on the data set, checkpointed at the second."""
    _, jsonl, args = data
    out = tmp_path_factory.mktemp("run")
    sail.train(out, *args, f"data.blend={jsonl}", "train.train_iters=2", nproc=2)
    return out


def one_error_line(proc) -> str:
    """The report: one line, from one rank, last on stderr (before it only the libraries'
    start-up warnings every run prints), exit code 2."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reports = [line for line in lines if "error" in line.lower() and "warn" not in line.lower()]
    assert reports == lines[-1:] and reports[0].startswith("sail train: error: "), \
        proc.stderr[-3000:]
    return reports[0]


def test_a_bad_blend_file(sail, data, tmp_path):
    root, jsonl, args = data
    blend = root / "bad_blend.yaml"
    blend.write_text(f"datasets:\n  - path: {jsonl}\n    weight: -1\n")
    proc = sail.train(tmp_path, *args, f"data.blend={blend}", "train.train_iters=2", nproc=2,
                      expect_ok=False)
    line = one_error_line(proc)
    assert str(blend) in line and "weight must be a positive number" in line


def test_a_changed_data_stream_on_resume(sail, data, checkpointed, tmp_path):
    root, jsonl, args = data
    other = root / "other.yaml"  # the same records, blended twice: another stream
    other.write_text(f"datasets:\n  - path: {jsonl}\n    weight: 1\n"
                     f"  - path: {jsonl}\n    weight: 1\n    name: again\n")
    run = shutil.copytree(checkpointed, tmp_path / "run")
    proc = sail.train(run, *args, f"data.blend={other}", "train.train_iters=4", nproc=2,
                      expect_ok=False)
    assert "data stream changed since the checkpoint" in one_error_line(proc)


def test_a_corrupt_checkpoint(sail, data, checkpointed, tmp_path):
    _, jsonl, args = data
    run = shutil.copytree(checkpointed, tmp_path / "run")
    ckpt = run / "checkpoints" / "iter_0000002"
    for shard in ckpt.glob("*.distcp"):
        shard.write_bytes(b"garbage")
    proc = sail.train(run, *args, f"data.blend={jsonl}", "train.train_iters=4", nproc=2,
                      expect_ok=False)
    assert str(ckpt) in one_error_line(proc)
