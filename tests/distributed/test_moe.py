"""Mixture-of-Experts LLM through Megatron-Core's MoE layer: expert parallelism, both token
dispatchers, TP + SP with experts, global-batch load balancing and routing metrics."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO, assert_close_losses

MOE = os.path.join(REPO, "examples", "tiny", "pretrain-moe.yaml")
SHORT = ["train.train_iters=2", "train.eval_interval=null", "checkpoint.save_interval=null"]


@pytest.fixture(scope="module")
def ep1(sail, tmp_path_factory):
    out = tmp_path_factory.mktemp("moe_ep1")
    sail.train(out, *SHORT, nproc=1, config=MOE)
    return sail.losses(out)


@pytest.mark.parametrize("layout", [
    ["parallel.expert_model_parallel_size=2"],
    ["parallel.expert_model_parallel_size=2", "model.moe.token_dispatcher=allgather"],
    ["parallel.tensor_model_parallel_size=2"],  # sequence parallelism on, experts whole
], ids=["ep2_alltoall", "ep2_allgather", "tp2_sp"])
def test_first_iteration_matches_ep1(sail, ep1, tmp_path, layout):
    sail.train(tmp_path, *SHORT, *layout, nproc=2, config=MOE)
    assert_close_losses(sail.losses(tmp_path), ep1, [1])


def test_global_batch_aux_loss_equals_concatenated_tokens(sail, tmp_path):
    """DP=2, one micro-batch per rank, global-batch balancing == the micro-batch aux loss of
    one process that sees all tokens of both ranks as one micro-batch."""
    batch = ["train.train_iters=1", "train.eval_interval=null", "train.global_batch_size=4"]
    sail.train(tmp_path / "dp2", *batch, "train.micro_batch_size=2", nproc=2, config=MOE)
    sail.train(tmp_path / "one", *batch, "train.micro_batch_size=4",
               "model.moe.load_balancing=aux_loss", nproc=1, config=MOE)
    dp2 = sail.metrics(tmp_path / "dp2")[0]["moe/aux_loss"]
    one = sail.metrics(tmp_path / "one")[0]["moe/aux_loss"]
    assert dp2 == pytest.approx(one, rel=1e-5)


def test_example_trains_with_routing_metrics(sail, tmp_path):
    sail.train(tmp_path, "train.train_iters=20", "train.eval_interval=null",
               "parallel.expert_model_parallel_size=2", nproc=2, config=MOE)
    records = sail.metrics(tmp_path)
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    last = records[-1]
    for key in ("moe/aux_loss", "moe/entropy", "moe/max_over_mean_load", "moe/visual/entropy",
                "moe/text/entropy", "moe/layer_3/max_over_mean_load"):
        assert key in last, key
    loads = last["moe/layer_0/tokens_per_expert"]
    assert len(loads) == 8 and sum(loads) > 0
    assert 0.0 < last["moe/entropy"] <= 1.0 and last["moe/max_over_mean_load"] >= 1.0
