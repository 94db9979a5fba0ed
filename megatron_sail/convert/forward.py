"""``sail forward``: run a megatron_sail checkpoint on given token ids (and image tiles) at a
chosen TP/PP and write full-vocabulary fp32 logits - for parity debugging."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from megatron_sail.config import ConfigError, SailConfig, config_to_dict
from megatron_sail.config.validation import resolve_layout
from megatron_sail.convert.errors import ConversionError, raise_if
from megatron_sail.convert.exporter import open_checkpoint
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID
from megatron_sail.convert.procs import peak_rss, run_ranks
from megatron_sail.convert.sources import PRECISIONS
from megatron_sail.utils.atomic import staged_file


@dataclass
class ForwardReport:
    logits: Path
    shape: tuple[int, ...]
    peak_rss: int


def check_inputs(inputs: dict[str, torch.Tensor], cfg: SailConfig, img_context_id: int) -> None:
    problems = []
    unknown = sorted(set(inputs) - {"input_ids", "pixel_values"})
    if unknown:
        problems.append(f"unexpected tensors {unknown} (expected input_ids, pixel_values)")
    ids = inputs.get("input_ids")
    if ids is None or ids.dtype != torch.int64 or ids.dim() != 2:
        problems.append("input_ids must be an int64 tensor [batch, length]"
                        + ("" if ids is None else f", got {ids.dtype} {list(ids.shape)}"))
        raise_if(problems, "bad inputs")
    vocab = cfg.model.llm.vocab_size
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        problems.append(f"input_ids must lie in [0, {vocab}), found "
                        f"{int(ids.min())}..{int(ids.max())}")
    pixels = inputs.get("pixel_values")
    count = int((ids == img_context_id).sum())
    vit = cfg.model.vision
    if pixels is not None:
        step = 2 * vit.patch_size
        if (pixels.dtype != torch.float32 or pixels.dim() != 4 or pixels.shape[1] != 3
                or pixels.shape[2] % step or pixels.shape[3] % step):
            problems.append(f"pixel_values must be float32 [tiles, 3, H, W] with H, W "
                            f"multiples of {step}, got {pixels.dtype} {list(pixels.shape)}")
        else:
            needed = pixels.shape[0] * (pixels.shape[2] // step) * (pixels.shape[3] // step)
            if needed != count:
                problems.append(f"{pixels.shape[0]} tiles give {needed} visual tokens but "
                                f"input_ids has {count} <IMG_CONTEXT> tokens (id "
                                f"{img_context_id}; set it with --img-context-token-id)")
    elif count:
        problems.append(f"input_ids has {count} <IMG_CONTEXT> tokens (id {img_context_id}) but "
                        f"there are no pixel_values")
    raise_if(problems, "bad inputs")


def forward_config(cfg: SailConfig, tp: int, pp: int, dtype: str, length: int) -> SailConfig:
    """The checkpoint's model at TP x PP on CPU: its sharded tensors are the same whatever
    layout, layer implementation (TE, grouped-GEMM experts) or recomputation trained it."""
    par, model = cfg.parallel, cfg.model
    par.tensor_model_parallel_size, par.pipeline_model_parallel_size = tp, pp
    par.virtual_pipeline_model_parallel_size = None
    par.first_stage_llm_layers = None
    par.expert_model_parallel_size, par.expert_tensor_parallel_size = 1, None
    par.context_parallel_size, par.cp_comm_type = 1, None
    par.sequence_parallel = par.vision_tensor_parallel_size = None
    model.transformer_impl, model.fp8, model.moe.grouped_gemm = "local", None, False
    model.freeze, model.llm_recompute, model.vision_recompute = [], None, None
    cfg.train.precision = dtype
    cfg.data.seq_length = length + (-length) % tp
    try:
        resolve_layout(cfg, tp * pp)
    except ConfigError as exc:
        raise ConversionError(f"cannot run this model at --tp {tp} --pp {pp}: {exc}") from None
    return cfg


def run_forward(ckpt: str | Path, inputs_path: str | Path, out: str | Path, tp: int = 1,
                pp: int = 1, img_context_id: Optional[int] = None,
                dtype: str = "fp32") -> ForwardReport:
    if dtype not in PRECISIONS:
        raise ConversionError(f"--dtype {dtype!r}: choose fp32 or bf16")
    ckpt_dir, _, cfg, _ = open_checkpoint(ckpt)
    try:
        inputs = load_file(str(inputs_path))
    except Exception as exc:  # safetensors raises its own error types
        raise ConversionError(f"{inputs_path}: unreadable safetensors file: {exc}") from None
    img_id = RELEASE_IMG_CONTEXT_ID if img_context_id is None else img_context_id
    check_inputs(inputs, cfg, img_id)
    cfg.model.img_context_token_id = img_id
    length = inputs["input_ids"].shape[1]
    cfg = forward_config(cfg, tp, pp, dtype, length)
    out = Path(out)
    with staged_file(out) as tmp:   # the rank writing logits writes here; whole file or none
        spec = {"config": config_to_dict(cfg), "ckpt": str(ckpt_dir), "inputs": str(inputs_path),
                "out": str(tmp), "pad_id": 0 if img_id != 0 else 1}
        results = run_ranks("forward", spec, tp * pp)
        logits = load_file(tmp)["logits"]
    return ForwardReport(out, tuple(logits.shape), peak_rss(results))


def write_inputs(path: Path, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor]) -> None:
    tensors = {"input_ids": input_ids.contiguous()}
    if pixel_values is not None:
        tensors["pixel_values"] = pixel_values.contiguous()
    save_file(tensors, str(path))
