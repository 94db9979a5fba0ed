"""The tensor shapes that FLOPs and memory depend on, independent of how a config spells them.

A small frozen view of a SAIL-VL model: the accounting code reads these instead of the config
dataclasses, so an architecture that has no preset yet (the Qwen3-30B-A3B MoE backbone, say)
can be described directly from its published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from megatron_sail.config.presets import PRESETS, LLMArch, VisionArch, tokens_per_tile


@dataclass(frozen=True)
class VisionShape:
    num_layers: int  # blocks actually run (see ``vision_blocks``)
    hidden: int
    heads: int
    ffn: int  # SwiGLU width: three hidden x ffn matrices
    patch: int = 14
    image_size: int = 448  # pixels per tile side as fed to the ViT
    final_norm: bool = True  # the released select_layer -1; other layers are taken unnormed
    trained_image_size: Optional[int] = None  # of the position embedding; None: image_size

    @property
    def patches_per_tile(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def position_embeddings(self) -> int:
        return ((self.trained_image_size or self.image_size) // self.patch) ** 2


@dataclass(frozen=True)
class MoEShape:
    """Routed SwiGLU experts; ``shared_ffn`` > 0 adds an always-on expert (not in Qwen3)."""

    num_experts: int
    top_k: int
    expert_ffn: int
    shared_ffn: int = 0


@dataclass(frozen=True)
class LLMShape:
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int  # dense SwiGLU width (unused when ``moe`` is set)
    vocab: int
    tied_embeddings: bool = False
    moe: Optional[MoEShape] = None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ModelShape:
    vision: VisionShape
    llm: LLMShape
    merge: int = 2  # pixel shuffle 0.5: 2x2 patches -> one token

    @property
    def tokens_per_tile(self) -> int:
        return tokens_per_tile(self.vision.image_size, self.vision.patch, 1 / self.merge)


def vision_blocks(arch: VisionArch) -> int:
    """ViT blocks that run for ``select_layer`` (mirrors ``models.vision.num_vision_blocks``,
    which needs Megatron at import time; a test keeps the two equal)."""
    k = arch.select_layer
    if k == -1:
        return arch.num_layers
    return k if k >= 0 else arch.num_layers + 1 + k


def shape_from_archs(vision: VisionArch, llm: LLMArch, downsample_ratio: float = 0.5,
                     image_size: Optional[int] = None) -> ModelShape:
    moe = None
    if llm.is_moe:
        moe = MoEShape(num_experts=llm.num_experts, top_k=llm.moe_router_topk,
                       expert_ffn=llm.moe_ffn_hidden_size or llm.ffn_hidden_size)
    return ModelShape(
        vision=VisionShape(
            num_layers=vision_blocks(vision), hidden=vision.hidden_size,
            heads=vision.num_attention_heads, ffn=vision.ffn_hidden_size, patch=vision.patch_size,
            image_size=image_size or vision.image_size, final_norm=vision.select_layer == -1,
            trained_image_size=vision.image_size,
        ),
        llm=LLMShape(
            num_layers=llm.num_layers, hidden=llm.hidden_size, heads=llm.num_attention_heads,
            kv_heads=llm.num_query_groups, head_dim=llm.head_dim, ffn=llm.ffn_hidden_size,
            vocab=llm.vocab_size, tied_embeddings=llm.tie_word_embeddings, moe=moe,
        ),
        merge=round(1 / downsample_ratio),
    )


def shape_from_config(cfg) -> ModelShape:
    """The shape a resolved ``SailConfig`` trains, at the data's tile size."""
    m = cfg.model
    return shape_from_archs(m.vision, m.llm, m.adapter.downsample_ratio, cfg.data.image_size)


_SAIL_VIT_HUGE = VisionShape(num_layers=24, hidden=1536, heads=12, ffn=4096,
                             trained_image_size=448)

# Published shapes (SAIL-VL2 report, Qwen3 model cards): the reference the presets are tested
# against, and what ``shape_from_preset`` uses for a name the config package does not define.
PUBLISHED: dict[str, ModelShape] = {
    "sailvl2-a3b": ModelShape(
        vision=_SAIL_VIT_HUGE,
        llm=LLMShape(num_layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128, ffn=6144,
                     vocab=151936, moe=MoEShape(num_experts=128, top_k=8, expert_ffn=768)),
    ),
}


def preset_names() -> list[str]:
    return sorted(set(PRESETS) | set(PUBLISHED))


def shape_from_preset(name: str, image_size: Optional[int] = None) -> ModelShape:
    if name in PRESETS:
        p = PRESETS[name]
        return shape_from_archs(p.vision, p.llm, p.adapter.downsample_ratio, image_size)
    if name in PUBLISHED:
        shape = PUBLISHED[name]
        if image_size:
            shape = replace(shape, vision=replace(shape.vision, image_size=image_size))
        return shape
    raise KeyError(f"unknown preset '{name}' (choose from {', '.join(preset_names())})")
