"""The typed configuration of a run: one dataclass per concern, loaded from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron_sail.config.presets import AdapterArch, LLMArch, VisionArch

FREEZABLE = ("vision", "adapter", "llm")
RECOMPUTE = (None, "selective", "full")


@dataclass
class MoEConfig:
    """Routing and balancing of Mixture-of-Experts LLMs (ignored by dense presets)."""

    # global_aux_loss: expert load aggregated over the global batch (data-parallel ranks and
    # micro-batches) before the loss, as Qwen3 and SAIL-VL2 do; aux_loss: per micro-batch;
    # seq_aux_loss: per sequence; none.
    load_balancing: str = "global_aux_loss"
    aux_loss_coeff: float = 1e-3
    z_loss_coeff: Optional[float] = None
    router_score_function: str = "softmax"  # Qwen3; sigmoid for aux-loss-free bias routing
    expert_bias: bool = False  # aux-loss-free balancing (sigmoid routing only)
    expert_bias_update_rate: float = 1e-3
    token_dispatcher: str = "alltoall"  # alltoall | allgather
    grouped_gemm: bool = False  # needs TE or the grouped_gemm package on a GPU
    router_dtype: str = "fp32"  # fp32 | fp64


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | tiny-moe | sailvl2-2b | sailvl2-8b | sailvl2-a3b
    vision: VisionArch = field(default_factory=VisionArch)
    adapter: AdapterArch = field(default_factory=AdapterArch)
    llm: LLMArch = field(default_factory=LLMArch)
    moe: MoEConfig = field(default_factory=MoEConfig)
    freeze: list[str] = field(default_factory=list)  # any of vision, adapter, llm
    transformer_impl: str = "local"  # local | transformer_engine (GPU + TE)
    # Core attention of the local spec: sdpa (torch's fused scaled-dot-product attention:
    # flash kernels on GPUs) | unfused (Megatron's reference math, [s, s] probabilities).
    # Packed sequences always take the sdpa path.
    attention: str = "sdpa"
    fp8: Optional[str] = None  # None | hybrid | e4m3 (needs transformer_engine on a GPU)
    fp8_recipe: str = "delayed"  # delayed | tensorwise (current scaling)
    vision_recompute: Optional[str] = None  # None | selective | full
    llm_recompute: Optional[str] = None  # None | selective | full
    init_std: float = 0.02
    img_context_token_id: Optional[int] = None  # None: taken from the tokenizer


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: Optional[int] = None  # None: 1 (experts are not TP-split)
    sequence_parallel: Optional[bool] = None  # None: on whenever TP > 1
    # ViT tensor parallelism: equal to TP, or 1 (replicated ViT on every TP rank).
    # None: TP when it divides the ViT heads, else 1.
    vision_tensor_parallel_size: Optional[int] = None
    # LLM layers on pipeline stage 0 next to the ViT (0 allowed). None: an even split.
    first_stage_llm_layers: Optional[int] = None
    use_distributed_optimizer: bool = True


@dataclass
class TrainConfig:
    train_iters: int = 30
    global_batch_size: int = 8
    micro_batch_size: int = 2
    seed: int = 1234
    log_interval: int = 1
    exit_interval: Optional[int] = None  # stop (with a checkpoint) after this many iterations
    eval_interval: Optional[int] = None
    eval_iters: int = 2
    precision: str = "fp32"  # fp32 | bf16
    clip_grad: float = 1.0


@dataclass
class OptimizerConfig:
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    lr_warmup_iters: int = 0
    # None: train_iters of the first start; fixed from then on (a resumed run keeps it).
    lr_decay_iters: Optional[int] = None
    lr_decay_style: str = "cosine"  # cosine | linear | constant


@dataclass
class CheckpointConfig:
    save_interval: Optional[int] = None
    keep_last: Optional[int] = None  # None keeps every checkpoint
    load: Optional[str] = None  # weights to start from when output_dir has no checkpoint
    # Parts (vision, adapter, llm) drawn afresh from train.seed after checkpoint.load, exactly as
    # a fresh run initialises them (e.g. the new adapter of basic multimodal pre-training).
    # Applied at the first start only; a resumed run keeps its trained weights.
    reinit: list[str] = field(default_factory=list)


# Choices of data.video_backend / data.image_decoder ("auto" picks per file or per machine).
VIDEO_BACKENDS = ("auto", "dali-gpu", "dali-cpu", "pyav")
IMAGE_DECODERS = ("auto", "pillow", "dali-cpu", "dali-gpu")


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic (built in) | blend (the datasets data.blend names)
    seq_length: int = 64
    # A sentencepiece .model or a Hugging Face tokenizer directory (e.g. the release's);
    # None: train a small sentencepiece model into the run dir (synthetic data only).
    tokenizer: Optional[str] = None
    blend: Optional[str] = None  # blend YAML, or one JSONL file / `sail data prepare` directory
    valid_blend: Optional[str] = None  # evaluation data (dataset=blend); None: no evaluation
    # Stream packing: global_batch_size counts packed rows of seq_length tokens, and a
    # micro-batch is one row. Without packing each sample is padded to seq_length.
    packing: bool = True
    packing_buffer: Optional[int] = None  # lookahead in samples; None: 4 x global batch
    min_tiles: int = 1
    max_tiles: int = 12  # dynamic tiling: 1..max tiles of image_size px (+ a thumbnail)
    use_thumbnail: bool = True
    num_frames: int = 16  # uniformly sampled per video, one tile each
    # AnyRes (SAIL-ViT-AnyRes): images at about native resolution, sides in multiples of
    # 28 px, at most anyres_max_tokens LLM tokens each, packed into the ViT without padding.
    anyres: bool = False
    anyres_max_tokens: int = 4096
    video_backend: str = "auto"  # one of VIDEO_BACKENDS
    # auto: DALI's GPU decoder (nvJPEG) on a GPU machine with DALI installed, else Pillow
    # (DALI's CPU decoder gives Pillow's pixels, no faster); or one of IMAGE_DECODERS
    image_decoder: str = "auto"
    system_message: Optional[str] = None
    num_workers: int = 2  # decoding processes per rank (0: in the training process)
    prefetch: int = 2  # micro-batches in flight per worker
    image_size: Optional[int] = None  # None: the ViT's trained image size


@dataclass
class RunConfig:
    output_dir: str = "runs/tiny"
    tensorboard: bool = True


@dataclass
class HardwareConfig:
    """What MFU is measured against (metrics: model_tflops_per_device, mfu)."""

    gpu: str = "h100"  # h100 | h100-pcie | h200
    # Dense TFLOP/s per device; None: the GPU's bf16 peak (fp8 peak with model.fp8).
    # On a CPU, mfu is logged only when this is set.
    peak_tflops: Optional[float] = None


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
