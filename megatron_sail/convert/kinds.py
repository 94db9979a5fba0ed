"""Mapping kinds: how one tensor of Megatron's layout-independent sharded state dict is made
from (and turned back into) Hugging Face tensors.

Megatron keys are the sharded keys (``language_model.decoder.layers.mlp.linear_fc1.weight``),
whose global tensor is the whole, unsharded value; tensor, pipeline and expert parallelism
and the stacking over layers (and experts) are applied by Megatron's sharded state dict,
never here. A per-layer mapping (``layers`` > 0) converts one layer at a time, its Hugging
Face names holding a ``{layer}`` placeholder; a per-expert one (``experts`` > 0) one expert
of one layer, by global expert index ``{expert}``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

Shape = tuple[int, ...]
Index = tuple[int, ...]  # position on the stacked axes: (), (layer,) or (layer, expert)

# (index of the HF tensor or ZEROS, first HF row, number of rows)
Piece = tuple[int, int, int]
ZEROS = -1


def _clip(runs: list[tuple[int, int, int, int]], start: int, stop: int) -> list[Piece]:
    """Runs (megatron_row, hf_index, hf_row, n) covering the tensor, cut to [start, stop)."""
    out = []
    for row, index, hf_row, n in runs:
        lo, hi = max(start, row), min(stop, row + n)
        if lo < hi:
            out.append((index, hf_row + lo - row, hi - lo))
    return out


@dataclass(frozen=True, kw_only=True)
class Mapping:
    megatron: str
    hf: tuple[str, ...]
    layers: int = 0  # > 0: stacked over this many layers, "{layer}" in the HF names
    experts: int = 0  # > 0 (with layers): also over the global expert index, "{expert}"

    def __post_init__(self) -> None:
        if self.experts and not self.layers:
            raise ValueError(f"{self.megatron}: experts are stacked per layer; set layers too")

    @property
    def stacked(self) -> Shape:
        """The leading axes of the stored tensor: (), (layers,) or (layers, experts)."""
        return tuple(n for n in (self.layers, self.experts) if n)

    def indices(self) -> list[Index]:
        """Every (layer[, expert]) index of the stacked axes; [()] when not stacked."""
        return list(itertools.product(*(range(n) for n in self.stacked)))

    def hf_names(self, index: Index = ()) -> tuple[str, ...]:
        if not self.stacked:
            return self.hf
        fields = dict(zip(("layer", "expert"), index))
        return tuple(n.format(**fields) for n in self.hf)

    def export_names(self, index: Index = ()) -> tuple[str, ...]:
        """Names written by export: the imported ones, plus aliases (see ``Tied``)."""
        return self.hf_names(index)

    def megatron_shape(self) -> Shape:  # of one (layer[, expert]) index
        raise NotImplementedError

    def hf_shapes(self) -> tuple[Shape, ...]:
        raise NotImplementedError

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def to_hf(self, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def pieces(self, start: int, stop: int) -> Optional[list[Piece]]:
        """Rows [start, stop) of the Megatron tensor as runs of whole rows of the HF tensors
        (same row size, same order), so a shard can be read straight into place; None when
        the rows are not such runs."""
        return None


@dataclass(frozen=True, kw_only=True)
class Direct(Mapping):
    """Same values, same shape (norms, projections, biases, the conv kernel)."""

    shape: Shape

    def megatron_shape(self) -> Shape:
        return self.shape

    def hf_shapes(self) -> tuple[Shape, ...]:
        return (self.shape,)

    def to_megatron(self, tensors):
        (x,) = tensors
        return x

    def to_hf(self, tensor):
        return (tensor,)

    def pieces(self, start, stop):
        return [(0, start, stop - start)]


@dataclass(frozen=True, kw_only=True)
class Reshaped(Mapping):
    """Same values in another shape: the release's ``pos_embed`` [1, N, C] is our [N, C]."""

    shape: Shape
    hf_shape: Shape

    def megatron_shape(self) -> Shape:
        return self.shape

    def hf_shapes(self) -> tuple[Shape, ...]:
        return (self.hf_shape,)

    def to_megatron(self, tensors):
        (x,) = tensors
        return x.reshape(self.shape)

    def to_hf(self, tensor):
        return (tensor.reshape(self.hf_shape),)

    def pieces(self, start, stop):  # same bytes, so the same rows
        return [(0, start, stop - start)]


@dataclass(frozen=True, kw_only=True)
class PaddedVocab(Mapping):
    """Embedding / output rows padded to Megatron's vocabulary multiple. The padding rows are
    zeros (their logits are 0 and never compared); export strips them."""

    rows: int
    padded_rows: int
    cols: int

    def megatron_shape(self) -> Shape:
        return (self.padded_rows, self.cols)

    def hf_shapes(self) -> tuple[Shape, ...]:
        return ((self.rows, self.cols),)

    def to_megatron(self, tensors):
        (x,) = tensors
        out = x.new_zeros(self.padded_rows, self.cols)
        out[: self.rows] = x
        return out

    def to_hf(self, tensor):
        return (tensor[: self.rows],)

    def pieces(self, start, stop):
        return _clip([(0, 0, 0, self.rows), (self.rows, ZEROS, 0, self.padded_rows - self.rows)],
                     start, stop)


@dataclass(frozen=True, kw_only=True)
class Tied(Mapping):
    """A Megatron tensor used twice on the Hugging Face side: tied input embeddings and
    ``lm_head``. Import reads ``inner``'s names only; export also writes ``alias`` (a copy),
    because the release code loads ``lm_head`` from the weights rather than tying it."""

    inner: Mapping
    alias: str

    def export_names(self, index=()):
        return self.inner.export_names(index) + (self.alias,)

    def megatron_shape(self) -> Shape:
        return self.inner.megatron_shape()

    def hf_shapes(self) -> tuple[Shape, ...]:
        return self.inner.hf_shapes()

    def to_megatron(self, tensors):
        return self.inner.to_megatron(tensors)

    def to_hf(self, tensor):
        out = self.inner.to_hf(tensor)
        return out + (out[0],)

    def pieces(self, start, stop):
        return self.inner.pieces(start, stop)


@dataclass(frozen=True, kw_only=True)
class QKV(Mapping):
    """Separate q, k, v projections -> Megatron's fused ``linear_qkv``, whose rows hold, for
    each query group in turn, that group's query heads, its key head and its value head.
    Column-parallel TP then splits whole groups, so GQA stays aligned on every rank."""

    heads: int
    groups: int
    head_dim: int
    trailing: Shape  # (in_features,) for weights, () for biases

    @property
    def _per_group(self) -> int:
        return self.heads // self.groups

    def megatron_shape(self) -> Shape:
        return ((self.heads + 2 * self.groups) * self.head_dim, *self.trailing)

    def hf_shapes(self) -> tuple[Shape, ...]:
        kv = (self.groups * self.head_dim, *self.trailing)
        return ((self.heads * self.head_dim, *self.trailing), kv, kv)

    def to_megatron(self, tensors):
        q, k, v = tensors
        g, d = self.groups, self.head_dim
        parts = [q.reshape(g, self._per_group * d, *self.trailing),
                 k.reshape(g, d, *self.trailing), v.reshape(g, d, *self.trailing)]
        return torch.cat(parts, dim=1).reshape(self.megatron_shape())

    def to_hf(self, tensor):
        g, d = self.groups, self.head_dim
        grouped = tensor.reshape(g, (self._per_group + 2) * d, *self.trailing)
        q, k, v = grouped.split([self._per_group * d, d, d], dim=1)
        return tuple(t.reshape(-1, *self.trailing).contiguous() for t in (q, k, v))

    def pieces(self, start, stop):
        return _clip(self._runs(0, 1, 2, 0, 0), start, stop)

    def _runs(self, iq: int, ik: int, iv: int, k_base: int, v_base: int):
        """Per group: its query rows, key rows, value rows; k/v rows start at ``*_base`` of
        their HF tensors (non-zero when q, k, v share one fused tensor)."""
        runs, row, q_rows = [], 0, self._per_group * self.head_dim
        for g in range(self.groups):
            for index, hf_row, n in ((iq, g * q_rows, q_rows),
                                     (ik, k_base + g * self.head_dim, self.head_dim),
                                     (iv, v_base + g * self.head_dim, self.head_dim)):
                runs.append((row, index, hf_row, n))
                row += n
        return runs


@dataclass(frozen=True, kw_only=True)
class FusedQKV(Mapping):
    """The SAIL-ViT release's fused ``qkv`` ([q; k; v] stacked whole, every head its own
    group): split into q, k, v, then interleaved per head like ``QKV``."""

    heads: int
    head_dim: int
    trailing: Shape

    @property
    def _qkv(self) -> QKV:
        return QKV(megatron=self.megatron, hf=("q", "k", "v"), heads=self.heads, groups=self.heads,
                   head_dim=self.head_dim, trailing=self.trailing)

    def megatron_shape(self) -> Shape:
        return self._qkv.megatron_shape()

    def hf_shapes(self) -> tuple[Shape, ...]:
        return ((3 * self.heads * self.head_dim, *self.trailing),)

    def to_megatron(self, tensors):
        (x,) = tensors
        return self._qkv.to_megatron(x.chunk(3, dim=0))

    def to_hf(self, tensor):
        return (torch.cat(self._qkv.to_hf(tensor), dim=0),)

    def pieces(self, start, stop):
        rows = self.heads * self.head_dim
        return _clip(self._qkv._runs(0, 0, 0, rows, 2 * rows), start, stop)


@dataclass(frozen=True, kw_only=True)
class GatedMLP(Mapping):
    """``gate`` and ``up`` -> the global [gate; up] of a gated ``linear_fc1`` (Megatron's
    sharded state dict gives each TP rank its [gate_i; up_i] out of that)."""

    ffn: int
    trailing: Shape

    def megatron_shape(self) -> Shape:
        return (2 * self.ffn, *self.trailing)

    def hf_shapes(self) -> tuple[Shape, ...]:
        return ((self.ffn, *self.trailing),) * 2

    def to_megatron(self, tensors):
        gate, up = tensors
        return torch.cat([gate, up], dim=0)

    def to_hf(self, tensor):
        gate, up = tensor.chunk(2, dim=0)
        return gate.contiguous(), up.contiguous()

    def pieces(self, start, stop):
        return _clip([(0, 0, 0, self.ffn), (self.ffn, 1, 0, self.ffn)], start, stop)
