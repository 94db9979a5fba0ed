"""Numerical parity of the Megatron-built SAIL-VL model with independent references.

The tiny model (fp32, TP = PP = 1, CPU) gets random weights everywhere (norm weights and
biases included, so that a wrong mapping cannot hide behind an all-ones / all-zeros init),
and the same weights are copied into:

* transformers' ``Aimv2VisionModel`` (``use_head=False``, no qkv/mlp bias, RMSNorm eps 1e-5,
  learned position table) - the stand-in for SAIL-ViT;
* a literal re-implementation here of InternVL's ``pixel_shuffle`` (``ps_version="v2"``) and of
  the release's ``mlp1`` adapter (LayerNorm -> Linear -> exact GELU -> Linear) from torch.nn;
* transformers' ``Qwen3ForCausalLM`` (qk-norm, GQA, RoPE theta 1e6, RMSNorm eps 1e-6).

The weight mapping is written out from Megatron-Core's layouts: the fused ``linear_qkv`` weight
holds, for each query group in turn, that group's query heads, then its key head, then its
value head; a gated ``linear_fc1`` holds [gate; up] (``silu(gate) * up``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import fp32_tolerance

IMG_CONTEXT = 5  # the fixture's default img_context_id
IMAGE = 112  # tiny preset: 112 px -> 8x8 patches of 14 px -> 16 tokens after the 2x2 merge
TOKENS_PER_IMAGE = 16
SEQ = 40



def _tolerance(cfg, expected: torch.Tensor, llm: bool = True) -> float:
    """fp32 bound for ``expected``'s computation (see ``tests.helpers.fp32_tolerance``): the
    longest sum is a hidden/FFN/sequence reduction; the path runs the ViT, the adapter's two
    linears and (for ``llm``) the LLM's layers."""
    vit, lm = cfg.model.vision, cfg.model.llm
    reduction = max(vit.hidden_size, vit.ffn_hidden_size, SEQ,
                    *((lm.hidden_size, lm.ffn_hidden_size) if llm else ()))
    depth = vit.num_layers + 2 + (lm.num_layers if llm else 0)
    return fp32_tolerance(float(expected.abs().max()), reduction, depth)


def _assert_within(ours: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str):
    diff = _max_diff(ours, expected)
    print(f"{what} max abs diff {diff:.3e} (allowed {tolerance:.3e}, "
          f"max |expected| {float(expected.abs().max()):.2f})")
    assert diff <= tolerance, f"{what}: max abs diff {diff:.3e} > {tolerance:.3e}"


# --------------------------------------------------------------------------- helpers


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter with O(1)-scaled random values (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = param.shape
            noise = torch.randn(shape, generator=gen)
            if name.endswith("bias"):
                value = 0.1 * noise
            elif param.dim() == 1:  # norm weights
                value = 1.0 + 0.2 * noise
            elif name.endswith("pos_embed"):
                value = 0.5 * noise
            elif name.endswith("word_embeddings.weight"):
                value = noise
            else:  # matrices and the conv kernel: unit-variance outputs
                value = noise / math.sqrt(math.prod(shape[1:]))
            param.copy_(value.to(param.dtype))


def _split_qkv(qkv: torch.Tensor, heads: int, groups: int, head_dim: int):
    """Megatron's fused ``linear_qkv`` weight -> HF's separate q, k, v weights.

    Rows are laid out group by group: [q heads of group g (heads/groups of them); k_g; v_g].
    """
    per_group = heads // groups
    block = (per_group + 2) * head_dim
    assert qkv.shape[0] == groups * block
    q, k, v = [], [], []
    for g in range(groups):
        rows = qkv[g * block:(g + 1) * block]
        q.append(rows[:per_group * head_dim])
        k.append(rows[per_group * head_dim:(per_group + 1) * head_dim])
        v.append(rows[(per_group + 1) * head_dim:])
    return torch.cat(q), torch.cat(k), torch.cat(v)


def _split_fc1(fc1: torch.Tensor):
    gate, up = fc1.chunk(2, dim=0)
    return gate, up


def _load(module: torch.nn.Module, state: dict, allowed_missing: tuple = ()) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= set(allowed_missing), missing


def _hf_vision(cfg, params: dict):
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    vit = cfg.model.vision
    assert vit.select_layer == -1
    config = Aimv2VisionConfig(
        hidden_size=vit.hidden_size,
        intermediate_size=vit.ffn_hidden_size,
        num_hidden_layers=vit.num_layers,
        num_attention_heads=vit.num_attention_heads,
        num_channels=3,
        image_size=vit.image_size,
        patch_size=vit.patch_size,
        rms_norm_eps=vit.norm_eps,
        qkv_bias=False,
        mlp_bias=False,
        use_head=False,
        is_native=False,
    )
    config._attn_implementation = "eager"
    ref = Aimv2VisionModel(config).float().eval()

    heads = vit.num_attention_heads
    head_dim = vit.hidden_size // heads
    p = {k[len("vision."):]: v for k, v in params.items() if k.startswith("vision.")}
    state = {
        "embeddings.patch_embed.weight": p["patch_embed.weight"],
        "embeddings.patch_embed.bias": p["patch_embed.bias"],
        "embeddings.rms_norm.weight": p["patch_norm.weight"],
        "embeddings.position_embedding.weight": p["pos_embed"],
        "rms_norm.weight": p["blocks.final_layernorm.weight"],
    }
    for i in range(vit.num_layers):
        src, dst = f"blocks.layers.{i}.", f"encoder.layers.{i}."
        q, k, v = _split_qkv(p[src + "self_attention.linear_qkv.weight"], heads, heads, head_dim)
        gate, up = _split_fc1(p[src + "mlp.linear_fc1.weight"])
        state.update({
            dst + "rms_norm1.weight": p[src + "input_layernorm.weight"],
            dst + "attention.q_proj.weight": q,
            dst + "attention.k_proj.weight": k,
            dst + "attention.v_proj.weight": v,
            dst + "attention.out_proj.weight": p[src + "self_attention.linear_proj.weight"],
            dst + "rms_norm2.weight": p[src + "pre_mlp_layernorm.weight"],
            dst + "ffn.gate_proj.weight": gate,
            dst + "ffn.up_proj.weight": up,
            dst + "ffn.down_proj.weight": p[src + "mlp.linear_fc2.weight"],
        })
    used = {"vision." + k for k in p}
    _load(ref, state)
    return ref, used


def _hf_qwen3(cfg, layout, params: dict):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    llm = cfg.model.llm
    config = Qwen3Config(
        vocab_size=layout.padded_vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.ffn_hidden_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_query_groups,
        head_dim=llm.head_dim,
        hidden_act="silu",
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.norm_eps,
        tie_word_embeddings=llm.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        attention_bias=False,
        use_sliding_window=False,
        attention_dropout=0.0,
        use_cache=False,
    )
    config._attn_implementation = "eager"
    ref = Qwen3ForCausalLM(config).float().eval()

    p = {k[len("language_model."):]: v for k, v in params.items()
         if k.startswith("language_model.")}
    embed = p["embedding.word_embeddings.weight"]
    state = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": p["decoder.final_layernorm.weight"],
    }
    if llm.tie_word_embeddings:
        assert "output_layer.weight" not in p
        state["lm_head.weight"] = embed
    else:
        state["lm_head.weight"] = p["output_layer.weight"]
    for i in range(llm.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = _split_qkv(p[src + "self_attention.linear_qkv.weight"],
                             llm.num_attention_heads, llm.num_query_groups, llm.head_dim)
        gate, up = _split_fc1(p[src + "mlp.linear_fc1.weight"])
        state.update({
            dst + "input_layernorm.weight": p[src + "input_layernorm.weight"],
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.q_norm.weight": p[src + "self_attention.q_layernorm.weight"],
            dst + "self_attn.k_norm.weight": p[src + "self_attention.k_layernorm.weight"],
            dst + "self_attn.o_proj.weight": p[src + "self_attention.linear_proj.weight"],
            dst + "post_attention_layernorm.weight": p[src + "pre_mlp_layernorm.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": p[src + "mlp.linear_fc2.weight"],
        })
    _load(ref, state)
    with torch.no_grad():  # whatever tying did, the head must hold the intended matrix
        ref.lm_head.weight.copy_(state["lm_head.weight"])
    if llm.tie_word_embeddings:
        torch.testing.assert_close(ref.lm_head.weight, ref.model.embed_tokens.weight,
                                   rtol=0, atol=0)
    used = {"language_model." + k for k in p}
    return ref, used


def internvl_pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5,
                           ps_version: str = "v2") -> torch.Tensor:
    """InternVL's ``pixel_shuffle``, written out literally (names as in the original: the
    grid axes are called w, h although the tensor is [n, rows, cols, c])."""
    n, w, h, c = x.size()
    # N, W, H, C --> N, W, H * scale, C // scale
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    # N, W, H * scale, C // scale --> N, H * scale, W, C // scale
    x = x.permute(0, 2, 1, 3).contiguous()
    # N, H * scale, W, C // scale --> N, H * scale, W * scale, C // (scale ** 2)
    x = x.view(n, int(h * scale_factor), int(w * scale_factor),
               int(c / (scale_factor * scale_factor)))
    if ps_version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


def _ref_mlp1(cfg, params: dict) -> torch.nn.Sequential:
    """The release's ``mlp1``: keys 0 (LayerNorm), 1 (Linear), 2 (GELU), 3 (Linear)."""
    merged = 4 * cfg.model.vision.hidden_size
    hidden = cfg.model.llm.hidden_size
    mlp1 = torch.nn.Sequential(
        torch.nn.LayerNorm(merged, eps=cfg.model.adapter.norm_eps),
        torch.nn.Linear(merged, hidden),
        torch.nn.GELU(),  # approximate="none": exact erf GELU
        torch.nn.Linear(hidden, hidden),
    ).float().eval()
    _load(mlp1, {
        "0.weight": params["adapter.norm.weight"],
        "0.bias": params["adapter.norm.bias"],
        "1.weight": params["adapter.mlp.linear_fc1.weight"],
        "1.bias": params["adapter.mlp.linear_fc1.bias"],
        "3.weight": params["adapter.mlp.linear_fc2.weight"],
        "3.bias": params["adapter.mlp.linear_fc2.bias"],
    })
    return mlp1


class Reference:
    """HF Aimv2 -> pixel shuffle v2 -> mlp1 -> spliced Qwen3 embeddings -> Qwen3ForCausalLM."""

    def __init__(self, cfg, layout, model):
        params = {k: v.detach().clone().float() for k, v in model.named_parameters()}
        self.vision, used_v = _hf_vision(cfg, params)
        self.llm, used_l = _hf_qwen3(cfg, layout, params)
        self.mlp1 = _ref_mlp1(cfg, params)
        used_a = {k for k in params if k.startswith("adapter.")}
        # every parameter of our model has a counterpart in the reference
        assert used_v | used_l | used_a == set(params), set(params) - (used_v | used_l | used_a)

    @torch.no_grad()
    def vit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision(pixel_values=pixel_values).last_hidden_state  # [N, h*w, C]
        n, tokens, c = out.shape
        side = int(tokens ** 0.5)
        return out.reshape(n, side, side, c).contiguous()

    @torch.no_grad()
    def visual_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.vit(pixel_values)  # [N, h, w, C]
        feats = internvl_pixel_shuffle(feats, 0.5, "v2")
        feats = feats.reshape(feats.shape[0], -1, feats.shape[-1])  # [N, h*w/4, 4C]
        return self.mlp1(feats)  # [N, h*w/4, H]

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids).clone()
        visual = self.visual_embeds(pixel_values)
        visual = visual.reshape(-1, visual.shape[-1])
        mask = input_ids == IMG_CONTEXT
        assert int(mask.sum()) == visual.shape[0]
        embeds[mask] = visual  # batch-major order of the <IMG_CONTEXT> positions
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0).expand_as(input_ids)
        return self.llm(inputs_embeds=embeds, position_ids=positions).logits


def _batch(seed: int = 1):
    """Two samples of SEQ tokens with one 16-token <IMG_CONTEXT> run each, at different
    offsets, plus two different random images."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, SEQ), generator=gen)
    ids[ids == IMG_CONTEXT] = IMG_CONTEXT + 1
    for row, start in ((0, 3), (1, 17)):
        ids[row, start:start + TOKENS_PER_IMAGE] = IMG_CONTEXT
    positions = torch.arange(SEQ).unsqueeze(0).expand(2, SEQ).contiguous()
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=gen)
    labels = torch.randint(0, 256, (2, SEQ), generator=gen)
    return ids, positions, pixels, labels


def _build(build_tiny, *overrides):
    cfg, layout, model = build_tiny(*overrides)
    assert cfg.train.precision == "fp32"
    _randomize(model)
    model.eval()
    return cfg, layout, model, Reference(cfg, layout, model)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


# --------------------------------------------------------------------------- tests


def test_pixel_shuffle_matches_internvl_v2():
    """Our pixel_shuffle_v2 reproduces InternVL's view/permute sequence bit for bit."""
    from megatron_sail.models.adapter import pixel_shuffle_v2

    x = torch.randn(3, 8, 8, 6, generator=torch.Generator().manual_seed(0))
    ref = internvl_pixel_shuffle(x, 0.5, "v2").reshape(3, 16, 24)
    torch.testing.assert_close(pixel_shuffle_v2(x), ref, rtol=0, atol=0)
    # and the documented order: token (i, j) = [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)]
    i, j = 2, 3
    expect = torch.cat([x[1, 2 * i, 2 * j], x[1, 2 * i, 2 * j + 1],
                        x[1, 2 * i + 1, 2 * j], x[1, 2 * i + 1, 2 * j + 1]])
    torch.testing.assert_close(ref[1, i * 4 + j], expect, rtol=0, atol=0)


def test_vit_matches_hf_aimv2(build_tiny):
    cfg, layout, model, ref = _build(build_tiny)
    pixels = _batch()[2]
    with torch.no_grad():
        ours = model.vision(pixels)
    expected = ref.vit(pixels)
    assert ours.shape == expected.shape == (2, 8, 8, cfg.model.vision.hidden_size)
    assert expected.abs().max() > 0.1  # not a degenerate comparison
    _assert_within(ours, expected, _tolerance(cfg, expected, llm=False), "vit")


def test_adapter_matches_reference_mlp1(build_tiny):
    cfg, layout, model, ref = _build(build_tiny)
    pixels = _batch()[2]
    with torch.no_grad():
        ours = model.adapter(model.vision(pixels))
    expected = ref.visual_embeds(pixels).reshape(-1, cfg.model.llm.hidden_size)
    assert ours.shape == expected.shape == (2 * TOKENS_PER_IMAGE, cfg.model.llm.hidden_size)
    _assert_within(ours, expected, _tolerance(cfg, expected, llm=False), "adapter")


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_full_model_logits_and_loss_match_reference(build_tiny, tied):
    overrides = () if tied else ("model.llm.tie_word_embeddings=false",)
    cfg, layout, model, ref = _build(build_tiny, *overrides)
    assert cfg.model.llm.tie_word_embeddings is tied
    assert model.share_embeddings_and_output_weights is tied
    if not tied:  # the head really is a separate matrix here
        out_w = model.language_model.output_layer.weight
        emb_w = model.language_model.embedding.word_embeddings.weight
        assert _max_diff(out_w, emb_w) > 0.1

    ids, positions, pixels, labels = _batch()
    with torch.no_grad():
        ours = model(ids, positions, pixel_values=pixels)
        loss = model(ids, positions, labels=labels, pixel_values=pixels)
    expected = ref.logits(ids, pixels)
    vocab = layout.padded_vocab_size
    assert ours.shape == expected.shape == (2, SEQ, vocab)
    assert expected.std() > 0.1
    tolerance = _tolerance(cfg, expected)
    _assert_within(ours, expected, tolerance, f"logits ({'tied' if tied else 'untied'})")

    # the image really matters: without the splice the reference logits differ by far more
    # than the tolerance
    with torch.no_grad():
        plain = ref.llm(input_ids=ids, position_ids=positions).logits
    assert _max_diff(plain, expected) > 100 * tolerance

    # per-token fp32 loss [b, s] == cross entropy of the reference logits
    expected_loss = F.cross_entropy(expected.reshape(-1, vocab).float(), labels.reshape(-1),
                                    reduction="none").reshape(labels.shape)
    assert loss.dtype == torch.float32 and loss.shape == labels.shape
    # log-softmax is 1-Lipschitz in the max norm: the logits' bound (doubled: max and
    # log-sum-exp each move by it) holds for the per-token loss
    _assert_within(loss, expected_loss, 2 * tolerance, f"loss ({'tied' if tied else 'untied'})")
