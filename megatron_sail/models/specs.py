"""Layer specs: which module builds each part of a SAIL-ViT block or a Qwen3 layer.

Two backends, chosen by ``model.transformer_impl``: Megatron-Core's local modules with our
sequence-parallel RMSNorm (CPU and GPU), or Transformer Engine modules (GPU; import-guarded
so that nothing here needs TE unless it is asked for).
"""

from __future__ import annotations

import copy
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_sail.models.attention import LocalCoreAttention
from megatron_sail.models.norms import RMSNorm


def rms_norm_spec(fused: bool) -> ModuleSpec:
    """Our RMSNorm, torch's fused kernel or the fp32 formula (performance.rmsnorm)."""
    return ModuleSpec(module=RMSNorm, params={"fused": fused})


def _local_layer_spec(qk_norm: bool, num_experts: Optional[int] = None,
                      attention_kernel: str = "sdpa", fused_norm: bool = False) -> ModuleSpec:
    spec = copy.deepcopy(get_gpt_layer_local_spec(
        num_experts=num_experts, qk_layernorm=qk_norm, normalization="RMSNorm"))
    norm = rms_norm_spec(fused_norm)
    spec.submodules.input_layernorm = norm
    spec.submodules.pre_mlp_layernorm = norm
    attention = spec.submodules.self_attention.submodules
    # Megatron's local attention refuses packed sequences and materialises [s, s].
    attention.core_attention = ModuleSpec(module=LocalCoreAttention,
                                          params={"fused": attention_kernel == "sdpa"})
    if qk_norm:
        attention.q_layernorm = norm
        attention.k_layernorm = norm
    return spec


def _te_layer_spec(qk_norm: bool, num_experts: Optional[int] = None,
                   grouped_gemm: bool = False) -> ModuleSpec:
    try:
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return copy.deepcopy(get_gpt_layer_with_transformer_engine_spec(
            num_experts=num_experts, moe_grouped_gemm=grouped_gemm, qk_layernorm=qk_norm))
    except (ImportError, AssertionError) as exc:  # TE missing or unusable
        raise RuntimeError(f"Transformer Engine layer specs are unavailable: {exc}") from exc


def _final_norm(impl: str, fused_norm: bool = False):
    if impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return rms_norm_spec(fused_norm)


def llm_block_spec(impl: str, num_local_layers: int, num_experts: Optional[int] = None,
                   grouped_gemm: bool = False, attention_kernel: str = "sdpa",
                   fused_norm: bool = False) -> TransformerBlockSubmodules:
    """Qwen3 decoder layers: causal GQA with per-head q/k RMSNorm, SwiGLU (dense, or routed
    experts when ``num_experts`` is set: sequential experts locally, grouped GEMM with TE)."""
    if impl == "transformer_engine":
        layer = _te_layer_spec(True, num_experts, grouped_gemm)
    else:
        layer = _local_layer_spec(True, num_experts, attention_kernel, fused_norm)
    return TransformerBlockSubmodules(
        layer_specs=[layer] * num_local_layers, layer_norm=_final_norm(impl, fused_norm)
    )


def vision_block_spec(impl: str, num_layers: int, final_norm: bool,
                      attention_kernel: str = "sdpa",
                      fused_norm: bool = False) -> TransformerBlockSubmodules:
    """SAIL-ViT blocks: the same layer with bidirectional attention and no q/k norm."""
    layer = _te_layer_spec(False) if impl == "transformer_engine" \
        else _local_layer_spec(False, attention_kernel=attention_kernel, fused_norm=fused_norm)
    layer.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.no_mask}
    return TransformerBlockSubmodules(
        layer_specs=[layer] * num_layers,
        layer_norm=_final_norm(impl, fused_norm) if final_norm else None
    )
