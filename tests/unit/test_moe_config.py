"""Start-up validation of Mixture-of-Experts layouts and balancing options."""

from __future__ import annotations

import pytest

from megatron_sail.config import ConfigError, load_config
from megatron_sail.config.validation import resolve_layout


def layout(world, *overrides):
    return resolve_layout(load_config(None, ["model.preset=tiny-moe", *overrides]), world)


def test_presets_have_the_published_shapes():
    a3b = load_config(None, ["model.preset=sailvl2-a3b"]).model.llm
    assert (a3b.num_layers, a3b.hidden_size, a3b.num_attention_heads, a3b.num_query_groups,
            a3b.head_dim, a3b.num_experts, a3b.moe_router_topk, a3b.moe_ffn_hidden_size) == \
        (48, 2048, 32, 4, 128, 128, 8, 768)
    assert layout(2, "parallel.expert_model_parallel_size=2").ep == 2


@pytest.mark.parametrize("overrides, message", [
    (["parallel.expert_model_parallel_size=3"], "does not divide the 8 experts"),
    (["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=false"],
     "needs sequence parallelism"),
    (["model.moe.expert_bias=true"], "needs sigmoid routing"),
    (["model.moe.load_balancing=magic"], "'model.moe.load_balancing' must be one of global_aux_loss"),
    (["model.moe.token_dispatcher=flex"], "'model.moe.token_dispatcher' must be one of alltoall, allgather, got 'flex'"),
    (["model.moe.grouped_gemm=true"], "grouped_gemm needs model.transformer_impl=transformer_engine"),
    (["model.llm.moe_router_topk=9"], "moe_router_topk=9"),
])
def test_moe_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        layout(2, *overrides)


def test_sigmoid_routing_with_expert_bias_is_accepted():
    layout(1, "model.moe.router_score_function=sigmoid", "model.moe.expert_bias=true")


def test_balancing_coefficient_restores_the_gradient_megatron_divides_out():
    """The coefficient Megatron sees carries the TP factor its per-token gradient scale leaves
    out before 0.19, and for the global-batch loss the DP factor (the distributed tests compare
    the resulting gradients with one process)."""
    from packaging.version import Version

    from megatron_sail.compat import moe_router
    from megatron_sail.compat.versions import installed_megatron_core
    from megatron_sail.models.builder import llm_config

    moe_router.check()
    spans_tp = Version(installed_megatron_core()) >= Version("0.19")
    assert moe_router.balancing_loss_grad_spans_tp_cp() is spans_tp
    assert moe_router.z_loss_grad_spans_tp_cp() is spans_tp
    tp = 1 if spans_tp else 2
    for balancing, factor in (("global_aux_loss", tp * 2), ("aux_loss", tp)):
        over = ["parallel.tensor_model_parallel_size=2", f"model.moe.load_balancing={balancing}",
                "model.moe.aux_loss_coeff=1e-3", "model.moe.z_loss_coeff=1e-4"]
        cfg = load_config(None, ["model.preset=tiny-moe", *over])
        config = llm_config(cfg, resolve_layout(cfg, 4))
        assert config.moe_aux_loss_coeff == pytest.approx(1e-3 * factor)
        assert config.moe_z_loss_coeff == pytest.approx(1e-4 * tp)
