"""Layout-independent initialisation: values depend on (seed, key, layer), never on the rank."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_sail.models.init import initial_block, initial_value

LLM_PROJ = "language_model.decoder.layers.self_attention.linear_proj.weight"
LLM_FC2 = "language_model.decoder.layers.mlp.linear_fc2.weight"
LLM_QKV = "language_model.decoder.layers.self_attention.linear_qkv.weight"
VIT_PROJ = "vision.blocks.layers.self_attention.linear_proj.weight"
LAYERS = {"llm": 8, "vision": 2}


def _value(key=LLM_QKV, shape=(32, 16), seed=1, offsets=(0,), std=0.02, layers=LAYERS):
    return initial_value(key, shape, seed, offsets, std, layers)


def test_deterministic_per_seed_key_and_layer():
    a = _value()
    b = _value()
    assert torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == (32, 16)


def test_differs_across_keys_layers_and_seeds():
    base = _value()
    assert not torch.allclose(base, _value(key=LLM_QKV.replace("linear_qkv", "linear_qkv2")))
    assert not torch.allclose(base, _value(offsets=(1,)))
    assert not torch.allclose(base, _value(seed=2))
    # no layer offset at all is also a distinct identity
    assert not torch.allclose(base, _value(offsets=()))


@pytest.mark.parametrize("key,shape", [
    ("language_model.decoder.final_layernorm.weight", (64,)),
    ("language_model.decoder.layers.self_attention.q_layernorm.weight", (16,)),
    ("language_model.decoder.layers.self_attention.linear_qkv.layer_norm_weight", (64,)),
    ("vision.patch_norm.weight", (64,)),
    ("vision.blocks.final_layernorm.weight", (64,)),
    ("adapter.norm.weight", (256,)),
])
def test_norm_weights_are_ones(key, shape):
    assert torch.equal(_value(key=key, shape=shape), torch.ones(shape))


@pytest.mark.parametrize("key,shape", [
    ("adapter.norm.bias", (256,)),
    ("adapter.mlp.linear_fc1.bias", (64,)),
    ("vision.patch_embed.bias", (64,)),
    ("language_model.decoder.layers.self_attention.linear_qkv.layer_norm_bias", (64,)),
])
def test_biases_are_zeros(key, shape):
    assert torch.equal(_value(key=key, shape=shape), torch.zeros(shape))


def test_plain_weights_have_init_std():
    w = _value(shape=(512, 512), std=0.02)
    assert w.std().item() == pytest.approx(0.02, rel=0.03)
    assert abs(w.mean().item()) < 0.02 * 0.02
    # the position table is 2-D, so it is drawn, not set to ones despite having no "norm"
    pos = _value(key="vision.pos_embed", shape=(256, 64))
    assert pos.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("key,tower", [(LLM_PROJ, "llm"), (LLM_FC2, "llm"), (VIT_PROJ, "vision"),
                                       ("vision.blocks.layers.mlp.linear_fc2.weight", "vision")])
def test_residual_outputs_are_scaled(key, tower):
    std = 0.02
    w = _value(key=key, shape=(512, 512), std=std)
    expected = std / math.sqrt(2 * LAYERS[tower])
    assert w.std().item() == pytest.approx(expected, rel=0.03)


def test_adapter_fc2_is_not_scaled():
    # not inside a transformer layer stack: plain std
    w = _value(key="adapter.mlp.linear_fc2.weight", shape=(512, 512), std=0.02)
    assert w.std().item() == pytest.approx(0.02, rel=0.03)


# ---- on the built tiny model ---------------------------------------------------------------

def _tensors(model):
    return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_same_seed_same_model_different_seed_different_model(build_tiny):
    _, _, m1 = build_tiny()
    _, _, m2 = build_tiny()
    _, _, m3 = build_tiny("train.seed=4321")
    s1, s2, s3 = _tensors(m1), _tensors(m2), _tensors(m3)
    assert s1.keys() == s2.keys() == s3.keys() and len(s1) > 20
    for key in s1:
        assert torch.equal(s1[key], s2[key]), key
    random_keys = [k for k in s1 if s1[k].dim() >= 2]
    assert random_keys
    for key in random_keys:
        assert not torch.equal(s1[key], s3[key]), key
    for key in s1:
        if "norm" in key and s1[key].dim() == 1:
            assert torch.equal(s1[key], s3[key]), key  # ones whatever the seed


def test_built_weights_are_the_full_initial_values(build_tiny):
    cfg, _, model = build_tiny()
    seed, std = cfg.train.seed, cfg.model.init_std
    layers = {"llm": cfg.model.llm.num_layers, "vision": cfg.model.vision.num_layers}
    decoder = model.language_model.decoder
    for i, layer in enumerate(decoder.layers):
        w = layer.self_attention.linear_proj.weight
        expected = initial_value(LLM_PROJ, tuple(w.shape), seed, (i,), std, layers)
        assert torch.equal(w, expected), i
        # both halves of the gated fc1 come from one full tensor
        fc1 = layer.mlp.linear_fc1.weight
        expected = initial_value("language_model.decoder.layers.mlp.linear_fc1.weight",
                                 tuple(fc1.shape), seed, (i,), std, layers)
        assert torch.equal(fc1, expected), i
    assert not torch.equal(decoder.layers[0].self_attention.linear_proj.weight,
                           decoder.layers[1].self_attention.linear_proj.weight)
    emb = model.language_model.embedding.word_embeddings.weight
    assert torch.equal(emb, initial_value("language_model.embedding.word_embeddings.weight",
                                          tuple(emb.shape), seed, (), std, layers))


def test_built_model_residual_std_and_norms(build_tiny):
    cfg, _, model = build_tiny()
    std = cfg.model.init_std
    llm_layers, vit_layers = cfg.model.llm.num_layers, cfg.model.vision.num_layers
    proj = torch.stack([l.self_attention.linear_proj.weight for l in model.language_model.decoder.layers])
    assert proj.std().item() == pytest.approx(std / math.sqrt(2 * llm_layers), rel=0.05)
    vit_proj = torch.stack([l.self_attention.linear_proj.weight for l in model.vision.blocks.layers])
    assert vit_proj.std().item() == pytest.approx(std / math.sqrt(2 * vit_layers), rel=0.05)
    qkv = torch.stack([l.self_attention.linear_qkv.weight for l in model.language_model.decoder.layers])
    assert qkv.std().item() == pytest.approx(std, rel=0.05)
    assert torch.equal(model.vision.patch_norm.weight, torch.ones_like(model.vision.patch_norm.weight))
    assert torch.equal(model.adapter.norm.bias, torch.zeros_like(model.adapter.norm.bias))
    assert torch.equal(model.adapter.mlp.linear_fc1.bias, torch.zeros_like(model.adapter.mlp.linear_fc1.bias))
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name


@pytest.mark.parametrize("shape,offsets,block", [
    ((48, 40), (16, 8), (16, 24)),          # a column- and row-parallel shard at once
    ((6, 10, 12), (2, 0, 6), (3, 10, 6)),   # 3-D (grouped experts' per-expert axes)
    ((37,), (5,), (19,)),                   # odd 1-D
])
def test_a_shard_is_drawn_alone_and_equals_that_slice_of_the_full_tensor(shape, offsets, block):
    full = initial_value(LLM_QKV, shape, 5, (3,), 0.02, LAYERS)
    shard = initial_block(LLM_QKV, shape, offsets, block, 5, (3,), 0.02, LAYERS)
    index = tuple(slice(o, o + n) for o, n in zip(offsets, block))
    assert torch.equal(shard, full[index])


def test_big_shards_are_drawn_in_slabs_with_the_same_values(monkeypatch):
    import megatron_sail.models.init as init

    whole = initial_block(LLM_QKV, (64, 30), (8, 3), (40, 20), 9, (), 1.0, LAYERS)
    monkeypatch.setattr(init, "_CHUNK", 50)  # several rows per pass, a ragged last pass
    assert torch.equal(initial_block(LLM_QKV, (64, 30), (8, 3), (40, 20), 9, (), 1.0, LAYERS),
                       whole)


def test_draws_are_standard_normal():
    n = 1_000_000
    x = initial_value(LLM_QKV, (n,), 11, (), 1.0, LAYERS).double()
    # Sampling error of the mean is 1/sqrt(n) = 1e-3, of the std about 0.7e-3: 5 sigma bounds.
    assert abs(x.mean()) < 5e-3
    assert abs(x.std() - 1.0) < 3.5e-3
    # Neighbouring elements (consecutive generator outputs) are uncorrelated.
    assert abs(torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1]) < 5e-3
    # Tails as a normal's: P(|x| > 2) = 4.55%, sampling error about 0.02%.
    assert abs((x.abs() > 2).double().mean() - 0.0455) < 1.5e-3
