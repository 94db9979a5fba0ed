"""The planner's activation count per layer against an independent one: the bytes of every
tensor autograd saves for backward (torch's saved-tensor hooks), for each speed lever and
attention kernel, on a bf16 tiny model run on CPU."""

from __future__ import annotations

from collections import Counter

import pytest
import torch


SEQ = 128


def _saved_bytes_per_layer(layers, run) -> list[float]:
    """Bytes of the storages each layer's forward hands to autograd (parameters excluded).
    A storage saved by several layers (Megatron's cached causal mask) belongs to none."""
    params = {p.untyped_storage().data_ptr() for layer in layers for p in layer.parameters()}
    current, saved = [None], [dict() for _ in layers]

    def pack(t):
        if current[0] is not None:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[current[0]][storage.data_ptr()] = storage.nbytes()
        return t

    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    shared = Counter(ptr for layer in saved for ptr in layer)
    return [sum(n for ptr, n in layer.items() if shared[ptr] == 1) for layer in saved]


LEVERS = [
    ("unfused", ["performance.rmsnorm=unfused", "performance.swiglu_fusion=false"]),
    ("unfused", ["performance.rmsnorm=fused", "performance.swiglu_fusion=true"]),
    ("sdpa", ["performance.rmsnorm=unfused", "performance.swiglu_fusion=false"]),
    ("sdpa", ["performance.rmsnorm=fused", "performance.swiglu_fusion=true"]),
]


@pytest.mark.parametrize("attention,levers", LEVERS)
def test_llm_layer_activations_match_the_saved_tensors(build_tiny, attention, levers):
    from megatron_sail.scaling.memory import from_config, llm_layer_act

    cfg, _, model = build_tiny("train.precision=bf16", f"data.seq_length={SEQ}",
                               f"model.attention={attention}", *levers)
    lm = model.language_model
    tokens = torch.randint(10, cfg.model.llm.vocab_size, (1, SEQ))
    pos = torch.arange(SEQ)[None]
    # the layers' input requires grad, so that every layer saves what a trained one does
    x = lm.embedding(input_ids=tokens, position_ids=pos).detach().requires_grad_()
    measured = _saved_bytes_per_layer(
        list(lm.decoder.layers),
        lambda: lm(tokens, pos, attention_mask=None, decoder_input=x))
    shape, par, work = from_config(cfg, 1, device="cpu")
    planned = SEQ * llm_layer_act(shape.llm, par, SEQ, 2, work.kernels, None, True,
                                  norm=work.norm, fused_swiglu=work.fused_swiglu)
    # the first layer's input is the leaf x: its storage is the caller's, not the layer's
    for layer_bytes in measured[1:]:
        assert layer_bytes == planned, (measured, planned)


def test_levers_change_the_plan():
    from megatron_sail.config import load_config
    from megatron_sail.scaling.memory import estimate, from_config, peak_stage

    def planned(*overrides):
        cfg = load_config(None, ["model.preset=sailvl2-2b", "model.llm.num_layers=8",
                                 "train.precision=bf16", "data.seq_length=4096",
                                 "train.micro_batch_size=1", *overrides])
        return peak_stage(estimate(*from_config(cfg, 1, device="gpu")))

    off = planned("performance.rmsnorm=unfused", "performance.swiglu_fusion=false")
    on = planned()
    assert on.activations < off.activations
    assert planned("performance.grad_reduce_dtype=bf16").grads == on.grads / 2
    unfused = planned("model.attention=unfused")
    # [s, s] fp32 + bf16 probabilities of 16 heads in each of 8 layers, at least
    assert unfused.activations - on.activations >= 8 * 16 * 4096 ** 2 * 6


@pytest.mark.parametrize("attention,levers", LEVERS)
def test_vision_block_activations_match_the_saved_tensors(build_tiny, attention, levers):
    from megatron_sail.scaling.memory import from_config, vision_layer_act, vision_tp_of

    cfg, _, model = build_tiny("train.precision=bf16", f"model.attention={attention}", *levers)
    vit = cfg.model.vision
    tiles = 2
    pixels = torch.randn(tiles, 3, vit.image_size, vit.image_size)
    measured = _saved_bytes_per_layer(list(model.vision.blocks.layers),
                                      lambda: model.vision(pixels))
    shape, par, work = from_config(cfg, 1, device="cpu")
    planned = tiles * shape.vision.patches_per_tile * vision_layer_act(
        shape.vision, vision_tp_of(shape, par), 2, work.kernels, None, norm=work.norm,
        fused_swiglu=work.fused_swiglu)
    for block_bytes in measured[1:]:
        assert block_bytes == planned, (measured, planned)
