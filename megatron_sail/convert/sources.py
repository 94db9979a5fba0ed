"""Hugging Face inputs, validated before any Megatron process starts, and the per-tensor
values they give Megatron's sharded keys.

``open_release`` / ``open_init_from`` check names, shapes and dtypes against the mapping
tables (one error listing every problem) and return the resolved model config. Rank
processes re-open the same source from its ``spec`` and call ``Values.value(key, index)``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from megatron_sail.config.schema import ModelConfig
from megatron_sail.convert import hf_config
from megatron_sail.convert.errors import ConversionError, inventory_problems, listing, raise_if
from megatron_sail.convert.kinds import ZEROS, Index, Shape
from megatron_sail.convert.safetensors_io import DTYPES, SafetensorsDir
from megatron_sail.convert.tables import (
    Table, qwen3, sail_vit, sailvl_release, vision_adapter,
)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_STORED = {"F32": "fp32", "BF16": "bf16"}
_CASTABLE = ("F32", "BF16", "F16")
_FUSED_EXPERTS = re.compile(r"mlp\.experts\.(gate_up_proj|down_proj)$")


def check_weights(weights: SafetensorsDir, expected: dict[str, Shape],
                  ignored: tuple[str, ...] = ()) -> None:
    """Every expected tensor present with its shape and a float dtype, nothing unexpected."""
    present = weights.tensors
    unexpected = [n for n in present if n not in expected and n not in ignored]
    parts = inventory_problems({n: t.shape for n, t in present.items()}, expected, unexpected,
                               "unexpected tensors", "in the checkpoint", "expected by the config")
    dtypes = [f"{n}: {present[n].dtype}" for n in expected
              if n in present and present[n].dtype not in _CASTABLE]
    if dtypes:
        parts.append(listing(f"unsupported dtypes (supported: {', '.join(_CASTABLE)})", dtypes))
    fused = [n for n in unexpected if _FUSED_EXPERTS.search(n)]
    if fused:
        parts.append(f"{fused[0]} holds all experts of a layer at once (transformers' in-memory "
                     f"layout); expected one tensor per expert, as transformers' save_pretrained "
                     f"and the Hub write them (...mlp.experts.E.gate_proj.weight, ...)")
    if parts:
        raise ConversionError(f"{weights.directory}: the weights do not match config.json\n"
                              + "\n".join(parts))


def resolve_precision(sources: list[tuple[SafetensorsDir, list[str]]],
                      requested: Optional[str]) -> str:
    """``requested``, else the one dtype the weights are stored in (fp32 or bf16)."""
    if requested is not None:
        if requested not in PRECISIONS:
            raise ConversionError(f"--dtype {requested!r}: choose bf16 or fp32")
        return requested
    found: dict[str, int] = {}
    for weights, names in sources:
        for n in names:
            found[weights.tensors[n].dtype] = found.get(weights.tensors[n].dtype, 0) + 1
    if len(found) == 1 and next(iter(found)) in _STORED:
        return _STORED[next(iter(found))]
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(found.items()))
    raise ConversionError(f"the weights are stored as {kinds}; pass --dtype bf16 or --dtype fp32")


@dataclass
class Opened:
    """A validated source: the model it describes and how rank processes re-open it."""

    model: ModelConfig
    precision: str
    spec: dict
    hf_config: Optional[dict] = None  # the release config.json, kept for export
    notes: list[str] = field(default_factory=list)


def open_release(directory: str | Path, dtype: Optional[str] = None) -> Opened:
    directory = Path(directory)
    cfg = hf_config.read_json(directory / "config.json")
    weights = SafetensorsDir(directory)
    lm_head = "language_model.lm_head.weight" in weights.tensors
    model = hf_config.release_model(cfg, has_lm_head=lm_head)
    model.img_context_token_id = hf_config.img_context_id(directory, model.llm.vocab_size)
    table = _table(model, sailvl_release)
    expected = table.import_shapes()
    check_weights(weights, expected)
    precision = resolve_precision([(weights, list(expected))], dtype)
    notes = [] if lm_head else ["no language_model.lm_head.weight: the LLM is tied to its "
                                "embeddings"]
    return Opened(model, precision, {"kind": "release", "dir": str(directory)}, cfg, notes)


def _table(model: ModelConfig, build) -> Table:
    try:
        return build(model)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None


def _init_tables(model: ModelConfig) -> tuple[Table, Table, Table]:
    return (sail_vit(model.vision, "aimv2", ""),
            vision_adapter(model.vision.hidden_size, model.llm.hidden_size, ""),
            qwen3(model.llm, ""))


def open_init_from(vision_dir: str | Path, llm_dir: str | Path, dtype: Optional[str] = None,
                   seed: int = 1234, std: float = 0.02) -> Opened:
    """An AIMv2 vision model + a Qwen3 or Qwen3-MoE LLM (transformers layouts) + a fresh
    adapter."""
    vision_dir, llm_dir = Path(vision_dir), Path(llm_dir)
    vcfg = hf_config.read_json(vision_dir / "config.json")
    lcfg = hf_config.read_json(llm_dir / "config.json")
    vision, vp = hf_config.aimv2_vision(vcfg, f"{vision_dir / 'config.json'}: ")
    tied = bool(lcfg.get("tie_word_embeddings", False))
    llm, lp = hf_config.qwen3_llm(lcfg, tied, f"{llm_dir / 'config.json'}: ")
    raise_if(vp + lp, "unsupported base models")
    model = hf_config.moe_settings(ModelConfig(vision=vision, llm=llm, init_std=std), lcfg)
    model.preset = hf_config.matching_preset(model.vision, model.adapter, model.llm)
    model.img_context_token_id = hf_config.img_context_id(llm_dir, llm.vocab_size)
    vit_table, _, llm_table = _init_tables(model)

    vweights, lweights = SafetensorsDir(vision_dir), SafetensorsDir(llm_dir)
    v_ignored = tuple(n for n in vweights.names if n.startswith("head.") and vcfg.get("use_head"))
    l_ignored = tuple(n for n in lweights.names if n.endswith("rotary_emb.inv_freq"))
    if tied and "lm_head.weight" in lweights.tensors:
        l_ignored += ("lm_head.weight",)  # transformers ties it to embed_tokens, so do we
    check_weights(vweights, vit_table.import_shapes(), v_ignored)
    check_weights(lweights, llm_table.import_shapes(), l_ignored)
    precision = resolve_precision([(vweights, list(vit_table.import_shapes())),
                                   (lweights, list(llm_table.import_shapes()))], dtype)
    notes = [f"ignored {n}" for n in v_ignored + l_ignored]
    notes.append(f"adapter initialised fresh (seed {seed}, std {std})")
    spec = {"kind": "init_from", "vision": str(vision_dir), "llm": str(llm_dir), "seed": seed,
            "std": std}
    return Opened(model, precision, spec, None, notes)


class Values:
    """Full (unsharded) Megatron value of a sharded key at one (layer[, expert]) index."""

    def __init__(self, parts: list[tuple[Table, Optional[SafetensorsDir]]], dtype: torch.dtype,
                 init: Optional[dict] = None, num_layers: Optional[dict] = None):
        self.dtype = dtype
        self.init, self.num_layers = init, num_layers
        self.where = {m.megatron: (m, weights) for table, weights in parts for m in table.mappings}
        self._last: tuple = (None, None, None)
        self._lock = threading.Lock()  # fill runs on several threads

    def keys(self) -> set[str]:
        return set(self.where)

    def value(self, key: str, index: Index) -> torch.Tensor:
        with self._lock:
            return self._value(key, index)

    def _value(self, key: str, index: Index) -> torch.Tensor:
        if self._last[:2] == (key, index):  # gated fc1: one value, two TP pieces
            return self._last[2]
        mapping, weights = self.where[key]
        if weights is None:  # a freshly initialised part (init-from's adapter)
            from megatron_sail.models.init import initial_value

            value = initial_value(key, mapping.megatron_shape(), self.init["seed"], (),
                                  self.init["std"], self.num_layers)
        else:
            value = mapping.to_megatron([weights.read(n) for n in mapping.hf_names(index)])
        value = value.to(self.dtype)
        self._last = (key, index, value)
        return value

    def read_rows_into(self, key: str, index: Index, start: int, dest: torch.Tensor) -> bool:
        """Rows [start, start + len(dest)) of the value straight from the files into
        ``dest`` when the mapping allows it (whole HF rows, no cast); False otherwise."""
        mapping, weights = self.where[key]
        if weights is None or not dest.is_contiguous():
            return False
        pieces = mapping.pieces(start, start + dest.shape[0])
        names = mapping.hf_names(index)
        if pieces is None or any(DTYPES[weights.tensors[n].dtype] != dest.dtype for n in names):
            return False
        rows = dest.reshape(dest.shape[0], -1)
        row_bytes = rows.shape[1] * dest.element_size()
        at = 0
        for which, hf_row, n in pieces:
            if which == ZEROS:
                rows[at:at + n].zero_()
            else:
                weights.read_into(names[which], hf_row * row_bytes, rows[at:at + n])
            at += n
        return True

    @classmethod
    def from_spec(cls, spec: dict, model: ModelConfig, dtype: torch.dtype) -> "Values":
        if spec["kind"] == "soup":  # the weighted mean of checkpoints (same interface)
            from megatron_sail.convert.soup import SoupValues

            return SoupValues(spec["ckpts"], spec["weights"])
        if spec["kind"] == "release":
            return cls([(sailvl_release(model), SafetensorsDir(spec["dir"]))], dtype)
        vit, adapter, llm = _init_tables(model)
        num_layers = {"llm": model.llm.num_layers, "vision": model.vision.num_layers}
        return cls([(vit, SafetensorsDir(spec["vision"])), (adapter, None),
                    (llm, SafetensorsDir(spec["llm"]))], dtype,
                   init={"seed": spec["seed"], "std": spec["std"]}, num_layers=num_layers)
