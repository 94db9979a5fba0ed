"""`sail train` on a real JSONL dataset (images, multi-image, text, video; planted bad files)
with packing, 2 processes: every planted file is reported by name and counted, the run
learns, and stopping + resuming - at the same or another data-parallel size - continues the
exact sample stream."""

from __future__ import annotations

import json

import pytest

from tests.data.dataset_fixtures import make_dataset
from tests.helpers import assert_close_losses


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer

    root = tmp_path_factory.mktemp("dataset")
    dataset = make_dataset(root)
    train_synthetic_tokenizer(str(root / "tokenizer.model"))
    args = ["data.dataset=blend", "data.packing=true", f"data.blend={dataset.jsonl}",
            f"data.tokenizer={root / 'tokenizer.model'}", "data.seq_length=256",
            "data.max_tiles=4", "data.num_frames=4", "data.num_workers=1",
            "train.micro_batch_size=1", "train.global_batch_size=4", "train.train_iters=12",
            "train.eval_interval=6", f"data.valid_blend={dataset.jsonl}",
            "optimizer.lr_warmup_iters=2"]
    return dataset, args


@pytest.fixture(scope="module")
def straight(sail, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    sail.train(out, *data[1], nproc=2)
    return out


def test_planted_files_are_reported_and_counted(sail, data, straight):
    dataset, _ = data
    skipped = [json.loads(x) for x in (straight / "data_skipped.jsonl").read_text().splitlines()]
    by_kind = {}
    for s in skipped:
        by_kind.setdefault(s["kind"], set()).add(s["where"].split(": ")[0])
    assert set(by_kind) == set(dataset.bad)
    for kind, where in dataset.bad.items():
        assert by_kind[kind] == {where}, (kind, by_kind[kind])
    last = sail.metrics(straight)[-1]
    assert last["data/skipped"] == len(skipped)
    for kind in dataset.bad:
        assert last[f"data/skipped/{kind}"] == sum(s["kind"] == kind for s in skipped)
    assert last["packing_efficiency"] > 0.8
    losses = sail.losses(straight)
    assert losses[12] < losses[1]
    evals = {r["iteration"]: r["val_loss"] for r in sail.metrics(straight) if "val_loss" in r}
    assert set(evals) == {6, 12} and evals[12] < evals[6]


@pytest.mark.parametrize("resume_nproc", [2, 1])
def test_resume_continues_the_stream(sail, data, straight, tmp_path, resume_nproc):
    _, args = data
    sail.train(tmp_path, *args, "train.exit_interval=6", nproc=2)
    sail.train(tmp_path, *args, nproc=resume_nproc)
    resumed, ref = sail.metrics(tmp_path), sail.metrics(straight)
    assert [r["iteration"] for r in resumed] == list(range(1, 13))
    for a, b in zip(resumed[6:], ref[6:]):  # the same samples, packed and dealt the same
        assert a["consumed_samples"] == b["consumed_samples"]
        assert a["loss_tokens"] == b["loss_tokens"]
        assert a["data/skipped"] == b["data/skipped"]
    if resume_nproc == 2:
        assert [r["loss"] for r in resumed[6:]] == [r["loss"] for r in ref[6:]]
    else:  # DP=1 sums the same token losses in another order
        assert_close_losses(sail.losses(tmp_path), sail.losses(straight), range(7, 13))


def test_prepare_check_and_train_on_shards(sail, data, tmp_path):
    """The held-back-dataset workflow: `sail data check` names every planted problem and fails,
    `sail data prepare` skips them and succeeds, the shards check clean and train."""
    import subprocess
    import sys

    dataset, args = data
    tokenizer = next(a.split("=", 1)[1] for a in args if a.startswith("data.tokenizer="))
    common = ["--tokenizer", tokenizer, "--seq-length", "256", "--image-size", "112",
              "--max-tiles", "4", "--num-frames", "4", "--workers", "2"]

    def data_cli(*argv):
        return subprocess.run([sys.executable, "-m", "megatron_sail.cli", "data", *argv],
                              capture_output=True, text=True, timeout=300)

    check = data_cli("check", str(dataset.jsonl), *common)
    assert check.returncode == 1, check.stderr
    for where in dataset.bad.values():
        assert where in check.stdout, (where, check.stdout[-3000:])
    prepared = data_cli("prepare", str(dataset.jsonl), "--out", str(tmp_path / "shards"),
                        "--shard-size", "20000", *common)
    assert prepared.returncode == 0, prepared.stderr
    assert f"wrote {dataset.good} samples" in prepared.stdout
    clean = data_cli("check", str(tmp_path / "shards"), *common)
    assert clean.returncode == 0, clean.stdout[-3000:]

    shard_args = [a for a in args if not a.startswith(("data.blend=", "train.train_iters=",
                                                       "train.eval_interval="))]
    sail.train(tmp_path / "run", *shard_args, f"data.blend={tmp_path / 'shards'}",
               "train.train_iters=4", "train.eval_interval=null", nproc=2)
    metrics = sail.metrics(tmp_path / "run")
    assert len(metrics) == 4 and metrics[-1]["data/skipped"] == 0


@pytest.mark.parametrize("layout", [["parallel.tensor_model_parallel_size=2"],
                                    ["parallel.pipeline_model_parallel_size=2"]],
                         ids=["tp2_sp", "pp2"])
def test_packed_rows_on_other_layouts(sail, data, straight, tmp_path, layout):
    """The same packed global batches through TP=2 + sequence parallelism (THD rows split
    over TP ranks) and PP=2 (every stage gets the sample boundaries): the DP=2 losses."""
    _, args = data
    sail.train(tmp_path, *args, *layout, "train.train_iters=4", "optimizer.lr_decay_iters=12",
               "train.eval_interval=null", nproc=2)
    assert_close_losses(sail.losses(tmp_path), sail.losses(straight), range(1, 5))
