"""Start-up validation: turn a config and a world size into a concrete parallel layout.

Every problem found is reported at once, in one ``ConfigError``, before any process group
or model exists.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from megatron_sail.config.loader import ConfigError
from megatron_sail.config.performance import performance_errors
from megatron_sail.config.schema import FREEZABLE, SailConfig

VOCAB_PAD_MULTIPLE = 128  # independent of TP, so every layout shares one padded vocabulary


@dataclass(frozen=True)
class Layout:
    world_size: int
    tp: int
    pp: int
    vpp: int  # 1 when virtual pipelining is off
    dp: int
    ep: int
    etp: int
    vision_tp: int
    sequence_parallel: bool
    num_microbatches: int
    padded_vocab_size: int
    # LLM decoder layers of each virtual stage, indexed [vpp_rank][pp_rank].
    stage_layers: tuple[tuple[int, ...], ...]
    cp: int = 1  # context parallel size
    segment_pad_multiple: int = 1  # packed rows pad each sample to a multiple of this

    @property
    def vision_replicated(self) -> bool:
        return self.tp > 1 and self.vision_tp == 1


def padded_vocab_size(vocab_size: int) -> int:
    return math.ceil(vocab_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def _stage_layers(num_layers: int, pp: int, vpp: int, first: int | None, errors: list[str]):
    stages = pp * vpp
    if first is None:
        if num_layers % stages:
            errors.append(
                f"model.llm.num_layers={num_layers} does not split evenly over {stages} pipeline "
                f"stages (pp={pp} x vpp={vpp}); set parallel.first_stage_llm_layers"
            )
            return None
        first = num_layers // stages
    if first < 0 or first > num_layers:
        errors.append(f"parallel.first_stage_llm_layers={first} is outside 0..{num_layers}")
        return None
    rest = num_layers - first
    if stages == 1:
        if first != num_layers:
            errors.append(
                f"parallel.first_stage_llm_layers={first} needs pipeline parallelism "
                f"(all {num_layers} layers are on the only stage)"
            )
            return None
        return ((num_layers,),)
    if rest % (stages - 1):
        errors.append(
            f"after parallel.first_stage_llm_layers={first}, the other {rest} LLM layers do not "
            f"split evenly over the remaining {stages - 1} pipeline stages"
        )
        return None
    per = rest // (stages - 1)
    flat = [first] + [per] * (stages - 1)
    return tuple(tuple(flat[v * pp + p] for p in range(pp)) for v in range(vpp))


def _check_moe(cfg: SailConfig, world_size: int, tp: int, pp: int, ep: int, etp: int,
               errors: list[str]) -> None:
    llm, moe = cfg.model.llm, cfg.model.moe
    if llm.num_experts % ep:
        errors.append(f"expert_model_parallel_size={ep} does not divide the {llm.num_experts} experts")
    if world_size % (pp * ep * etp):
        errors.append(f"world size {world_size} is not divisible by pipeline x expert x expert-"
                      f"tensor parallel size {pp} x {ep} x {etp}")
    if (llm.moe_ffn_hidden_size or llm.ffn_hidden_size) % etp:
        errors.append(f"expert_tensor_parallel_size={etp} does not divide the expert FFN size")
    if not 1 <= llm.moe_router_topk <= llm.num_experts:
        errors.append(f"model.llm.moe_router_topk={llm.moe_router_topk} must be in "
                      f"1..{llm.num_experts}")
    if moe.expert_bias and moe.router_score_function != "sigmoid":
        errors.append("model.moe.expert_bias (aux-loss-free balancing) needs sigmoid routing "
                      "(model.moe.router_score_function=sigmoid); Qwen3's softmax routing is not "
                      "supported with it by Megatron-Core")
    if moe.grouped_gemm and cfg.model.transformer_impl != "transformer_engine":
        errors.append("model.moe.grouped_gemm needs model.transformer_impl=transformer_engine on a GPU")


def resolve_layout(cfg: SailConfig, world_size: int, cuda_available: bool = False,
                   te_available: bool = False) -> Layout:
    errors: list[str] = []
    par, model, train = cfg.parallel, cfg.model, cfg.train
    vision, llm = model.vision, model.llm
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    vpp = par.virtual_pipeline_model_parallel_size or 1
    cp = par.context_parallel_size

    for name, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp),
                        ("context_parallel_size", cp),
                        ("expert_model_parallel_size", par.expert_model_parallel_size),
                        ("virtual_pipeline_model_parallel_size", vpp)):
        if value < 1:
            errors.append(f"parallel.{name}={value} must be >= 1")
    if min(tp, pp, vpp, cp) < 1:
        raise ConfigError("invalid parallel layout:\n  - " + "\n  - ".join(errors))

    dp = world_size // (tp * pp * cp)
    if world_size % (tp * pp * cp):
        errors.append(
            f"world size {world_size} is not divisible by tensor x pipeline x context parallel "
            f"size {tp} x {pp} x {cp} = {tp * pp * cp}"
        )
        dp = 1
    ep = par.expert_model_parallel_size
    etp = par.expert_tensor_parallel_size or 1
    if llm.is_moe:
        _check_moe(cfg, world_size, tp, pp, ep, etp, errors)
    elif ep != 1:
        errors.append(
            f"parallel.expert_model_parallel_size={ep} needs a Mixture-of-Experts LLM; "
            f"preset '{model.preset}' is dense"
        )
    if vpp > 1 and pp == 1:
        errors.append("parallel.virtual_pipeline_model_parallel_size > 1 needs "
                      "parallel.pipeline_model_parallel_size > 1")

    # LLM tensor parallelism.
    if llm.num_attention_heads % tp:
        errors.append(f"tensor_model_parallel_size={tp} does not divide the LLM's "
                      f"{llm.num_attention_heads} attention heads")
    if llm.num_query_groups % tp:
        errors.append(f"tensor_model_parallel_size={tp} does not divide the LLM's "
                      f"{llm.num_query_groups} key/value heads")
    if llm.num_attention_heads % llm.num_query_groups:
        errors.append(f"model.llm.num_query_groups={llm.num_query_groups} does not divide "
                      f"num_attention_heads={llm.num_attention_heads}")
    padded = padded_vocab_size(llm.vocab_size)
    if padded % tp:
        errors.append(f"the padded vocabulary ({padded}) is not divisible by "
                      f"tensor_model_parallel_size={tp}")
    if llm.ffn_hidden_size % tp:
        errors.append(f"tensor_model_parallel_size={tp} does not divide the LLM FFN size "
                      f"{llm.ffn_hidden_size}")

    sp = par.sequence_parallel if par.sequence_parallel is not None else tp > 1
    if llm.is_moe and tp > 1 and not sp:
        errors.append("an MoE LLM with tensor_model_parallel_size > 1 needs sequence parallelism "
                      "(parallel.sequence_parallel=true)")
    if sp and tp == 1:
        sp = False  # sequence parallelism is a no-op without tensor parallelism
    if sp and cp == 1 and cfg.data.seq_length % tp:
        errors.append(f"data.seq_length={cfg.data.seq_length} must be divisible by "
                      f"tensor_model_parallel_size={tp} with sequence parallelism")
    segment_multiple = _context_parallel_errors(cfg, cp, tp if sp else 1, errors)

    # Vision tensor parallelism: all TP ranks, or replicated.
    vision_tp = par.vision_tensor_parallel_size
    if vision_tp is None:
        vision_tp = tp if vision.num_attention_heads % tp == 0 and vision.ffn_hidden_size % tp == 0 else 1
    if vision_tp not in (1, tp):
        errors.append(f"parallel.vision_tensor_parallel_size={vision_tp} must be 1 (replicated "
                      f"ViT) or equal to tensor_model_parallel_size={tp}")
    elif vision.num_attention_heads % vision_tp or vision.ffn_hidden_size % vision_tp:
        errors.append(f"vision_tensor_parallel_size={vision_tp} does not divide the ViT's "
                      f"{vision.num_attention_heads} heads / FFN {vision.ffn_hidden_size}; "
                      f"use parallel.vision_tensor_parallel_size=1 (replicated ViT)")
    if model.adapter.downsample_ratio != 0.5:
        errors.append(f"model.adapter.downsample_ratio={model.adapter.downsample_ratio}: only the "
                      f"released 0.5 (2x2 pixel shuffle) is supported")
    image_size = cfg.data.image_size or vision.image_size
    if image_size % (2 * vision.patch_size):
        errors.append(f"image size {image_size} must be a multiple of {2 * vision.patch_size} px "
                      f"(patch {vision.patch_size} x the 2x2 token merge)")
    if vision.select_layer != -1 and not -vision.num_layers <= vision.select_layer < vision.num_layers:
        errors.append(f"model.vision.select_layer={vision.select_layer} is outside the "
                      f"{vision.num_layers} ViT layers")

    stage_layers = _stage_layers(llm.num_layers, pp, vpp, par.first_stage_llm_layers, errors)
    if vpp > 1 and stage_layers and any(n == 0 for row in stage_layers for n in row[1:]):
        errors.append("with virtual pipelining every virtual stage after the first needs LLM layers")

    # Batch arithmetic.
    mbs, gbs = train.micro_batch_size, train.global_batch_size
    num_microbatches = 1
    if mbs < 1 or gbs < 1:
        errors.append("train.micro_batch_size and train.global_batch_size must be >= 1")
    elif gbs % (mbs * dp):
        errors.append(f"train.global_batch_size={gbs} is not divisible by micro_batch_size x "
                      f"data-parallel size = {mbs} x {dp}")
    else:
        num_microbatches = gbs // (mbs * dp)
        if vpp > 1 and num_microbatches % pp:
            errors.append(f"virtual pipelining needs the number of micro-batches "
                          f"({num_microbatches}) to be a multiple of pipeline size {pp}")


    unknown = [f for f in model.freeze if f not in FREEZABLE]
    if unknown:
        errors.append(f"model.freeze has {unknown}; choose from {', '.join(FREEZABLE)}")
    unknown = [f for f in cfg.checkpoint.reinit if f not in FREEZABLE]
    if unknown:
        errors.append(f"checkpoint.reinit has {unknown}; choose from {', '.join(FREEZABLE)}")
    if cfg.checkpoint.reinit and not cfg.checkpoint.load:
        errors.append("checkpoint.reinit re-draws parts of the weights checkpoint.load loads; "
                      "without checkpoint.load every part is fresh already")
    if set(model.freeze) >= set(FREEZABLE):
        errors.append("model.freeze names every part: nothing would train")

    # Transformer Engine and FP8: only where they can really run.
    if model.transformer_impl == "transformer_engine" and not (te_available and cuda_available):
        errors.append("model.transformer_impl=transformer_engine needs Transformer Engine and a "
                      "CUDA GPU (install the [te] extra on a GPU machine); use local on CPU")
    if model.fp8 is not None:
        if model.transformer_impl != "transformer_engine" or not (te_available and cuda_available):
            errors.append(f"model.fp8={model.fp8} needs model.transformer_impl=transformer_engine "
                          f"with Transformer Engine on a CUDA GPU (found TE: {te_available}, "
                          f"CUDA: {cuda_available})")
        if train.precision != "bf16":
            errors.append("model.fp8 needs train.precision=bf16")
    errors += _data_errors(cfg)
    errors += performance_errors(cfg, cuda_available)

    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return Layout(
        world_size=world_size, tp=tp, pp=pp, vpp=vpp, dp=dp, ep=ep, etp=etp, vision_tp=vision_tp,
        sequence_parallel=sp, num_microbatches=num_microbatches, padded_vocab_size=padded,
        stage_layers=stage_layers, cp=cp, segment_pad_multiple=segment_multiple,
    )


def segment_pad_multiple(cfg: SailConfig) -> int:
    """What packed samples are padded to: data.segment_pad_multiple, else 2 x CP (1 without)."""
    cp = cfg.parallel.context_parallel_size
    return cfg.data.segment_pad_multiple or (2 * cp if cp > 1 else 1)


def _context_parallel_errors(cfg: SailConfig, cp: int, sp_tp: int, errors: list[str]) -> int:
    """Context parallelism cuts every sequence into 2 x CP load-balanced chunks (and each
    chunk over the TP ranks with sequence parallelism); a packed row cuts each of its samples
    so, which needs every sample padded to a multiple of 2 x CP. Returns that multiple."""
    data = cfg.data
    split = 2 * cp * sp_tp
    if cp > 1 and data.seq_length % split:
        what = f"2 x context_parallel_size{' x tensor_model_parallel_size' if sp_tp > 1 else ''}"
        errors.append(f"data.seq_length={data.seq_length} must be divisible by {what} = {split} "
                      f"(load-balanced chunks for causal attention)")
    if cp > 1 and cfg.model.llm.is_moe:
        errors.append("parallel.context_parallel_size > 1 with a Mixture-of-Experts LLM is not "
                      "supported yet: the balancing losses' scaling and routing statistics over "
                      "CP ranks are unverified")
    comm = cfg.parallel.cp_comm_type
    if comm is not None and cfg.model.transformer_impl != "transformer_engine":
        errors.append(f"parallel.cp_comm_type={comm} chooses Transformer Engine's CP attention; "
                      f"the local spec always all-gathers keys and values (leave it unset)")
    llm = cfg.model.llm
    if cp > 1 and comm == "a2a" and (llm.num_attention_heads // max(1, cfg.parallel.
                                                                    tensor_model_parallel_size)) % cp:
        errors.append(f"parallel.cp_comm_type=a2a needs the attention heads per TP rank to be "
                      f"divisible by context_parallel_size={cp}")
    multiple = segment_pad_multiple(cfg)
    if not data.packing:
        return multiple
    if cp > 1 and multiple % (2 * cp):
        errors.append(f"data.segment_pad_multiple={multiple} must be a multiple of 2 x "
                      f"context_parallel_size = {2 * cp}: each packed sample is cut into "
                      f"2 x CP chunks")
    if data.seq_length % multiple:
        errors.append(f"data.seq_length={data.seq_length} must be divisible by "
                      f"data.segment_pad_multiple={multiple} (packed samples are padded to it)")
    return multiple


def _data_errors(cfg: SailConfig) -> list[str]:
    data, train, errors = cfg.data, cfg.train, []
    if data.dataset == "blend":
        for key in ("blend", "tokenizer"):
            if not getattr(data, key):
                errors.append(f"data.dataset=blend needs data.{key}")
        for key in ("blend", "valid_blend", "tokenizer"):
            path = getattr(data, key)
            if path and not os.path.exists(path):
                errors.append(f"data.{key}={path}: no such file or directory")
        if train.eval_interval and not data.valid_blend:
            errors.append("train.eval_interval with data.dataset=blend needs data.valid_blend")
    if data.packing and train.micro_batch_size != 1:
        errors.append(f"data.packing: a micro-batch is one packed row, so "
                      f"train.micro_batch_size must be 1 (got {train.micro_batch_size}); "
                      f"train.global_batch_size counts rows (or set data.packing=false)")
    if data.anyres and cfg.model.vision.patch_size != 14:
        errors.append(f"data.anyres sizes images in 28 px cells (14 px patches, 2x2 merge); "
                      f"model.vision.patch_size is {cfg.model.vision.patch_size}")
    if data.min_tiles > data.max_tiles:
        errors.append(f"data.min_tiles={data.min_tiles} must not exceed "
                      f"data.max_tiles={data.max_tiles}")
    return errors


def step_memory_error(cfg: SailConfig, layout: Layout, local_ranks: int,
                      memory_bytes: int) -> str | None:
    """Every micro-batch of a step is built before the step runs, on every rank: refuse a
    global batch whose certain minimum on this machine (``local_ranks`` ranks; per sample its
    tokens, labels, mask and positions as int64, and a synthetic sample's one image as uint8
    pixels) exceeds the machine's memory. A lower bound, so a refusal is never wrong."""
    image = cfg.data.image_size or cfg.model.vision.image_size
    per_sample = 4 * 8 * cfg.data.seq_length
    if cfg.data.dataset == "synthetic":
        per_sample += 3 * image * image
    rows = cfg.train.global_batch_size // layout.dp
    need = rows * per_sample * local_ranks
    if need <= memory_bytes:
        return None
    gib = 1 << 30
    return (f"train.global_batch_size={cfg.train.global_batch_size}: a step builds {rows} samples "
            f"on each of {local_ranks} rank(s) here, at least {need / gib:.1f} GiB "
            f"({per_sample} bytes per sample), more than this machine's "
            f"{memory_bytes / gib:.1f} GiB of memory")
