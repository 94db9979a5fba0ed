"""Context-parallel layouts: the world splits as TP x PP x CP x DP, and layouts that cannot
run are config errors naming the keys."""

from __future__ import annotations

import pytest

from megatron_sail.config import ConfigError, load_config
from megatron_sail.config.validation import resolve_layout
from tests.helpers import TINY


def _layout(world: int, *overrides: str):
    return resolve_layout(load_config(TINY, list(overrides)), world)


def test_world_is_tp_pp_cp_dp():
    lay = _layout(8, "parallel.context_parallel_size=2", "parallel.tensor_model_parallel_size=2")
    assert (lay.tp, lay.pp, lay.cp, lay.dp) == (2, 1, 2, 2)
    assert lay.segment_pad_multiple == 4  # 2 x CP
    assert _layout(2).segment_pad_multiple == 1  # no CP: samples are not padded


def test_world_not_divisible_by_cp():
    with pytest.raises(ConfigError, match=r"tensor x pipeline x context parallel size 1 x 1 x 4"):
        _layout(6, "parallel.context_parallel_size=4")


def test_seq_length_must_split_into_2cp_tp_chunks():
    # tiny: seq_length 64; CP=4 with TP=4 + SP needs a multiple of 2 x 4 x 4 = 32 -> fine;
    # seq 72 is not
    with pytest.raises(ConfigError, match=r"data.seq_length=72 must be divisible by 2 x "
                                          r"context_parallel_size x tensor_model_parallel_size = 32"):
        _layout(16, "parallel.context_parallel_size=4", "parallel.tensor_model_parallel_size=4",
                "data.seq_length=72")


def test_segment_pad_multiple_must_fit_cp():
    packed = ("data.dataset=blend", "data.packing=true", "data.blend=x.jsonl",
              "data.tokenizer=t.model")
    with pytest.raises(ConfigError, match=r"data.segment_pad_multiple=6 must be a multiple of "
                                          r"2 x context_parallel_size = 4"):
        _layout(2, *packed, "parallel.context_parallel_size=2", "data.segment_pad_multiple=6")
    with pytest.raises(ConfigError, match=r"data.seq_length=64 must be divisible by "
                                          r"data.segment_pad_multiple=24"):
        _layout(2, *packed, "parallel.context_parallel_size=2", "data.segment_pad_multiple=24")


def test_cp_comm_type_is_a_checked_choice():
    with pytest.raises(ConfigError, match="cp_comm_type"):
        load_config(TINY, ["parallel.cp_comm_type=ring"])


def test_cp_comm_type_is_for_transformer_engine_only():
    with pytest.raises(ConfigError, match=r"parallel.cp_comm_type=a2a chooses Transformer "
                                          r"Engine's CP attention"):
        _layout(2, "parallel.context_parallel_size=2", "parallel.cp_comm_type=a2a")


def test_transformer_engine_config_carries_cp_and_its_comm_type():
    """What Megatron-Core's TE attention is built from (TE itself cannot run here): the LLM
    config has the CP size and the chosen exchange; the ViT's has no CP."""
    from megatron_sail.models.builder import llm_config, vision_config

    cfg = load_config(TINY, ["model.transformer_impl=transformer_engine",
                             "parallel.context_parallel_size=2", "parallel.cp_comm_type=a2a"])
    layout = resolve_layout(cfg, 2, cuda_available=True, te_available=True)
    llm = llm_config(cfg, layout)
    assert (llm.context_parallel_size, llm.cp_comm_type) == (2, "a2a")
    assert vision_config(cfg, layout).context_parallel_size == 1
    local = load_config(TINY, ["parallel.context_parallel_size=2"])
    assert llm_config(local, resolve_layout(local, 2)).cp_comm_type is None


def test_cp_with_moe_is_refused_until_verified():
    with pytest.raises(ConfigError, match="Mixture-of-Experts LLM is not supported yet"):
        _layout(2, "model.preset=tiny-moe", "parallel.context_parallel_size=2")


def test_a_cp_trained_checkpoint_runs_forward_without_cp():
    """Generation and conversion rebuild the checkpoint's model at their own TP x PP."""
    from megatron_sail.convert.forward import forward_config

    cfg = load_config(TINY, ["parallel.context_parallel_size=2"])
    cfg = forward_config(cfg, tp=1, pp=1, dtype="fp32", length=40)
    assert resolve_layout(cfg, 1).cp == 1
