"""The typed configuration of a run: one dataclass per concern, loaded from YAML.

Choices are ``Literal`` types and numeric ranges ``num(default, ge=..)`` fields: the loader
checks both for every key (config/fields.py); relations between keys are checked in validation.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_sail.config.fields import num
from megatron_sail.config.presets import AdapterArch, LLMArch, VisionArch
from megatron_sail.config.rl import RLConfig

FREEZABLE = ("vision", "adapter", "llm")
# Choices of data.video_backend / data.image_decoder ("auto" picks per file or per machine).
VIDEO_BACKENDS = ("auto", "dali-gpu", "dali-cpu", "pyav")
IMAGE_DECODERS = ("auto", "pillow", "dali-cpu", "dali-gpu")
GPU_KINDS = ("h100", "h100-pcie", "h200")  # the GPUs costs/hardware.py knows
CHAT_TEMPLATES = ("univl-chat", "chatml")  # data/encoding/conversation.py renders both
MAX_GLOBAL_BATCH = 1 << 24   # samples per step; SAIL-VL2 trains with a few thousand
MAX_SEQ_LENGTH = 1 << 20
Recompute = Optional[Literal["selective", "full"]]


@dataclass
class MoEConfig:
    """Routing and balancing of Mixture-of-Experts LLMs (ignored by dense presets)."""

    # global_aux_loss: expert load aggregated over the global batch (data-parallel ranks and
    # micro-batches) before the loss, as Qwen3 and SAIL-VL2 do; aux_loss: per micro-batch;
    # seq_aux_loss: per sequence; none.
    load_balancing: Literal["global_aux_loss", "aux_loss", "seq_aux_loss", "none"] = \
        "global_aux_loss"
    aux_loss_coeff: float = num(1e-3, ge=0)
    z_loss_coeff: Optional[float] = num(None, ge=0)
    router_score_function: Literal["softmax", "sigmoid"] = "softmax"  # Qwen3; sigmoid for aux-loss-free bias routing
    expert_bias: bool = False  # aux-loss-free balancing (sigmoid routing only)
    expert_bias_update_rate: float = num(1e-3, ge=0)
    token_dispatcher: Literal["alltoall", "allgather"] = "alltoall"
    grouped_gemm: bool = False  # needs TE or the grouped_gemm package on a GPU
    router_dtype: Literal["fp32", "fp64"] = "fp32"


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | tiny-moe | sailvl2-2b | sailvl2-8b | sailvl2-a3b
    vision: VisionArch = field(default_factory=VisionArch)
    adapter: AdapterArch = field(default_factory=AdapterArch)
    llm: LLMArch = field(default_factory=LLMArch)
    moe: MoEConfig = field(default_factory=MoEConfig)
    freeze: list[str] = field(default_factory=list)  # any of vision, adapter, llm
    transformer_impl: Literal["local", "transformer_engine"] = "local"  # local | transformer_engine (GPU + TE)
    # Core attention of the local spec: sdpa (torch's fused scaled-dot-product attention:
    # flash kernels on GPUs) | unfused (Megatron's reference math, [s, s] probabilities).
    # Packed sequences always take the sdpa path.
    attention: Literal["sdpa", "unfused"] = "sdpa"
    fp8: Optional[Literal["hybrid", "e4m3"]] = None  # (needs transformer_engine on a GPU)
    fp8_recipe: Literal["delayed", "tensorwise"] = "delayed"  # tensorwise: current scaling
    vision_recompute: Recompute = None
    llm_recompute: Recompute = None
    init_std: float = num(0.02, gt=0)
    img_context_token_id: Optional[int] = num(None, ge=0)  # None: taken from the tokenizer


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = num(1, ge=1)
    pipeline_model_parallel_size: int = num(1, ge=1)
    virtual_pipeline_model_parallel_size: Optional[int] = num(None, ge=1)
    expert_model_parallel_size: int = num(1, ge=1)
    expert_tensor_parallel_size: Optional[int] = num(None, ge=1)  # None: 1 (experts are not TP-split)
    sequence_parallel: Optional[bool] = None  # None: on whenever TP > 1
    # ViT tensor parallelism: equal to TP, or 1 (replicated ViT on every TP rank).
    # None: TP when it divides the ViT heads, else 1.
    vision_tensor_parallel_size: Optional[int] = num(None, ge=1)
    # LLM layers on pipeline stage 0 next to the ViT (0 allowed). None: an even split.
    first_stage_llm_layers: Optional[int] = num(None, ge=0)
    use_distributed_optimizer: bool = True
    # Context parallelism: each rank of a CP group holds 2 of the 2 x CP load-balanced chunks
    # of every sequence (packed rows: of every sample).
    context_parallel_size: int = num(1, ge=1)
    # How Transformer Engine's attention exchanges keys/values under CP: p2p (ring), a2a
    # (Ulysses), allgather. None: p2p. The local spec always all-gathers them (set none).
    cp_comm_type: Optional[Literal["p2p", "a2a", "allgather"]] = None


@dataclass
class TrainConfig:
    train_iters: int = num(30, ge=1)
    global_batch_size: int = num(8, ge=1, le=MAX_GLOBAL_BATCH)
    micro_batch_size: int = num(1, ge=1, le=MAX_GLOBAL_BATCH)  # 1: a packed row (data.packing)
    seed: int = num(1234, ge=0, lt=2**32)
    log_interval: int = num(1, ge=1)
    exit_interval: Optional[int] = num(None, ge=1)  # stop (with a checkpoint) after this many iterations
    eval_interval: Optional[int] = num(None, ge=1)
    eval_iters: int = num(2, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    clip_grad: float = num(1.0, ge=0)  # 0: no clipping


@dataclass
class AdaLRSConfig:
    """AdaLRS (arXiv 2506.13274): an online search of the LR scale from the training loss's
    descent velocity (see megatron_sail/training/adalrs.py for the rule)."""

    enabled: bool = False
    window: int = num(50, ge=2)  # k: iterations per least-squares slope estimate (one decision each)
    alpha: float = num(2.0, gt=1)  # raise factor of the first raise
    alpha_decay: float = num(0.9, gt=0, le=1)  # raise factor after n LR changes: 1 + (alpha - 1) * decay^n
    beta: float = num(0.5, gt=0, lt=1)  # shrink factor of a rollback (applied to the scale before the raise)
    min_scale: float = num(0.01, gt=0, le=1)  # bounds of the scale multiplying the scheduled LR
    max_scale: float = num(100.0, ge=1)
    search_iters: Optional[int] = num(None, ge=1)  # no new raise after this iteration; None: whole run


@dataclass
class OptimizerConfig:
    lr: float = num(1e-3, ge=0)
    min_lr: float = num(0.0, ge=0)  # <= lr
    weight_decay: float = num(0.0, ge=0)
    adam_beta1: float = num(0.9, ge=0, lt=1)
    adam_beta2: float = num(0.95, ge=0, lt=1)
    adam_eps: float = num(1e-8, gt=0)
    lr_warmup_iters: int = num(0, ge=0)
    # None: train_iters of the first start; fixed from then on (a resumed run keeps it).
    lr_decay_iters: Optional[int] = num(None, ge=1)
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    adalrs: AdaLRSConfig = field(default_factory=AdaLRSConfig)


@dataclass
class CheckpointConfig:
    save_interval: Optional[int] = num(None, ge=1)
    keep_last: Optional[int] = num(None, ge=1)  # None keeps every checkpoint
    load: Optional[str] = None  # weights to start from when output_dir has no checkpoint
    # Parts (vision, adapter, llm) drawn afresh from train.seed after checkpoint.load, exactly as
    # a fresh run initialises them (e.g. the new adapter of basic multimodal pre-training).
    # Applied at the first start only; a resumed run keeps its trained weights.
    reinit: list[str] = field(default_factory=list)




@dataclass
class DataConfig:
    dataset: Literal["synthetic", "blend"] = "synthetic"  # synthetic (built in) | blend (the datasets data.blend names)
    seq_length: int = num(64, ge=1, le=MAX_SEQ_LENGTH)
    # A sentencepiece .model or a Hugging Face tokenizer directory (e.g. the release's);
    # None: train a small sentencepiece model into the run dir (synthetic data only).
    tokenizer: Optional[str] = None
    blend: Optional[str] = None  # blend YAML, or one JSONL file / `sail data prepare` directory
    valid_blend: Optional[str] = None  # evaluation data (dataset=blend); None: no evaluation
    # Stream packing: global_batch_size counts packed rows of seq_length tokens, and a
    # micro-batch is one row. Without packing each sample is padded to seq_length.
    packing: bool = True
    packing_buffer: Optional[int] = num(None, ge=1)  # lookahead in samples; None: 4 x global batch
    # Packed rows pad every sample to a multiple of this many tokens (context parallelism needs
    # 2 x CP). None: 2 x parallel.context_parallel_size (1 without CP). Set it alike on runs
    # that must see identical rows (e.g. a CP=1 run resuming a CP=2 one, or comparing them).
    segment_pad_multiple: Optional[int] = num(None, ge=1)
    min_tiles: int = num(1, ge=1)
    max_tiles: int = num(12, ge=1)  # dynamic tiling: 1..max tiles of image_size px (+ a thumbnail)
    use_thumbnail: bool = True
    num_frames: int = num(16, ge=1)  # uniformly sampled per video, one tile each
    # AnyRes (SAIL-ViT-AnyRes): images at about native resolution, sides in multiples of
    # 28 px, at most anyres_max_tokens LLM tokens each, packed into the ViT without padding.
    anyres: bool = False
    anyres_max_tokens: int = num(4096, ge=1)
    video_backend: Literal[VIDEO_BACKENDS] = "auto"
    # auto: DALI's GPU decoder (nvJPEG) on a GPU machine with DALI installed, else Pillow
    # (DALI's CPU decoder gives Pillow's pixels, no faster); or one of IMAGE_DECODERS
    image_decoder: Literal[IMAGE_DECODERS] = "auto"
    system_message: Optional[str] = None  # None: the chat template's default (univl-chat has one)
    # univl-chat: the release's conversation.py format (no newline after <|im_end|>, default
    # system message); chatml: Qwen's. None: univl-chat for the sailvl2-* presets, else chatml.
    chat_template: Optional[Literal[CHAT_TEMPLATES]] = None
    num_workers: int = num(2, ge=0)  # decoding processes per rank (0: in the training process)
    prefetch: int = num(2, ge=1)  # micro-batches in flight per worker
    image_size: Optional[int] = num(None, ge=1)  # None: the ViT's trained image size


@dataclass
class RunConfig:
    output_dir: str = "runs/tiny"
    tensorboard: bool = True


@dataclass
class HardwareConfig:
    """What MFU is measured against (metrics: model_tflops_per_device, mfu)."""

    gpu: Literal[GPU_KINDS] = "h100"
    # Dense TFLOP/s per device; None: the GPU's bf16 peak (fp8 peak with model.fp8).
    # On a CPU, mfu is logged only when this is set.
    peak_tflops: Optional[float] = num(None, gt=0)


@dataclass
class PerformanceConfig:
    """Speed levers of the local (non-Transformer-Engine) path; each keeps the unfused
    path's numerics up to rounding. Relations (device, precision, spec) are checked in
    config/performance.py; README "Speed levers" has the measured effects."""

    # fused: torch.nn.functional.rms_norm (one kernel; saves its input and 1/rms only);
    # unfused: the fp32 formula of models/norms.py (saves an fp32 copy of every input)
    rmsnorm: Literal["fused", "unfused"] = "fused"
    swiglu_fusion: bool = True  # Megatron's bias_swiglu kernel in the LLM and ViT MLPs
    rope_fusion: bool = False  # Megatron's fused RoPE: a Transformer Engine kernel only
    # Megatron's native fused vocab-parallel cross entropy. Its backward rounds the logits'
    # gradient to bf16, so it needs train.precision=bf16. None: on with bf16.
    cross_entropy_fusion: Optional[bool] = None
    # Dtype of the gradient buffers and their data-parallel reduction. bf16 halves both but
    # accumulates micro-batches in bf16: only with train.precision=bf16.
    grad_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # Reduce gradient buckets while backward still runs. None: on with a CUDA GPU and DP > 1.
    overlap_grad_reduce: Optional[bool] = None
    # All-gather updated parameters during the next forward (distributed optimizer and
    # overlap_grad_reduce needed)
    overlap_param_gather: bool = False
    # Megatron's local CUDA graphs for the LLM layers: a CUDA GPU and rows of one fixed
    # shape (no packing: a packed row's segment boundaries change from row to row)
    cuda_graphs: bool = False


@dataclass
class SailConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    rl: RLConfig = field(default_factory=RLConfig)  # read by `sail rl` only


def chat_template_of(cfg: "SailConfig") -> str:
    """The chat template a config trains and prompts with (``data.chat_template`` resolved)."""
    if cfg.data.chat_template is not None:
        return cfg.data.chat_template
    return "univl-chat" if cfg.model.preset.startswith("sailvl2") else "chatml"
