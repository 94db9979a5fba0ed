"""One declarative mapping table per model family, built from the kinds in ``kinds``.

Each entry pairs a key of Megatron's layout-independent sharded state dict with Hugging Face
names (``{layer}`` = layer index, ``{expert}`` = global expert index). The same table drives
import (HF -> Megatron), export (Megatron -> HF) and input validation (expected names and
shapes); ``--tp/--pp/--ep`` only choose the layout Megatron writes it at.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_sail.config.validation import padded_vocab_size
from megatron_sail.config.presets import LLMArch, VisionArch
from megatron_sail.config.schema import ModelConfig
from megatron_sail.convert.kinds import (
    QKV, Direct, FusedQKV, GatedMLP, Mapping, PaddedVocab, Reshaped, Shape, Tied,
)


@dataclass(frozen=True)
class Table:
    mappings: tuple[Mapping, ...]

    def __add__(self, other: "Table") -> "Table":
        return Table(self.mappings + other.mappings)

    def by_key(self) -> dict[str, Mapping]:
        return {m.megatron: m for m in self.mappings}

    def megatron_shapes(self) -> dict[str, Shape]:
        """Global shapes as stored: stacked as [layers, (experts,) ...]."""
        return {m.megatron: m.stacked + m.megatron_shape() for m in self.mappings}

    def import_shapes(self) -> dict[str, Shape]:
        return {name: shape for m in self.mappings for index in m.indices()
                for name, shape in zip(m.hf_names(index), m.hf_shapes())}

    def export_shapes(self) -> dict[str, Shape]:
        out = {}
        for m in self.mappings:
            shapes = m.hf_shapes()
            for index in m.indices():
                names = m.export_names(index)
                out.update(zip(names, shapes + (shapes[0],) * (len(names) - len(shapes))))
        return out


# ------------------------------------------------------------------------------ SAIL-ViT

# Per-layer names of the two ViT layouts: the SAIL-VL2 release (AIMv2's original modules,
# fused qkv) and transformers' Aimv2VisionModel (separate q/k/v, gate/up/down).
_VIT_NAMES = {
    "release": dict(
        patch_w="preprocessor.patchifier.proj.weight", patch_b="preprocessor.patchifier.proj.bias",
        patch_norm="preprocessor.patchifier.norm.weight", pos="preprocessor.pos_embed",
        final_norm="trunk.post_trunk_norm.weight", block="trunk.blocks.{layer}.",
        norm1="norm_1.weight", norm2="norm_2.weight", qkv=("attn.qkv.weight",),
        proj="attn.proj.weight", gate="mlp.fc1.weight", up="mlp.fc3.weight", down="mlp.fc2.weight",
    ),
    "aimv2": dict(
        patch_w="embeddings.patch_embed.weight", patch_b="embeddings.patch_embed.bias",
        patch_norm="embeddings.rms_norm.weight", pos="embeddings.position_embedding.weight",
        final_norm="rms_norm.weight", block="encoder.layers.{layer}.",
        norm1="rms_norm1.weight", norm2="rms_norm2.weight",
        qkv=("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"),
        proj="attention.out_proj.weight", gate="ffn.gate_proj.weight", up="ffn.up_proj.weight",
        down="ffn.down_proj.weight",
    ),
}


def sail_vit(arch: VisionArch, naming: str = "release", prefix: str = "vision_model.") -> Table:
    """SAIL-ViT: conv patchify, RMSNorm, learned positions, pre-norm SwiGLU blocks, final norm
    (only ``select_layer = -1`` keeps every block and the final norm in our model)."""
    if arch.select_layer != -1:
        raise ValueError("only select_layer = -1 converts: other values drop ViT blocks")
    n = _VIT_NAMES[naming]
    c, f, layers = arch.hidden_size, arch.ffn_hidden_size, arch.num_layers
    heads = arch.num_attention_heads
    grid = (arch.image_size // arch.patch_size) ** 2
    blk = prefix + n["block"]
    stacked = "vision.blocks.layers."
    pos = (Reshaped(megatron="vision.pos_embed", hf=(prefix + n["pos"],), shape=(grid, c),
                    hf_shape=(1, grid, c)) if naming == "release"
           else Direct(megatron="vision.pos_embed", hf=(prefix + n["pos"],), shape=(grid, c)))
    qkv_key = stacked + "self_attention.linear_qkv.weight"
    qkv_names = tuple(blk + q for q in n["qkv"])
    qkv = (FusedQKV(megatron=qkv_key, hf=qkv_names, layers=layers, heads=heads,
                    head_dim=c // heads, trailing=(c,)) if naming == "release"
           else QKV(megatron=qkv_key, hf=qkv_names, layers=layers, heads=heads, groups=heads,
                    head_dim=c // heads, trailing=(c,)))
    p = arch.patch_size
    return Table((
        Direct(megatron="vision.patch_embed.weight", hf=(prefix + n["patch_w"],),
               shape=(c, 3, p, p)),
        Direct(megatron="vision.patch_embed.bias", hf=(prefix + n["patch_b"],), shape=(c,)),
        Direct(megatron="vision.patch_norm.weight", hf=(prefix + n["patch_norm"],), shape=(c,)),
        pos,
        Direct(megatron=stacked + "self_attention.linear_qkv.layer_norm_weight",
               hf=(blk + n["norm1"],), layers=layers, shape=(c,)),
        qkv,
        Direct(megatron=stacked + "self_attention.linear_proj.weight", hf=(blk + n["proj"],),
               layers=layers, shape=(c, c)),
        Direct(megatron=stacked + "mlp.linear_fc1.layer_norm_weight", hf=(blk + n["norm2"],),
               layers=layers, shape=(c,)),
        GatedMLP(megatron=stacked + "mlp.linear_fc1.weight", hf=(blk + n["gate"], blk + n["up"]),
                 layers=layers, ffn=f, trailing=(c,)),
        Direct(megatron=stacked + "mlp.linear_fc2.weight", hf=(blk + n["down"],), layers=layers,
               shape=(c, f)),
        Direct(megatron="vision.blocks.final_layernorm.weight", hf=(prefix + n["final_norm"],),
               shape=(c,)),
    ))


# ------------------------------------------------------------------------------ adapter

def vision_adapter(vision_hidden: int, llm_hidden: int, prefix: str = "mlp1.") -> Table:
    """``mlp1`` = Sequential(LayerNorm, Linear, GELU, Linear) after the 2x2 pixel shuffle."""
    merged = 4 * vision_hidden
    return Table((
        Direct(megatron="adapter.norm.weight", hf=(prefix + "0.weight",), shape=(merged,)),
        Direct(megatron="adapter.norm.bias", hf=(prefix + "0.bias",), shape=(merged,)),
        Direct(megatron="adapter.mlp.linear_fc1.weight", hf=(prefix + "1.weight",),
               shape=(llm_hidden, merged)),
        Direct(megatron="adapter.mlp.linear_fc1.bias", hf=(prefix + "1.bias",),
               shape=(llm_hidden,)),
        Direct(megatron="adapter.mlp.linear_fc2.weight", hf=(prefix + "3.weight",),
               shape=(llm_hidden, llm_hidden)),
        Direct(megatron="adapter.mlp.linear_fc2.bias", hf=(prefix + "3.bias",),
               shape=(llm_hidden,)),
    ))


# ------------------------------------------------------------------------------ Qwen3

_LLM = "language_model.decoder.layers."


def _qwen3(arch: LLMArch, prefix: str, mlp: list[Mapping]) -> Table:
    """Embeddings, attention, norms and head shared by Qwen3 and Qwen3-MoE; ``mlp`` in between."""
    h, layers = arch.hidden_size, arch.num_layers
    d, heads, groups = arch.head_dim, arch.num_attention_heads, arch.num_query_groups
    padded = padded_vocab_size(arch.vocab_size)
    m = prefix + "model."
    blk = m + "layers.{layer}."

    def vocab(key: str, name: str) -> PaddedVocab:
        return PaddedVocab(megatron=key, hf=(name,), rows=arch.vocab_size, padded_rows=padded,
                           cols=h)

    embed = vocab("language_model.embedding.word_embeddings.weight", m + "embed_tokens.weight")
    mappings: list[Mapping] = [
        Tied(megatron=embed.megatron, hf=embed.hf, inner=embed, alias=prefix + "lm_head.weight")
        if arch.tie_word_embeddings else embed,
        Direct(megatron=_LLM + "self_attention.linear_qkv.layer_norm_weight",
               hf=(blk + "input_layernorm.weight",), layers=layers, shape=(h,)),
        QKV(megatron=_LLM + "self_attention.linear_qkv.weight",
            hf=tuple(blk + f"self_attn.{x}_proj.weight" for x in "qkv"), layers=layers,
            heads=heads, groups=groups, head_dim=d, trailing=(h,)),
        Direct(megatron=_LLM + "self_attention.q_layernorm.weight",
               hf=(blk + "self_attn.q_norm.weight",), layers=layers, shape=(d,)),
        Direct(megatron=_LLM + "self_attention.k_layernorm.weight",
               hf=(blk + "self_attn.k_norm.weight",), layers=layers, shape=(d,)),
        Direct(megatron=_LLM + "self_attention.linear_proj.weight",
               hf=(blk + "self_attn.o_proj.weight",), layers=layers, shape=(h, heads * d)),
        Direct(megatron=_LLM + "mlp.linear_fc1.layer_norm_weight",
               hf=(blk + "post_attention_layernorm.weight",), layers=layers, shape=(h,)),
        *mlp,
        Direct(megatron="language_model.decoder.final_layernorm.weight", hf=(m + "norm.weight",),
               shape=(h,)),
    ]
    if not arch.tie_word_embeddings:
        mappings.append(vocab("language_model.output_layer.weight", prefix + "lm_head.weight"))
    return Table(tuple(mappings))


def qwen3_dense(arch: LLMArch, prefix: str = "language_model.") -> Table:
    """Qwen3ForCausalLM: GQA with per-head q/k RMSNorm, SwiGLU, vocabulary padded for
    Megatron; tied models have no output layer and export ``lm_head`` as a copy."""
    if arch.is_moe:
        raise ValueError("qwen3_dense() is for dense LLMs")
    blk, h, f = prefix + "model.layers.{layer}.", arch.hidden_size, arch.ffn_hidden_size
    return _qwen3(arch, prefix, [
        GatedMLP(megatron=_LLM + "mlp.linear_fc1.weight",
                 hf=(blk + "mlp.gate_proj.weight", blk + "mlp.up_proj.weight"),
                 layers=arch.num_layers, ffn=f, trailing=(h,)),
        Direct(megatron=_LLM + "mlp.linear_fc2.weight", hf=(blk + "mlp.down_proj.weight",),
               layers=arch.num_layers, shape=(h, f)),
    ])


def qwen3_moe(arch: LLMArch, prefix: str = "language_model.") -> Table:
    """Qwen3MoeForCausalLM (the Hub's per-expert names): router ``gate`` and, by global expert
    index, each expert's gate/up/down (Megatron's sequential and grouped-GEMM experts share
    this sharded layout)."""
    if not arch.is_moe:
        raise ValueError("qwen3_moe() is for MoE LLMs")
    blk, h = prefix + "model.layers.{layer}.", arch.hidden_size
    f = arch.moe_ffn_hidden_size or arch.ffn_hidden_size
    layers, experts = arch.num_layers, arch.num_experts
    expert = blk + "mlp.experts.{expert}."
    return _qwen3(arch, prefix, [
        Direct(megatron=_LLM + "mlp.router.weight", hf=(blk + "mlp.gate.weight",), layers=layers,
               shape=(experts, h)),
        GatedMLP(megatron=_LLM + "mlp.experts.experts.linear_fc1.weight",
                 hf=(expert + "gate_proj.weight", expert + "up_proj.weight"), layers=layers,
                 experts=experts, ffn=f, trailing=(h,)),
        Direct(megatron=_LLM + "mlp.experts.experts.linear_fc2.weight",
               hf=(expert + "down_proj.weight",), layers=layers, experts=experts, shape=(h, f)),
    ])


def qwen3(arch: LLMArch, prefix: str = "language_model.") -> Table:
    return qwen3_moe(arch, prefix) if arch.is_moe else qwen3_dense(arch, prefix)


# ------------------------------------------------------------------------------ compositions

def sailvl_release(model: ModelConfig) -> Table:
    """The official SAIL-VL2 release: ``vision_model.*``, ``mlp1.*``, ``language_model.*``."""
    return (sail_vit(model.vision, "release", "vision_model.")
            + vision_adapter(model.vision.hidden_size, model.llm.hidden_size, "mlp1.")
            + qwen3(model.llm, "language_model."))
