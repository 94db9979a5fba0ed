"""Turn a resolved config and layout into this rank's SAIL-VL model chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_sail.compat.moe_router import (balancing_loss_grad_spans_tp_cp,
                                             mark_expert_dp_params, z_loss_grad_spans_tp_cp)
from megatron_sail.config.validation import Layout
from megatron_sail.config.performance import cross_entropy_fused
from megatron_sail.config.schema import SailConfig
from megatron_sail.models.adapter import VisionAdapter
from megatron_sail.models.init import initialize_weights
from megatron_sail.models.sailvl import SailVLModel
from megatron_sail.models.specs import llm_block_spec
from megatron_sail.models.vision import SailViT, num_vision_blocks


def _dtype(cfg: SailConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _recompute(kind: Optional[str]) -> dict:
    if kind == "full":
        return dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    if kind == "selective":
        return dict(recompute_granularity="selective")
    return {}


def _common(cfg: SailConfig) -> dict:
    """Settings shared by every tower: no dropout, unfused kernels (``_fusions`` turns the
    performance.* ones on), our own init."""
    dtype = _dtype(cfg)
    on_gpu = torch.cuda.is_available()
    return dict(
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        # Megatron sets the tensor-parallel attributes of weights inside its initialisers, so
        # they run - as no-ops: initialize_weights() draws the layout-independent values.
        perform_initialization=True,
        init_method=_keep,
        output_layer_init_method=_keep,
        embedding_init_method=_keep,
        use_cpu_initialization=not on_gpu,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        calculate_per_token_loss=True,  # loss = mean over all loss tokens of the global batch
        init_method_std=cfg.model.init_std,
        fp8=cfg.model.fp8,
        fp8_recipe=cfg.model.fp8_recipe,
        # gloo pairs point-to-point messages between two ranks by posting order; with PP=2
        # (each stage is both neighbours of the other) a batched send of activations and
        # gradients can cross. Megatron's unbatched even/odd ordering keeps them paired.
        batch_p2p_comm=on_gpu,
    )


def _fusions(cfg: SailConfig, llm: bool) -> dict:
    """performance.* levers as Megatron settings (checked in config/performance.py): the
    SwiGLU kernel for the gated MLPs; for the LLM also fused RoPE, the native fused cross
    entropy and CUDA graphs. The adapter keeps its exact GELU (Megatron's fused one is the
    tanh approximation)."""
    perf = cfg.performance
    out = dict(bias_activation_fusion=perf.swiglu_fusion)
    if llm:
        out.update(apply_rope_fusion=perf.rope_fusion,
                   cross_entropy_loss_fusion=cross_entropy_fused(cfg),
                   cross_entropy_fusion_impl="native")
        if perf.cuda_graphs:
            out.update(cuda_graph_impl="local")
    return out


def pipeline_layout(layout: Layout) -> Optional[PipelineParallelLayerLayout]:
    if layout.pp == 1:
        return None
    stages = []
    for v in range(layout.vpp):
        for p in range(layout.pp):
            stage = ["decoder"] * layout.stage_layers[v][p]
            if v == 0 and p == 0:
                stage = ["embedding"] + stage
            if v == layout.vpp - 1 and p == layout.pp - 1:
                stage = stage + ["loss"]
            stages.append(stage)
    return PipelineParallelLayerLayout(stages, layout.pp)


def _balancing_grad_factor(balancing: str, layout: Layout) -> int:
    """What Megatron's balancing-loss gradient lacks for the loss it logs, on any layout.

    With ``calculate_per_token_loss`` the router attaches ``loss x its routed tokens`` so that
    finalize_model_grads' division by the global loss-token count leaves 1 / (micro-batches x
    DP). A micro-batch's routed tokens span the TP group (sequence-parallel shards, or copies
    without SP), which megatron-core < 0.19 leaves out: its gradient is 1/TP too small. The
    global-batch loss's token counts are reduced over TP x DP, so each DP rank's loss is
    already a partial sum of one loss: the 1/DP divides it once more, on every release.
    Scaling the coefficient corrects the gradient and leaves the logged loss (loss / coeff).
    """
    factor = 1 if balancing_loss_grad_spans_tp_cp() else layout.tp
    return factor * layout.dp if balancing == "global_aux_loss" else factor


def _moe(cfg: SailConfig, layout: Layout) -> dict:
    """Qwen3-MoE through Megatron-Core's MoE layer: softmax over the top-k logits equals
    Qwen3's renormalised top-k probabilities; router in fp32; no shared expert."""
    llm, moe = cfg.model.llm, cfg.model.moe
    if not llm.is_moe:
        return {}
    balancing = moe.load_balancing
    return dict(
        num_moe_experts=llm.num_experts,
        moe_router_topk=llm.moe_router_topk,
        moe_ffn_hidden_size=llm.moe_ffn_hidden_size or llm.ffn_hidden_size,
        moe_router_load_balancing_type=balancing,
        moe_aux_loss_coeff=0.0 if balancing == "none"
        else moe.aux_loss_coeff * _balancing_grad_factor(balancing, layout),
        moe_z_loss_coeff=None if moe.z_loss_coeff is None
        else moe.z_loss_coeff * (1 if z_loss_grad_spans_tp_cp() else layout.tp),
        moe_router_score_function=moe.router_score_function,
        moe_router_enable_expert_bias=moe.expert_bias,
        moe_router_bias_update_rate=moe.expert_bias_update_rate,
        moe_router_pre_softmax=False,
        moe_router_dtype=moe.router_dtype,
        moe_token_dispatcher_type=moe.token_dispatcher,
        moe_grouped_gemm=moe.grouped_gemm,
        moe_permute_fusion=False,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.etp,
    )


def llm_config(cfg: SailConfig, layout: Layout) -> TransformerConfig:
    llm = cfg.model.llm
    return TransformerConfig(
        num_layers=llm.num_layers,
        hidden_size=llm.hidden_size,
        num_attention_heads=llm.num_attention_heads,
        num_query_groups=llm.num_query_groups,
        kv_channels=llm.head_dim,
        ffn_hidden_size=llm.ffn_hidden_size,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=llm.norm_eps,
        add_bias_linear=False,
        qk_layernorm=True,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
        pipeline_model_parallel_layout=pipeline_layout(layout),
        sequence_parallel=layout.sequence_parallel,
        context_parallel_size=layout.cp,
        # Transformer Engine's CP attention exchanges K/V this way; the local spec's
        # LocalCoreAttention always all-gathers them.
        cp_comm_type=((cfg.parallel.cp_comm_type or "p2p")
                      if cfg.model.transformer_impl == "transformer_engine" else None),
        **_moe(cfg, layout),
        **_recompute(cfg.model.llm_recompute),
        **{**_common(cfg), **_fusions(cfg, llm=True)},
    )


def vision_config(cfg: SailConfig, layout: Layout) -> TransformerConfig:
    vit = cfg.model.vision
    blocks, _ = num_vision_blocks(vit)
    return TransformerConfig(
        num_layers=blocks,
        hidden_size=vit.hidden_size,
        num_attention_heads=vit.num_attention_heads,
        kv_channels=vit.hidden_size // vit.num_attention_heads,
        ffn_hidden_size=vit.ffn_hidden_size,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=vit.norm_eps,
        add_bias_linear=False,
        tensor_model_parallel_size=layout.vision_tp,
        sequence_parallel=False,
        **_recompute(cfg.model.vision_recompute),
        **{**_common(cfg), **_fusions(cfg, llm=False)},
    )


def adapter_config(cfg: SailConfig, layout: Layout) -> TransformerConfig:
    hidden = cfg.model.llm.hidden_size
    return TransformerConfig(
        num_layers=1,
        hidden_size=hidden,
        ffn_hidden_size=hidden,
        num_attention_heads=cfg.model.llm.num_attention_heads,  # unused; validated against TP
        gated_linear_unit=False,
        activation_func=F.gelu,  # exact (erf) GELU, as the release
        add_bias_linear=True,
        tensor_model_parallel_size=layout.tp,
        sequence_parallel=False,
        **_common(cfg),
    )


@dataclass
class ModelBuild:
    chunks: list[SailVLModel]
    llm_config: TransformerConfig


def _vision_pg_collection(layout: Layout) -> ProcessGroupCollection:
    pgs = ProcessGroupCollection.use_mpu_process_groups()
    if layout.vision_replicated:
        pgs.tp = parallel_state_singleton_group()
    if layout.cp > 1:  # the ViT is not split along the sequence (see models/sailvl.py)
        pgs.cp = parallel_state_singleton_group()
    return pgs


_SINGLETON_GROUP = None


def parallel_state_singleton_group():
    """A one-rank process group per rank (collective to create, so made once for all)."""
    global _SINGLETON_GROUP
    if _SINGLETON_GROUP is None:
        _SINGLETON_GROUP, _ = torch.distributed.new_subgroups(group_size=1)
    return _SINGLETON_GROUP


def build_model(cfg: SailConfig, layout: Layout, img_context_id: int,
                initialize: bool = True) -> ModelBuild:
    """Build, initialise and freeze this rank's model chunks (one per virtual stage).

    ``initialize=False`` leaves the weights as allocated (unset memory): for a caller that
    loads a checkpoint holding every weight next (resume, ``checkpoint.load``), so that start-up
    does not spend time drawing values that are overwritten at once."""
    lm_cfg = llm_config(cfg, layout)
    vit_pgs = _vision_pg_collection(layout) if layout.vision_replicated or layout.cp > 1 \
        else None
    chunks = []
    for vp_stage in range(layout.vpp):
        vp = vp_stage if layout.vpp > 1 else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp)
        language_model = GPTModel(
            config=lm_cfg,
            transformer_layer_spec=llm_block_spec(
                cfg.model.transformer_impl, get_num_layers_to_build(lm_cfg, vp_stage=vp),
                num_experts=cfg.model.llm.num_experts, grouped_gemm=cfg.model.moe.grouped_gemm,
                attention_kernel=cfg.model.attention,
                fused_norm=cfg.performance.rmsnorm == "fused",
            ),
            vocab_size=layout.padded_vocab_size,
            max_sequence_length=cfg.model.llm.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=cfg.model.llm.tie_word_embeddings,
            position_embedding_type="rope",
            rotary_base=int(cfg.model.llm.rope_theta),
            scatter_embedding_sequence_parallel=False,  # we scatter after splicing images
            vp_stage=vp,
        )
        vision = adapter = None
        if pre:
            vision = SailViT(
                vision_config(cfg, layout), cfg.model.vision, cfg.model.transformer_impl,
                vit_pgs or ProcessGroupCollection.use_mpu_process_groups(),
                attention_kernel=cfg.model.attention,
                fused_norm=cfg.performance.rmsnorm == "fused",
            )
            adapter = VisionAdapter(adapter_config(cfg, layout), cfg.model.adapter,
                                    cfg.model.vision.hidden_size)
        chunk = SailVLModel(
            language_model, vision, adapter, img_context_id,
            vision_replica_rank=(parallel_state.get_tensor_model_parallel_rank()
                                 if layout.vision_replicated else None),
        )
        chunks.append(chunk)

    num_layers = {"llm": cfg.model.llm.num_layers, "vision": num_vision_blocks(cfg.model.vision)[0]}
    if initialize:
        initialize_weights(chunks, cfg.train.seed, cfg.model.init_std, num_layers)
    mark_expert_dp_params(chunks, lm_cfg)  # before DDP: replicated experts reduce over TP too
    for chunk in chunks:
        if torch.cuda.is_available():  # the ViT's conv and position table are built on the host
            chunk.cuda(torch.cuda.current_device())
        if chunk.vision is not None and layout.vision_replicated:
            for param in chunk.vision.parameters():
                # identical on every TP rank: averaged over TP, counted once in grad norms
                param.average_gradients_across_tp_domain = True
                param.tensor_model_parallel = False
        _freeze(chunk, cfg.model.freeze)
    return ModelBuild(chunks=chunks, llm_config=lm_cfg)


# Checkpoint key prefix of each part model.freeze / checkpoint.reinit name.
MODULE_PREFIX = {"vision": "vision", "adapter": "adapter", "llm": "language_model"}


def _freeze(chunk: SailVLModel, parts: list[str]) -> None:
    modules = {"vision": chunk.vision, "adapter": chunk.adapter, "llm": chunk.language_model}
    for part in parts:
        if modules[part] is not None:
            modules[part].requires_grad_(False)
