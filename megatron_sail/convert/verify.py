"""``sail convert verify``: the transformers-based reference and the Megatron model on the
same image + text inputs; max abs difference and cosine similarity of the logits."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from megatron_sail.config.presets import tokens_per_tile
from megatron_sail.convert import hf_config
from megatron_sail.convert.errors import ConversionError
from megatron_sail.convert.exporter import open_checkpoint
from megatron_sail.convert.forward import run_forward, write_inputs
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID
from megatron_sail.convert.reference import ReleaseReference
from megatron_sail.convert.safetensors_io import SafetensorsDir


@dataclass
class VerifyReport:
    max_abs_diff: float
    cosine: float
    max_abs_logit: float
    tolerance: float
    shape: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.cosine >= 1 - 1e-5


def make_inputs(model, img_context_id: int, seed: int, tiles: int = 2, text: int = 24):
    """``tiles`` samples, each one trained-size image tile spliced at a different offset of
    ``text`` random text tokens."""
    gen = torch.Generator().manual_seed(seed)
    vit = model.vision
    per_tile = tokens_per_tile(vit.image_size, vit.patch_size)
    ids = torch.randint(0, model.llm.vocab_size, (tiles, per_tile + text), generator=gen)
    ids[ids == img_context_id] = (img_context_id + 1) % model.llm.vocab_size
    for row in range(tiles):
        start = (5 + 7 * row) % text
        ids[row, start:start + per_tile] = img_context_id
    pixels = torch.randn(tiles, 3, vit.image_size, vit.image_size, generator=gen)
    return ids, pixels


def verify(hf_dir: str | Path, ckpt: str | Path, tp: int = 1, pp: int = 1, seed: int = 0,
           atol: float = 1e-4, rtol: float = 1e-5,
           img_context_id: Optional[int] = None) -> VerifyReport:
    hf_dir = Path(hf_dir)
    weights = SafetensorsDir(hf_dir)
    hf_model = hf_config.release_model(hf_config.read_json(hf_dir / "config.json"),
                                       "language_model.lm_head.weight" in weights.tensors)
    _, _, cfg, _ = open_checkpoint(ckpt)
    # A tied model exports lm_head as a copy, so the HF side reads as untied: let the logits
    # decide whether the heads agree.
    diff = hf_config.architecture_differences(hf_model, cfg.model,
                                              ignore=("llm.tie_word_embeddings",))
    if diff:
        raise ConversionError(f"{hf_dir} and {ckpt} are different models (HF vs checkpoint):\n  - "
                              + "\n  - ".join(diff))
    vocab = cfg.model.llm.vocab_size
    img_id = img_context_id if img_context_id is not None else cfg.model.img_context_token_id
    if img_id is None or not 0 <= img_id < vocab:
        # verify makes its own inputs, so any id marks the image positions
        img_id = RELEASE_IMG_CONTEXT_ID if vocab > RELEASE_IMG_CONTEXT_ID else vocab - 1
    ids, pixels = make_inputs(cfg.model, img_id, seed)
    with tempfile.TemporaryDirectory(prefix="sail-verify-") as tmp:
        inputs, out = Path(tmp) / "inputs.safetensors", Path(tmp) / "logits.safetensors"
        write_inputs(inputs, ids, pixels)
        run_forward(ckpt, inputs, out, tp=tp, pp=pp, img_context_id=img_id, dtype="fp32")
        ours = load_file(str(out))["logits"].double()
    expected = ReleaseReference(hf_dir).logits(ids, pixels, img_id).double()
    if ours.shape != expected.shape:
        raise ConversionError(f"logits shapes differ: Megatron {list(ours.shape)}, "
                              f"reference {list(expected.shape)}")
    max_logit = float(expected.abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(ours.flatten(), expected.flatten(), dim=0))
    return VerifyReport(float((ours - expected).abs().max()),
                        cosine if math.isfinite(cosine) else 0.0, max_logit,
                        atol + rtol * max_logit, tuple(ours.shape))
