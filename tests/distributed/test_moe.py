"""Mixture-of-Experts LLM through Megatron-Core's MoE layer: expert parallelism, both token
dispatchers, TP + SP with experts, global-batch load balancing and routing metrics."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO, assert_close_losses

MOE = os.path.join(REPO, "examples", "tiny", "pretrain-moe.yaml")
# Three iterations: the second and third run after optimizer steps, so they check the expert
# gradients' reduction over EP/TP (and the distributed optimizer's update of sharded experts),
# not only the forward pass.
SHORT = ["train.train_iters=3", "train.eval_interval=null", "checkpoint.save_interval=null"]


@pytest.fixture(scope="module")
def ep1(sail, tmp_path_factory):
    out = tmp_path_factory.mktemp("moe_ep1")
    sail.train(out, *SHORT, nproc=1, config=MOE)
    return {r["iteration"]: r for r in sail.metrics(out)}


def _megatron_before(release: str) -> bool:
    from packaging.version import Version

    from megatron_sail.compat.versions import installed_megatron_core

    return Version(installed_megatron_core()) < Version(release)


# megatron-core 0.16.1 with TP=2 + SP and whole experts: iteration 1's loss is bit-identical to
# EP=1 but its gradient norm is 4.7e-5 relative off (dense TP=2: 2e-7), and iteration 2's loss
# 2.3e-4 relative; megatron-core 0.19.2 matches EP=1 to 4e-8 there.
_TP_SP_EXPERT_GRADS = pytest.mark.xfail(
    _megatron_before("0.17"), strict=True,
    reason="megatron-core 0.16.1: expert-layer gradients under TP+SP differ from EP=1 (~5e-5)")


@pytest.mark.parametrize("layout", [
    ["parallel.expert_model_parallel_size=2"],
    ["parallel.expert_model_parallel_size=2", "model.moe.token_dispatcher=allgather"],
    pytest.param(["parallel.tensor_model_parallel_size=2"],  # sequence parallelism on, experts whole
                 marks=_TP_SP_EXPERT_GRADS),
], ids=["ep2_alltoall", "ep2_allgather", "tp2_sp"])
def test_first_iterations_match_ep1(sail, ep1, tmp_path, layout):
    sail.train(tmp_path, *SHORT, *layout, nproc=2, config=MOE)
    records = sail.metrics(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert_close_losses({r["iteration"]: r["loss"] for r in records},
                        {i: r["loss"] for i, r in ep1.items()}, [1, 2, 3])
    for r in records:  # same gradients: norm as in the layout tests (clipping acts on it)
        assert r["grad_norm"] == pytest.approx(ep1[r["iteration"]]["grad_norm"], rel=1e-3)


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
