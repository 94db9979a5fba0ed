"""Speed levers across 2 processes. Overlapped gradient reduce and parameter all-gather
(performance.overlap_*) change when communication runs, not what it computes: with 2
data-parallel ranks the losses equal the plain run's, and the checkpoint written at the end
holds the last step's weights (with overlapped all-gathers they would otherwise arrive only in
the next forward). Megatron's fused cross entropy gives the plain one's losses at TP=2."""

from __future__ import annotations

from tests.helpers import assert_close_losses

COMMON = ["checkpoint.save_interval=null", "train.eval_interval=null", "run.tensorboard=false"]


def test_overlapped_communication_keeps_losses_and_checkpoints(sail, tmp_path):
    plain = tmp_path / "plain"
    sail.train(plain, "train.train_iters=4", *COMMON)
    overlapped = tmp_path / "overlapped"
    sail.train(overlapped, "train.train_iters=3", "performance.overlap_param_gather=true", *COMMON)
    # resumed from the overlapped run's final checkpoint, without overlap
    sail.train(overlapped, "train.train_iters=4", *COMMON)
    # Reduce-scatter and all-gather of the same buckets, only dispatched earlier: same sums
    assert_close_losses(sail.losses(overlapped), sail.losses(plain), range(1, 5), rel=1e-6)


def test_fused_cross_entropy_at_tp2_matches_the_plain_one(sail, tmp_path):
    runs = {}
    for fused in ("true", "false"):
        runs[fused] = tmp_path / f"fused-{fused}"
        sail.train(runs[fused], "train.train_iters=3", "train.precision=bf16",
                   "parallel.tensor_model_parallel_size=2",
                   f"performance.cross_entropy_fusion={fused}", *COMMON)
    fused, plain = sail.losses(runs["true"]), sail.losses(runs["false"])
    # the same fp32 arithmetic on the same bf16 logits, and the same bf16-rounded gradient
    assert_close_losses(fused, plain, range(1, 4), rel=1e-6)
