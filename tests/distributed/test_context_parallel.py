"""Context parallelism (2 processes, gloo): CP=2 reproduces the single-process run.

Both runs see the same global batches, weights and updates; with CP each rank computes the
loss of its load-balanced half of every row (keys and values all-gathered), so the losses and
gradient norms differ from the single process only by summation order: the layout tests'
1e-4 relative bound holds with room to spare (observed ~1e-8).
"""

from __future__ import annotations

import pytest

from tests.data.dataset_fixtures import make_dataset
from tests.helpers import assert_close_losses

CP2 = ["parallel.context_parallel_size=2"]


def _assert_same_run(actual: list[dict], expected: list[dict], iterations) -> None:
    ref = {r["iteration"]: r for r in expected}
    got = {r["iteration"]: r for r in actual}
    assert_close_losses({i: got[i]["loss"] for i in iterations},
                        {i: ref[i]["loss"] for i in iterations}, iterations)
    for i in iterations:  # the same gradients, token counts and data position
        assert got[i]["grad_norm"] == pytest.approx(ref[i]["grad_norm"], rel=1e-4)
        assert got[i]["loss_tokens"] == ref[i]["loss_tokens"]
        assert got[i]["consumed_samples"] == ref[i]["consumed_samples"]


ITERS = ["train.train_iters=4", "checkpoint.save_interval=null"]


@pytest.fixture(scope="module")
def single(sail, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    sail.train(out, *ITERS, nproc=1)
    return sail.metrics(out)


def test_synthetic_cp2_matches_single_process_and_resumes_at_cp1(sail, single, tmp_path):
    """Iterations 1-3 at CP=2 equal the single process; the checkpoint CP=2 saved at
    iteration 3 resumes at CP=1 (one process) into the single process's iteration 4."""
    iters, reference = ITERS, single
    run = tmp_path / "cp2"
    sail.train(run, *iters, *CP2, "train.exit_interval=3", nproc=2)
    assert [r["iteration"] for r in sail.metrics(run)] == [1, 2, 3]
    _assert_same_run(sail.metrics(run), reference, [1, 2, 3])

    sail.train(run, *iters, nproc=1)  # CP=1 now: the same weights, optimizer and data position
    resumed = sail.metrics(run)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    _assert_same_run(resumed, reference, [4])


def test_pipeline_and_context_parallel_on_four_ranks(sail, single, tmp_path):
    """PP=2 x CP=2: hidden states of each rank's chunks cross the pipeline (Megatron sizes
    them seq / CP), every stage keeps its CP rank's chunks."""
    sail.train(tmp_path, *ITERS, *CP2, "parallel.pipeline_model_parallel_size=2", nproc=4)
    _assert_same_run(sail.metrics(tmp_path), single, [1, 2, 3, 4])


@pytest.fixture(scope="module")
def packed_data(tmp_path_factory):
    """Real JSONL records (images, multi-image, text, video) packed into rows of 256 tokens;
    every sample padded to a multiple of 4 = 2 x CP in both runs, so both see the same rows."""
    from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer

    root = tmp_path_factory.mktemp("dataset")
    dataset = make_dataset(root, bad=False)
    train_synthetic_tokenizer(str(root / "tokenizer.model"))
    return ["data.dataset=blend", "data.packing=true", f"data.blend={dataset.jsonl}",
            f"data.tokenizer={root / 'tokenizer.model'}", "data.seq_length=256",
            "data.max_tiles=2", "data.num_frames=2", "data.num_workers=0",
            "data.segment_pad_multiple=4", "train.micro_batch_size=1",
            "train.global_batch_size=2", "train.train_iters=3", "train.eval_interval=null",
            "checkpoint.save_interval=null", "optimizer.lr_warmup_iters=1"]


def test_packed_rows_cp2_match_single_process(sail, packed_data, tmp_path):
    sail.train(tmp_path / "single", *packed_data, nproc=1)
    sail.train(tmp_path / "cp2", *packed_data, *CP2, nproc=2)
    reference = sail.metrics(tmp_path / "single")
    assert all(r["samples_per_row"] > 1 for r in reference)  # segments of several lengths
    assert all(r["visual_tokens_per_rank_max"] > 0 for r in reference)  # images in the rows
    _assert_same_run(sail.metrics(tmp_path / "cp2"), reference, [1, 2, 3])
