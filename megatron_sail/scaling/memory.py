"""Per-GPU memory of a SAIL-VL2 training layout: parameters, gradients, optimizer state and
activations, stage by stage, as this framework allocates them.

What is counted, and why:
- parameters in the training dtype; gradients in fp32 (Megatron DDP with
  ``grad_reduce_in_fp32``), full size on every rank even with the distributed optimizer;
- Adam state: fp32 main weights (bf16 only) + two moments, divided over the data-parallel
  ranks by the distributed optimizer (expert weights over the expert-data-parallel ranks);
  frozen parts have neither gradients nor optimizer state;
- activations: the tensors autograd saves for backward, per token and layer, for three
  kernel sets (``local``: Megatron's local spec with this project's fp32-computing norms and
  fused SDPA attention; ``local-unfused``: the same with Megatron's unfused attention, which
  stores the S x S probabilities; ``te``: Transformer Engine with flash attention), times the micro-batches a 1F1B pipeline stage holds (``pp - stage``),
  tensor-parallel terms divided by TP and the rest too with sequence parallelism; a frozen
  part before everything trainable saves nothing; context parallelism divides the LLM's
  tokens by CP, but the local spec's attention keeps its all-gathered keys and values
  (``cp_gathered_kv_bytes``), and the ViT runs whole on every CP rank;
- the speed levers (``performance.*``) change what the local kernels keep: torch's fused
  RMSNorm kernel (GPU) keeps its input instead of an fp32 copy and the normalised value;
  Megatron's SwiGLU kernel keeps only the FC1 output; bf16 gradient buffers halve the
  gradients. (The fused cross entropy keeps the same fp32 softmax as the plain one.)
- extras: the logits/cross-entropy working set on the last stage, Megatron's attention score
  buffer (local-unfused), and the batch (on CPU the whole per-rank batch is built up front).
Not counted: allocator fragmentation, CUDA/NCCL workspaces, optimizer-step temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron_sail.config.validation import padded_vocab_size
from megatron_sail.costs.flops import PARTS
from megatron_sail.costs.shapes import LLMShape, ModelShape, VisionShape, shape_from_config

GIB = 1024 ** 3


@dataclass(frozen=True)
class Parallel:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    etp: int = 1
    vision_tp: Optional[int] = None  # None: tp when it divides the ViT heads and FFN, else 1
    first_stage_llm_layers: Optional[int] = None  # None: an even split
    sequence_parallel: Optional[bool] = None  # None: on when tp > 1
    distributed_optimizer: bool = True
    llm_recompute: Optional[str] = None  # None | selective | full
    vision_recompute: Optional[str] = None
    cp: int = 1  # context parallel size

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def sp(self) -> bool:
        return self.tp > 1 and self.sequence_parallel is not False

    @property
    def expert_dp(self) -> int:
        return max(1, self.world // (self.pp * self.ep * self.etp))


@dataclass(frozen=True)
class Workload:
    seq_length: int = 8192
    tiles: float = 1  # per sample, thumbnail included
    micro_batch_size: int = 1
    global_batch_size: int = 512
    precision: str = "bf16"  # bf16 | fp32
    # te (GPU, flash attention) | local (Megatron's local spec with fused SDPA attention)
    # | local-unfused (local spec, Megatron's unfused attention: [s, s] probabilities)
    kernels: str = "te"
    frozen: tuple[str, ...] = ()
    device: str = "gpu"  # gpu: micro-batches moved to the GPU one at a time | cpu: host memory
    image_size: int = 448
    # the performance.* levers (defaults as in the config): torch's rms_norm, Megatron's SwiGLU
    fused_norm: bool = True
    fused_swiglu: bool = True
    grad_bytes: int = 4  # 2 with performance.grad_reduce_dtype=bf16

    @property
    def norm(self) -> str:
        """The RMSNorm's saving pattern (see ``_norm_bytes``): torch's ``rms_norm`` is one
        kernel on GPUs and a composite of fp32 operations on CPUs."""
        if not self.fused_norm:
            return "unfused"
        return "fused" if self.device == "gpu" else "composite"


@dataclass
class StageMemory:
    stage: int
    llm_layers: int
    params: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    extras: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.extras


def vision_tp_of(shape: ModelShape, par: Parallel) -> int:
    if par.vision_tp is not None:
        return par.vision_tp
    v = shape.vision
    return par.tp if v.heads % par.tp == 0 and v.ffn % par.tp == 0 else 1


# -- parameters ---------------------------------------------------------------------------

@dataclass
class Params:
    """Elements this rank holds; ``expert`` ones are sharded over the expert-DP group."""

    dense: float = 0.0
    expert: float = 0.0


def vision_params(v: VisionShape, vtp: int) -> Params:
    c = v.hidden
    front = 3 * v.patch * v.patch * c + c + c + v.position_embeddings * c  # conv+bias, norm, pos
    layer = (3 * c * c + c * c + 3 * c * v.ffn) / vtp + 2 * c
    return Params(dense=front + v.num_layers * layer + (c if v.final_norm else 0))


def adapter_params(shape: ModelShape, tp: int) -> Params:
    merged = shape.merge ** 2 * shape.vision.hidden
    h = shape.llm.hidden
    return Params(dense=2 * merged + (merged * h + h + h * h) / tp + h)


def llm_layer_params(llm: LLMShape, par: Parallel) -> Params:
    h = llm.hidden
    attention = (h * (llm.q_dim + 2 * llm.kv_dim) + llm.q_dim * h) / par.tp + 2 * llm.head_dim
    norms = 2 * h
    if llm.moe is None:
        return Params(dense=attention + norms + 3 * h * llm.ffn / par.tp)
    moe = llm.moe
    experts = moe.num_experts * 3 * h * moe.expert_ffn / (par.ep * par.etp)
    shared = 3 * h * moe.shared_ffn / par.tp
    return Params(dense=attention + norms + h * moe.num_experts + shared, expert=experts)


def count_params(shape: ModelShape) -> dict[str, float]:
    """Parameters of the whole model by part (no parallelism); ``embeddings`` is the input
    embedding plus the output layer when untied."""
    one = Parallel()
    layer = llm_layer_params(shape.llm, one)
    embedding = padded_vocab_size(shape.llm.vocab) * shape.llm.hidden
    return {
        "vision": vision_params(shape.vision, 1).dense,
        "adapter": adapter_params(shape, 1).dense,
        "llm_layers": shape.llm.num_layers * (layer.dense + layer.expert) + shape.llm.hidden,
        "embeddings": embedding * (1 if shape.llm.tied_embeddings else 2),
    }


# -- activations (bytes per token of one micro-batch, before the micro-batch count) ---------

def _norm_bytes(d: int, trains: bool, norm: str = "unfused") -> int:
    """Our RMSNorm/LayerNorm compute in fp32: they keep the fp32 input (a copy in bf16) for
    the input gradient, and the normalised value in the training dtype for the weight's.
    torch's ``rms_norm`` on GPUs (``fused``) keeps its input alone (and 1/rms per row, see
    below); on CPUs (``composite``) the normalised value stays in fp32 for the weight's."""
    if norm == "fused":
        return d
    return 4 + ((4 if norm == "composite" else d) if trains else 0)


def _swiglu_bytes(f: float, d: int, trains: bool, fused: bool) -> float:
    """A SwiGLU MLP's intermediates: FC1's output (2F) and FC2's input (F, when its weight
    trains); the unfused path also keeps silu(gate) and the offset linear half (F each)."""
    return (2 if fused else 4) * f * d + (f * d if trains else 0)


def attention_probs_bytes(heads: float, queries: float, keys: float, d: int) -> float:
    """Unfused attention keeps the fp32 softmax output (and its cast in bf16)."""
    return heads * queries * keys * (4 + (d if d != 4 else 0))


def llm_layer_act(llm: LLMShape, par: Parallel, seq: int, d: int, kernels: str,
                  recompute: Optional[str], trains: bool = True, norm: str = "unfused",
                  fused_swiglu: bool = False) -> float:
    """Saved bytes per token of one Qwen3 layer (GQA, q/k RMSNorm, RoPE, SwiGLU). A frozen
    layer (``trains=False``) still back-propagates but keeps no inputs of its linears
    (Megatron's frozen-weight linear) and no normalised values. ``norm`` is
    ``Workload.norm``; ``fused_swiglu`` Megatron's SwiGLU kernel (local kernels only)."""
    t, hs = par.tp, (par.tp if par.sp else 1)
    h, q, kv = llm.hidden, llm.q_dim / t, llm.kv_dim / t
    w = 1 if trains else 0
    if recompute == "full":
        return d * h / hs  # only the layer input; one layer is re-run at a time (see estimate)
    if llm.moe is None:
        # fc1 output (2F), silu(gate), up + offset (a new tensor); fc2 input (their product)
        mlp = _swiglu_bytes(llm.ffn / t, d, trains, fused_swiglu and kernels != "te")
    else:
        moe = llm.moe
        f = moe.expert_ffn / par.etp
        # router input and fp32 logits/probs; tokens permuted to their experts; expert SwiGLU;
        # expert outputs before the weighted un-permute
        mlp = (d * h + 4 * 2 * moe.num_experts
               + moe.top_k * (w * d * h + (4 + w) * f * d + d * h)
               + ((4 + w) * moe.shared_ffn / t * d if moe.shared_ffn else 0))
    if kernels == "te":
        # LayerNorm-Linear keeps its input (and the normalised input for the weight grad);
        # fused qkv output (q/k norm inputs, V); the reshaped query; RoPE'd q and k; flash
        # attention output (also the projection's input).
        norm_linear = 2 * (d * h / hs + w * d * h / hs)
        return norm_linear + d * (q + 2 * kv) + d * q + d * (q + kv) + d * q + mlp
    gqa = llm.heads != llm.kv_heads
    nb = _norm_bytes(d, trains, norm)
    norms = 2 * nb * h / hs
    linear_inputs = w * (2 * d * h / hs + d * q)  # qkv and fc1 inputs, proj input
    # q-norm input is a reshaped copy of q; k-norm reads a view of the fused qkv output, which
    # therefore stays alive in fp32 (and whenever V is a plain view of it, i.e. without GQA;
    # and always when the fused kernel saves that view itself).
    if norm == "fused":
        qk_norm = nb * q
        storage = d * (q + 2 * kv)
    else:
        qk_norm = nb * q + (w * d * kv if d == 4 else nb * kv)
        storage = d * (q + 2 * kv) if (d == 4 or not gqa) else 0
    # fp32 1/rms per row of every norm (two per token, one per q and k head); RoPE's cos and
    # sin for q and for k in the activations' dtype
    small = 4 * (2 / hs + (llm.heads + llm.kv_heads) / t) + 4 * d * llm.head_dim
    if recompute == "selective":  # core attention re-run in backward: its inputs only
        core = d * (q + kv) + (0 if storage else d * (q + 2 * kv))
    elif kernels == "local-unfused":  # q, k, v repeated to all heads for GQA; the softmax
        # output; Megatron's causal mask, a new [s, s] boolean in every layer (counted per
        # token as if each micro-batch had one row: an overestimate for several)
        core = d * q + (2 * d * q if gqa else d * kv) \
            + attention_probs_bytes(llm.heads / t, 1, seq, d) + seq
    else:  # the same before SDPA, which adds its fp32 log-sum-exp per head
        core = d * q + (2 * d * q if gqa else d * kv) + 4 * llm.heads / t
    return norms + linear_inputs + qk_norm + storage + core + mlp + small


def vision_layer_act(v: VisionShape, vtp: int, d: int, kernels: str,
                     recompute: Optional[str], norm: str = "unfused",
                     fused_swiglu: bool = False) -> float:
    """Saved bytes per patch of one SAIL-ViT block (bidirectional MHA, SwiGLU). Only a
    trainable ViT saves anything: it is the first part of the model."""
    c, f = v.hidden, v.ffn / vtp
    if recompute == "full":
        return d * c
    qkv = d * 3 * c / vtp  # fused qkv output: q, k, v are views of it
    if kernels == "te":
        return 2 * d * c + qkv + d * c / vtp + 2 * d * c + 5 * f * d
    probs = 0 if recompute == "selective" or kernels != "local-unfused" else \
        attention_probs_bytes(v.heads / vtp, 1, v.patches_per_tile, d)
    # fp32 1/rms per patch of both norms; SDPA's fp32 log-sum-exp per head
    small = 4 * 2 + (4 * v.heads / vtp if kernels == "local" and recompute != "selective" else 0)
    return (2 * _norm_bytes(d, True, norm) * c + 2 * d * c + qkv + d * c / vtp + probs
            + _swiglu_bytes(f, d, True, fused_swiglu) + small)


def kernels_of(cfg) -> str:
    """The Workload.kernels that a training config runs with."""
    if cfg.model.transformer_impl == "transformer_engine":
        return "te"
    return "local" if cfg.model.attention == "sdpa" else "local-unfused"


def attention_working_set(heads: float, queries: float, keys: float, d: int,
                          recompute: Optional[str]) -> float:
    """Unfused attention's largest transient: the gradients of the probabilities and of the
    scores in backward, plus the re-computed probabilities under selective recompute."""
    grads = heads * queries * keys * 8
    rerun = attention_probs_bytes(heads, queries, keys, d) if recompute == "selective" else 0
    return grads + rerun


# -- the stages -------------------------------------------------------------------------

def stage_layers(num_layers: int, pp: int, first: Optional[int]) -> list[int]:
    if pp == 1:
        return [num_layers]
    if first is None:
        if num_layers % pp:
            raise ValueError(f"{num_layers} LLM layers do not split evenly over {pp} stages")
        return [num_layers // pp] * pp
    rest = num_layers - first
    if first < 0 or rest < 0 or rest % (pp - 1):
        raise ValueError(f"first_stage_llm_layers={first} leaves {rest} layers for "
                         f"{pp - 1} stages")
    return [first] + [rest // (pp - 1)] * (pp - 1)


def _sample_data_bytes(work: Workload, seq: int) -> float:
    """tokens, positions, labels (int64) and loss mask (fp32); fp32 pixels."""
    return seq * (3 * 8 + 4) + work.tiles * 3 * work.image_size ** 2 * 4


def cp_gathered_kv_bytes(llm: LLMShape, par: Parallel, seq: int, d: int, kernels: str,
                         recompute: Optional[str]) -> float:
    """Bytes per layer and sequence that the local spec's all-gather-KV attention saves beyond
    what ``llm_layer_act`` counts for the rank's own tokens: each of its two chunks attends to
    the keys and values of its causal prefix, (2 CP + 1) / (2 CP) of the sequence together,
    repeated to all query heads under GQA (for SDPA). Transformer Engine's ring attention
    keeps only its own chunks; full recompute keeps only layer inputs."""
    if par.cp == 1 or kernels == "te" or recompute == "full":
        return 0.0
    t = par.tp
    per_key = 2 * d * (llm.q_dim if llm.heads != llm.kv_heads else llm.kv_dim) / t
    prefix = seq * (2 * par.cp + 1) / (2 * par.cp)
    return per_key * (prefix - seq / par.cp)


def estimate(shape: ModelShape, par: Parallel, work: Workload) -> list[StageMemory]:
    """Memory of every pipeline stage (the first rank of each; TP/DP ranks hold the same)."""
    llm, vit = shape.llm, shape.vision
    d = 2 if work.precision == "bf16" else 4
    vtp = vision_tp_of(shape, par)
    layers = stage_layers(llm.num_layers, par.pp, par.first_stage_llm_layers)
    microbatches = work.global_batch_size // (work.micro_batch_size * par.dp)
    mbs, seq = work.micro_batch_size, work.seq_length
    tokens = mbs * seq / par.cp  # the LLM's tokens on this rank (all of them without CP)
    patches = mbs * work.tiles * vit.patches_per_tile
    merged = mbs * work.tiles * shape.tokens_per_tile
    vocab = padded_vocab_size(llm.vocab) / par.tp
    trains = {p: p not in work.frozen for p in PARTS}
    # Autograd saves nothing for a frozen part with nothing trainable before it.
    saves = {"vision": trains["vision"], "adapter": trains["vision"] or trains["adapter"]}
    opt_bytes = 12 if d == 2 else 8  # (fp32 main weights +) Adam moments
    stages = []
    for s, n_layers in enumerate(layers):
        first, last = s == 0, s == par.pp - 1
        mem = StageMemory(stage=s, llm_layers=n_layers)
        held: list[tuple[str, Params]] = []
        layer = llm_layer_params(llm, par)
        held.append(("llm", Params(layer.dense * n_layers, layer.expert * n_layers)))
        embedding = padded_vocab_size(llm.vocab) * llm.hidden / par.tp
        if first:
            held += [("vision", vision_params(vit, vtp)),
                     ("adapter", adapter_params(shape, par.tp)), ("llm", Params(embedding))]
        if last:
            held.append(("llm", Params(llm.hidden)))  # final norm
            if not (llm.tied_embeddings and first):  # tied on one stage: shared weight
                held.append(("llm", Params(embedding)))
        for part, p in held:
            elements = p.dense + p.expert
            mem.params += elements * d
            if trains[part]:
                mem.grads += elements * work.grad_bytes
                dense_shard = par.dp * par.cp if par.distributed_optimizer else 1
                expert_shard = par.expert_dp if par.distributed_optimizer else 1
                mem.optimizer += opt_bytes * (p.dense / dense_shard + p.expert / expert_shard)

        in_flight = min(par.pp - s, microbatches)
        hs = par.tp if par.sp else 1
        levers = dict(norm=work.norm, fused_swiglu=work.fused_swiglu)
        per_mb = n_layers * tokens * llm_layer_act(llm, par, seq, d, work.kernels,
                                                    par.llm_recompute, trains["llm"], **levers)
        per_mb += n_layers * mbs * cp_gathered_kv_bytes(llm, par, seq, d, work.kernels,
                                                        par.llm_recompute)
        # Transients at the peak, whichever is largest: a layer re-run by full recompute,
        # unfused attention's backward working set, the logits next to the softmax.
        transients = [0.0]
        if n_layers:
            llm_bwd = 0.0
            if work.kernels == "local-unfused":
                llm_bwd = mbs * attention_working_set(llm.heads / par.tp, seq, seq, d,
                                                      par.llm_recompute)
            if par.llm_recompute == "full":  # the re-run layer's activations, during its backward
                llm_bwd += tokens * llm_layer_act(llm, par, seq, d, work.kernels, None,
                                                  trains["llm"], **levers)
            transients.append(llm_bwd)
        if first and saves["vision"]:
            block = vision_layer_act(vit, vtp, d, work.kernels, par.vision_recompute, **levers)
            # patch norm and final norm (ours; TE's keeps its input only)
            final = _norm_bytes(d, True, work.norm) if work.kernels != "te" else d
            ends = _norm_bytes(d, True, work.norm) + (final if vit.final_norm else 0)
            per_mb += patches * (vit.num_layers * block + ends * vit.hidden)
            per_mb += (d == 2) * mbs * work.tiles * 3 * work.image_size ** 2 * d  # conv input
            vit_bwd = 0.0
            if work.kernels == "local-unfused":
                p = vit.patches_per_tile
                vit_bwd = mbs * work.tiles * attention_working_set(vit.heads / vtp, p, p, d,
                                                                   par.vision_recompute)
            if par.vision_recompute == "full":
                vit_bwd += patches * vision_layer_act(vit, vtp, d, work.kernels, None, **levers)
            transients.append(vit_bwd)
        if first and saves["adapter"]:
            c4 = shape.merge ** 2 * vit.hidden
            w = 1 if trains["adapter"] else 0
            # LayerNorm's fp32 input, fc1 input (w), GELU input, fc2 input (w)
            per_mb += merged * (4 * c4 + w * d * c4 + (1 + w) * d * llm.hidden / par.tp)
        if last:
            w = 1 if trains["llm"] else 0
            final_norm = _norm_bytes(d, trains["llm"], work.norm) if work.kernels != "te" \
                else d * (1 + w)
            # final norm, output layer input (w), the fp32 softmax of the cross entropy
            per_mb += tokens * ((final_norm + w * d) * llm.hidden / hs + 4 * vocab)
            transients.append(tokens * vocab * (d + (4 if d == 2 else 0)))  # logits (+ fp32)
        mem.activations = in_flight * per_mb
        mem.extras = max(transients)
        mem.detail.update(activations_per_microbatch=per_mb, microbatches_in_flight=in_flight,
                          transient=max(transients))
        if work.kernels == "local-unfused":  # Megatron's reusable [b*heads, s, s] scores
            buf = mbs * (llm.heads / par.tp) * seq * seq * d if n_layers else 0
            if first:
                buf = max(buf, mbs * work.tiles * (vit.heads / vtp) * vit.patches_per_tile ** 2 * d)
            mem.extras += buf
            mem.detail["score_buffer"] = buf
        if first or last:
            sample = _sample_data_bytes(work, seq)
            if work.device == "cpu":  # every micro-batch of the rank's batch, built up front
                data = work.global_batch_size / par.dp * sample
            else:
                data = in_flight * mbs * sample
            mem.extras += data
            mem.detail["batch"] = data
        stages.append(mem)
    return stages


def peak_stage(stages: list[StageMemory]) -> StageMemory:
    return max(stages, key=lambda m: m.total)


# -- from a run config ------------------------------------------------------------------

def from_config(cfg, world_size: int, device: str = "gpu") -> tuple[ModelShape, Parallel, Workload]:
    """The planner's view of a resolved ``SailConfig`` run on ``world_size`` ranks."""
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.costs.flops import SYNTHETIC_TILES_PER_SAMPLE

    lay = resolve_layout(cfg, world_size, cuda_available=device == "gpu")  # a GPU run's plan
    p = cfg.parallel
    par = Parallel(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, etp=lay.etp,
                   vision_tp=lay.vision_tp, first_stage_llm_layers=p.first_stage_llm_layers,
                   sequence_parallel=lay.sequence_parallel,
                   distributed_optimizer=p.use_distributed_optimizer,
                   llm_recompute=cfg.model.llm_recompute,
                   vision_recompute=cfg.model.vision_recompute, cp=lay.cp)
    shape = shape_from_config(cfg)
    work = Workload(seq_length=cfg.data.seq_length, tiles=SYNTHETIC_TILES_PER_SAMPLE,
                    micro_batch_size=cfg.train.micro_batch_size,
                    global_batch_size=cfg.train.global_batch_size, precision=cfg.train.precision,
                    kernels=kernels_of(cfg),
                    frozen=tuple(cfg.model.freeze), device=device,
                    image_size=shape.vision.image_size,
                    fused_norm=cfg.performance.rmsnorm == "fused",
                    fused_swiglu=cfg.performance.swiglu_fusion,
                    grad_bytes=2 if cfg.performance.grad_reduce_dtype == "bf16" else 4)
    return shape, par, work
