"""The loaders of a training config: its training stream and its named validation streams,
from the built-in synthetic data (``data.dataset=synthetic``) or a blend (``blend``)."""

from __future__ import annotations

from typing import Optional

from megatron_sail.config.validation import segment_pad_multiple
from megatron_sail.config.presets import tokens_per_tile
from megatron_sail.config.schema import SailConfig, chat_template_of
from megatron_sail.data.records.blend import BlendError, is_blend_file, load_blend
from megatron_sail.data.loader.multimodal import BlendedSamples, LoaderSettings, MultimodalBatches
from megatron_sail.data.media.backends import require_backend
from megatron_sail.data.encoding.sample_encoder import SampleEncoder
from megatron_sail.data.loader.sources import SampleSource, open_source
from megatron_sail.data.loader.synthetic_source import SyntheticSource

TRAIN = "train"
# Validation streams: the held-out split, and (synthetic data) the same samples with every
# image swapped for the next sample's - how much the model relies on what it sees.
VAL, VAL_MISMATCHED = "val", "val_mismatched_images"
STREAMS = (TRAIN, VAL, VAL_MISMATCHED)


def load_sources(path: str) -> tuple[list[SampleSource], list[float]]:
    """A blend YAML, or a single JSONL file / shard directory (weight 1)."""
    if is_blend_file(path):
        blend = load_blend(path)
        nested = [e.path for e in blend.entries if is_blend_file(e.path)]
        if nested:  # `sail data check` expands them; training reads JSONL and shards only
            raise BlendError(f"{path}: lists other blend files {nested}; list their datasets "
                             f"in one blend file for training")
        return ([open_source(e.path, e.root, e.name) for e in blend.entries],
                [e.weight for e in blend.entries])
    return [open_source(path)], [1.0]


def validation_streams(cfg: SailConfig) -> dict[str, str]:
    """Metric name -> stream, for every validation stream of this config."""
    if cfg.data.dataset == "synthetic":
        return {"val_loss": VAL, "val_loss_mismatched_images": VAL_MISMATCHED}
    return {"val_loss": VAL} if cfg.data.valid_blend else {}


def stream_sources(cfg: SailConfig, stream: str) -> tuple[list[SampleSource], list[float]]:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    data = cfg.data
    if data.dataset == "synthetic":
        split = TRAIN if stream == TRAIN else "val"
        image_size = data.image_size or cfg.model.vision.image_size
        return [SyntheticSource(cfg.train.seed, split, image_size,
                                mismatched=stream == VAL_MISMATCHED)], [1.0]
    if stream == VAL_MISMATCHED:
        raise ValueError("mismatched-image validation exists for the synthetic data only")
    path = data.blend if stream == TRAIN else data.valid_blend
    if not path:
        key = "data.blend" if stream == TRAIN else "data.valid_blend"
        raise ValueError(f"data.dataset=blend has no {key}")
    return load_sources(path)


def gpu_decoding_possible() -> bool:
    """DALI and a GPU: a decoder may run CUDA work, so loader workers must be spawned (CUDA
    does not survive a fork)."""
    from megatron_sail.data.media.backends import cuda_available, dali_available

    return cuda_available() and dali_available()


def image_decoder(requested: str) -> str:
    if requested != "auto":
        return requested
    return "dali-gpu" if gpu_decoding_possible() else "pillow"


def sample_encoder(cfg: SailConfig, tokenizer) -> SampleEncoder:
    data, vit = cfg.data, cfg.model.vision
    # A backend asked for by name is checked here, once, not in a decoding worker per file.
    if data.video_backend != "auto":
        require_backend(data.video_backend, "data.video_backend")
    if data.image_decoder in ("dali-cpu", "dali-gpu"):
        require_backend(data.image_decoder, "data.image_decoder")
    image_size = data.image_size or vit.image_size
    return SampleEncoder(
        tokenizer, image_size=image_size, max_tiles=data.max_tiles, num_frames=data.num_frames,
        min_tiles=data.min_tiles, use_thumbnail=data.use_thumbnail,
        tokens_per_tile=tokens_per_tile(image_size, vit.patch_size,
                                        cfg.model.adapter.downsample_ratio),
        seq_length=data.seq_length, system_message=data.system_message,
        video_backend=data.video_backend, anyres=data.anyres,
        anyres_max_tokens=data.anyres_max_tokens, patch_size=vit.patch_size,
        image_decoder=image_decoder(data.image_decoder), chat_template=chat_template_of(cfg))


def build_batches(cfg: SailConfig, tokenizer, stream: str, dp_rank: int, dp_size: int,
                  dp_group=None, state: Optional[dict] = None,
                  num_workers: Optional[int] = None, share_group=None) -> MultimodalBatches:
    """This rank's loader of ``stream`` (``TRAIN``, ``VAL`` or ``VAL_MISMATCHED``)."""
    sources, weights = stream_sources(cfg, stream)
    samples = BlendedSamples(sources, weights, cfg.train.seed, sample_encoder(cfg, tokenizer))
    data, train = cfg.data, cfg.train
    segment_multiple = segment_pad_multiple(cfg) if data.packing else 1
    settings = LoaderSettings(
        seq_length=data.seq_length, global_batch=train.global_batch_size,
        micro_batch=train.micro_batch_size, packing=data.packing,
        buffer_size=data.packing_buffer,
        num_workers=data.num_workers if num_workers is None else num_workers,
        prefetch=data.prefetch, spawn_workers=gpu_decoding_possible(),
        segment_multiple=segment_multiple)
    return MultimodalBatches(samples, settings, tokenizer.pad_id, dp_rank, dp_size, dp_group,
                             state, share_group)
