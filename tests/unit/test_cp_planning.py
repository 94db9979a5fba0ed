"""The memory planner and FLOPs accounting under context parallelism."""

from __future__ import annotations

import dataclasses

from megatron_sail.config import load_config
from megatron_sail.costs.flops import train_flops_per_iteration
from megatron_sail.scaling.memory import Parallel, Workload, estimate, from_config
from megatron_sail.costs.shapes import shape_from_preset
from tests.helpers import TINY


def test_cp_splits_llm_tokens_and_optimizer_state():
    """With ring attention (TE) a CP=2 rank at 2S tokens holds what one rank holds at S,
    except that the distributed optimizer shards over DP x CP."""
    shape = shape_from_preset("sailvl2-2b")
    one = estimate(shape, Parallel(), Workload(seq_length=4096, kernels="te"))[0]
    cp2 = estimate(shape, Parallel(cp=2), Workload(seq_length=8192, kernels="te"))[0]
    assert cp2.activations == one.activations
    assert cp2.params == one.params and cp2.grads == one.grads
    assert cp2.optimizer == one.optimizer / 2


def test_local_attention_keeps_the_gathered_keys_and_values():
    shape = shape_from_preset("sailvl2-2b")
    work = Workload(seq_length=8192, kernels="local")
    te = estimate(shape, Parallel(cp=2), dataclasses.replace(work, kernels="te"))[0]
    local = estimate(shape, Parallel(cp=2), work)[0]
    plain = estimate(shape, Parallel(), dataclasses.replace(work, seq_length=4096))[0]
    extra = local.activations - plain.activations
    llm = shape.llm
    # more than nothing, less than every layer's K and V of the whole sequence at all heads
    assert 0 < extra < llm.num_layers * 8192 * 2 * 2 * llm.q_dim
    # Transformer Engine's CP attention keeps no gathered keys/values: CP costs it nothing
    # beyond the halved sequence (compared kernel with kernel: the levers differ between them)
    te_plain = estimate(shape, Parallel(), dataclasses.replace(work, kernels="te",
                                                               seq_length=4096))[0]
    assert te.activations - te_plain.activations < extra


def test_from_config_and_flops_know_cp():
    cfg = load_config(TINY, ["parallel.context_parallel_size=2"])
    _, par, _ = from_config(cfg, 4)
    assert (par.cp, par.dp, par.world) == (2, 2, 4)
    # model FLOPs of a step do not depend on the layout
    assert train_flops_per_iteration(cfg) == train_flops_per_iteration(load_config(TINY, []))
