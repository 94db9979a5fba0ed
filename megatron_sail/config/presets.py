"""Model architectures of the SAIL-VL2 family and the tiny CPU model.

Shapes follow the public release (SAIL-ViT-Huge + Qwen3 backbones); see the README's model
table. Each preset is only a starting point: every field can be overridden in YAML or on the
command line (``model.llm.num_layers=4``) and the resolved values are saved with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from megatron_sail.config.fields import num


@dataclass
class VisionArch:
    """SAIL-ViT (AIMv2-style): conv patchify -> RMSNorm -> learned positions -> blocks."""

    num_layers: int = num(24, ge=1)
    hidden_size: int = num(1536, ge=1)
    num_attention_heads: int = num(12, ge=1)
    ffn_hidden_size: int = num(4096, ge=1)
    patch_size: int = num(14, ge=1)
    image_size: int = num(448, ge=1)  # the trained grid of the position embedding: (448 / 14)^2 = 1024
    norm_eps: float = num(1e-5, gt=0)
    select_layer: int = -1  # -1: last block after the final norm; k: raw output of block k


@dataclass
class AdapterArch:
    """Pixel shuffle (2x2 merge, "v2" order) + LayerNorm -> Linear -> GELU -> Linear."""

    downsample_ratio: float = num(0.5, gt=0, le=1)
    norm_eps: float = num(1e-5, gt=0)


def tokens_per_tile(image_size: int, patch_size: int, downsample_ratio: float = 0.5) -> int:
    """LLM tokens of one square image tile: its patch grid (``image_size / patch_size`` per
    side) merged by the adapter's pixel shuffle (ratio 0.5: 2x2 patches -> one token). The one
    place this is computed: the data pipeline, the model and the FLOP counts must agree."""
    merge = round(1 / downsample_ratio)
    return (image_size // patch_size // merge) ** 2


@dataclass
class LLMArch:
    """Qwen3 decoder: dense, or Mixture-of-Experts when ``num_experts`` is set (Qwen3-MoE:
    softmax routing, top-k probabilities renormalised, no shared expert)."""

    num_layers: int = num(28, ge=1)
    hidden_size: int = num(2048, ge=1)
    num_attention_heads: int = num(16, ge=1)
    num_query_groups: int = num(8, ge=1)
    head_dim: int = num(128, ge=1)
    ffn_hidden_size: int = num(6144, ge=1)
    vocab_size: int = num(151936, ge=1)
    rope_theta: float = num(1_000_000.0, gt=0)
    norm_eps: float = num(1e-6, gt=0)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = num(40960, ge=1)
    num_experts: Optional[int] = num(None, ge=1)  # None: dense SwiGLU MLP of ffn_hidden_size
    moe_router_topk: int = num(8, ge=1)
    moe_ffn_hidden_size: Optional[int] = num(None, ge=1)  # per-expert SwiGLU width

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None


@dataclass
class Preset:
    vision: VisionArch
    adapter: AdapterArch
    llm: LLMArch


def _sail_vit_huge() -> VisionArch:
    return VisionArch()


def _tiny_vit() -> VisionArch:
    return VisionArch(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                      image_size=112)


def _tiny_llm(**changes) -> LLMArch:
    return replace(LLMArch(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                           head_dim=16, ffn_hidden_size=160, vocab_size=256,
                           max_position_embeddings=1024), **changes)


PRESETS: dict[str, Preset] = {
    # Runs in seconds on a CPU; 4 LLM layers so PP=2 x VPP=2 has one layer per chunk; tied
    # embeddings so the tied path (embedding group across pipeline stages) is exercised.
    "tiny": Preset(vision=_tiny_vit(), adapter=AdapterArch(),
                   llm=_tiny_llm(tie_word_embeddings=True)),
    # The 2B release stores lm_head next to a tied flag and its code uses the stored one.
    "sailvl2-2b": Preset(
        vision=_sail_vit_huge(),
        adapter=AdapterArch(),
        llm=LLMArch(tie_word_embeddings=False),
    ),
    # MoE counterpart of tiny: 8 experts, top-2, so EP=2 holds 4 experts per rank.
    "tiny-moe": Preset(vision=_tiny_vit(), adapter=AdapterArch(),
                       llm=_tiny_llm(num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=64)),
    # Qwen3-30B-A3B backbone: 128 experts, top-8, expert FFN 768, no shared expert.
    "sailvl2-a3b": Preset(
        vision=_sail_vit_huge(),
        adapter=AdapterArch(),
        llm=LLMArch(
            num_layers=48, hidden_size=2048, num_attention_heads=32, num_query_groups=4,
            head_dim=128, ffn_hidden_size=6144, tie_word_embeddings=False, num_experts=128,
            moe_router_topk=8, moe_ffn_hidden_size=768,
        ),
    ),
    "sailvl2-8b": Preset(
        vision=_sail_vit_huge(),
        adapter=AdapterArch(),
        llm=LLMArch(
            num_layers=36, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
            head_dim=128, ffn_hidden_size=12288, tie_word_embeddings=False,
        ),
    ),
}
