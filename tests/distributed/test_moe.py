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


# One micro-batch per rank: the global-batch balancing loss then weighs every micro-batch by the
# expert load of the whole global batch, however the ranks split it (see below).
ONE_MICRO_BATCH = "train.micro_batch_size=4"


@pytest.fixture(scope="module")
def ep1(sail, tmp_path_factory):
    """EP=1 reference runs, with and without the auxiliary loss, and with it on the whole global
    batch as one micro-batch (the reference of DP=2 with one micro-batch per rank)."""
    runs = {}
    for key, overrides in {("1.0e-3", 2): [], ("0", 2): [],
                           ("1.0e-3", 1): ["train.micro_batch_size=8"]}.items():
        out = tmp_path_factory.mktemp("moe_ep1")
        sail.train(out, *SHORT, f"model.moe.aux_loss_coeff={key[0]}", *overrides, nproc=1,
                   config=MOE)
        runs[key] = {r["iteration"]: r for r in sail.metrics(out)}
    return runs


# Gradient norms of two layouts agree to the rounding of the gradients' token sums: each
# element sums over the 8 x 64 tokens of a global batch, relative error <= eps32 * sqrt(512)
# ~= 2.7e-6, and the norm over all elements is within that (dense TP/PP/DP: 2e-7 measured).
GRAD_NORM_REL = 1e-5

# The global-batch balancing loss weighs micro-batch k by the expert load of the micro-batches
# routed so far on all DP ranks (Megatron's running sum), so it depends on how the micro-batches
# group the tokens: EP=2 (DP=2) with 2 micro-batches per rank vs EP=1 with 4 differ by 3.5e-6 in
# iteration 1's gradient norm, which Adam amplifies (2.4e-5 at iteration 2). Layouts with DP > 1
# and the balancing loss therefore run one micro-batch per rank against EP=1's single one
# (measured: 1e-7 over the three iterations).


@pytest.mark.parametrize("layout", [
    ["parallel.expert_model_parallel_size=2", ONE_MICRO_BATCH],
    ["parallel.expert_model_parallel_size=2", "model.moe.token_dispatcher=allgather",
     ONE_MICRO_BATCH],
    ["parallel.tensor_model_parallel_size=2"],  # sequence parallelism on, experts whole
    ["parallel.expert_model_parallel_size=2", "model.moe.aux_loss_coeff=0"],
    ["parallel.expert_model_parallel_size=2", "model.moe.token_dispatcher=allgather",
     "model.moe.aux_loss_coeff=0"],
], ids=["ep2_alltoall", "ep2_allgather", "tp2_sp", "ep2_alltoall_no_aux", "ep2_allgather_no_aux"])
def test_first_iterations_match_ep1(sail, ep1, tmp_path, layout):
    aux = "0" if "model.moe.aux_loss_coeff=0" in layout else "1.0e-3"
    ref = ep1[aux, 1 if ONE_MICRO_BATCH in layout else 2]
    sail.train(tmp_path, *SHORT, f"model.moe.aux_loss_coeff={aux}", *layout, nproc=2, config=MOE)
    records = sail.metrics(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert_close_losses({r["iteration"]: r["loss"] for r in records},
                        {i: r["loss"] for i, r in ref.items()}, [1, 2, 3])
    for r in records:  # the same gradients: their norm (which clipping acts on) agrees
        assert r["grad_norm"] == pytest.approx(ref[r["iteration"]]["grad_norm"], rel=GRAD_NORM_REL)


def test_global_batch_aux_loss_equals_concatenated_tokens(sail, tmp_path):
    """DP=2, one micro-batch per rank, global-batch balancing == the micro-batch aux loss of
    one process that sees all tokens of both ranks as one micro-batch."""
    batch = ["train.train_iters=1", "train.eval_interval=null", "train.global_batch_size=4"]
    sail.train(tmp_path / "dp2", *batch, "train.micro_batch_size=2", nproc=2, config=MOE)
    sail.train(tmp_path / "one", *batch, "train.micro_batch_size=4",
               "model.moe.load_balancing=aux_loss", nproc=1, config=MOE)
    dp2, one = sail.metrics(tmp_path / "dp2")[0], sail.metrics(tmp_path / "one")[0]
    assert dp2["moe/aux_loss"] == pytest.approx(one["moe/aux_loss"], rel=1e-5)
    # the same objective, so the same gradient (without the DP correction: 8.2e-5 off)
    assert dp2["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert dp2["grad_norm"] == pytest.approx(one["grad_norm"], rel=GRAD_NORM_REL)


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
