"""A checkpoint ready for ``generate`` in the calling ranks, through ``sail forward``'s path
(the checkpoint's model rebuilt at the requested TP/PP/EP, local layers, no training state)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from megatron_sail.convert.forward import forward_config
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID


def generation_config(cfg, tp: int, pp: int, ep: int, dtype: str, length: int):
    """``sail forward``'s layout (local layers, no training state) with ``ep`` expert-parallel
    ranks: ``tp * pp * ep`` processes, the dense part replicated ``ep`` times on the same
    batch."""
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.config import ConfigError
    from megatron_sail.convert.errors import ConversionError

    cfg = forward_config(cfg, tp, pp, dtype, length)
    if ep != 1:
        cfg.parallel.expert_model_parallel_size = ep
        try:
            resolve_layout(cfg, tp * pp * ep)
        except ConfigError as exc:
            raise ConversionError(f"cannot run this model at --tp {tp} --pp {pp} --ep {ep}: "
                                  f"{exc}") from None
    return cfg


def tokenizer_source(ckpt_dir: Path, configured: Optional[str],
                     explicit: Optional[str] = None) -> Optional[str]:
    """``explicit`` (--tokenizer), else the run's ``data.tokenizer``, else the sentencepiece
    model a synthetic run trained next to its checkpoints; None when there is none."""
    for path in (explicit, configured):
        if path:
            return path
    trained = ckpt_dir.parent.parent / "tokenizer.model"   # RUN/checkpoints/iter_*/
    return str(trained) if trained.is_file() else None


def find_tokenizer(ckpt_dir: Path, configured: Optional[str], explicit: Optional[str] = None):
    """The tokenizer of ``tokenizer_source``, loaded; None when there is none."""
    from megatron_sail.data.encoding.hf_tokenizer import load_tokenizer

    source = tokenizer_source(ckpt_dir, configured, explicit)
    return None if source is None else load_tokenizer(source)


def load_for_generation(ckpt: str | Path, tp: int = 1, pp: int = 1, *, max_length: int,
                        ep: int = 1,
                        img_context_token_id: int = RELEASE_IMG_CONTEXT_ID,
                        dtype: str = "fp32", tokenizer: Optional[str] = None):
    """``(cfg, layout, model_chunks, tokenizer_or_None)`` for ``generate``. Every rank of a
    process group of ``tp * pp * ep`` ranks calls it; Megatron's model-parallel state is set up
    here unless the caller already did (then it must be this TP/PP). ``max_length``: the
    longest prompt plus new tokens (checked against the model's positions by the caller)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.convert.exporter import open_checkpoint
    from megatron_sail.convert.worker import load_model
    from megatron_sail.distributed.runtime import init_model_parallel

    ckpt_dir, _, cfg, _ = open_checkpoint(ckpt)
    configured_tokenizer = cfg.data.tokenizer
    cfg.model.img_context_token_id = img_context_token_id
    cfg = generation_config(cfg, tp, pp, ep, dtype, max_length)
    layout = resolve_layout(cfg, dist.get_world_size() if dist.is_initialized() else 1)
    if not parallel_state.model_parallel_is_initialized():
        init_model_parallel(layout, cfg.train.seed)
    chunks = load_model(ckpt_dir, cfg, layout)
    for chunk in chunks:
        chunk.eval()
    return cfg, layout, chunks, find_tokenizer(ckpt_dir, configured_tokenizer, tokenizer)
