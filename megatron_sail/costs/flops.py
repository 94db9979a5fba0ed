"""Model FLOPs of SAIL-VL2 training: per sample, per iteration, and the MFU they imply.

Conventions (also returned by ``Conventions.describe`` so every report states them):
- only matrix multiplies are counted, 2 FLOPs per multiply-add; norms, softmax, activations,
  RoPE and the embedding lookup are not (they are < 1% at SAIL-VL2 sizes);
- the ViT runs bidirectional attention on every patch of every tile (1024 for 448 px), before
  the 2x2 merge; the adapter runs on the merged tokens (256 per tile);
- the LLM runs on ``seq_length`` tokens, visual ones included; causal attention counts half of
  the S x S score and value matmuls unless ``causal_halved=False``; GQA projects K and V to
  ``kv_heads`` heads; logits are computed at every position;
- MoE layers count the router plus the ``top_k`` activated experts per token (no capacity drop);
- backward of a trainable module = 2x its forward (input and weight gradients); a frozen module
  whose input needs a gradient (something before it trains) pays the input gradients only
  (1x its weight matmuls, 2x its attention matmuls, which have two activation inputs); a frozen
  module with nothing trainable before it has no backward. The patch-embedding conv never
  needs an input gradient (pixels);
- activation recompute is not counted: these are model FLOPs (MFU), not hardware FLOPs;
- context parallelism changes no model FLOPs (the load-balanced chunks split the causal
  attention evenly; MFU divides by all ranks, CP included); the ViT, which every CP rank runs
  whole, is counted once - its repeats are hardware FLOPs, like recompute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from megatron_sail.costs.shapes import LLMShape, ModelShape, VisionShape, shape_from_config

PARTS = ("vision", "adapter", "llm")


@dataclass(frozen=True)
class Conventions:
    causal_halved: bool = True

    def describe(self) -> dict[str, str]:
        return {
            "flop": "2 per multiply-add; matmuls only (norms, softmax, activations, RoPE "
                    "not counted)",
            "causal_attention": ("halved (S^2/2 scores)" if self.causal_halved
                                 else "full (S^2 scores)"),
            "vision_attention": "bidirectional, full, on all patches of each tile before the merge",
            "logits": "every position",
            "moe": "router + top-k activated experts per token",
            "backward": "trainable: 2x forward; frozen after a trainable part: input gradients "
                        "only; frozen with nothing trainable before it: none",
            "recompute": "not counted (model FLOPs)",
            "context_parallel": "no change; the ViT repeated on every CP rank counts once",
        }


@dataclass
class ForwardFlops:
    """Forward FLOPs of one part, split by what its backward must redo."""

    weight: float = 0.0  # activation x parameter matmuls
    attention: float = 0.0  # activation x activation matmuls (Q K^T, P V)
    first_weight: float = 0.0  # matmuls whose input is data (no input gradient ever)
    items: dict[str, float] = field(default_factory=dict)  # named contributions, for display

    def add(self, name: str, flops: float, kind: str = "weight") -> None:
        setattr(self, kind, getattr(self, kind) + flops)
        self.items[name] = self.items.get(name, 0.0) + flops

    @property
    def total(self) -> float:
        return self.weight + self.attention + self.first_weight


def _matmul(m: float, k: float, n: float) -> float:
    return 2.0 * m * k * n


def vision_forward(v: VisionShape, tiles: float) -> ForwardFlops:
    p = v.patches_per_tile * tiles  # patches in the whole sample
    c = v.hidden
    f = ForwardFlops()
    f.add("patch_embed", _matmul(p, 3 * v.patch * v.patch, c), "first_weight")
    layers = v.num_layers
    f.add("qkv", layers * _matmul(p, c, 3 * c))
    # Attention is per tile: each tile's patches attend to each other only.
    per_tile = v.patches_per_tile
    f.add("attention", layers * 2 * _matmul(per_tile, c, per_tile) * tiles, "attention")
    f.add("proj", layers * _matmul(p, c, c))
    f.add("mlp", layers * 3 * _matmul(p, c, v.ffn))
    return f


def adapter_forward(shape: ModelShape, tiles: float) -> ForwardFlops:
    tokens = shape.tokens_per_tile * tiles
    merged = shape.merge * shape.merge * shape.vision.hidden
    h = shape.llm.hidden
    f = ForwardFlops()
    f.add("fc1", _matmul(tokens, merged, h))
    f.add("fc2", _matmul(tokens, h, h))
    return f


def llm_forward(llm: LLMShape, seq_length: int, conv: Conventions) -> ForwardFlops:
    s, h, n = float(seq_length), llm.hidden, llm.num_layers
    f = ForwardFlops()
    f.add("qkv", n * _matmul(s, h, llm.q_dim + 2 * llm.kv_dim))
    keys = s / 2 if conv.causal_halved else s  # average keys per query
    f.add("attention", n * 2 * _matmul(s, llm.q_dim, keys), "attention")
    f.add("proj", n * _matmul(s, llm.q_dim, h))
    if llm.moe is None:
        f.add("mlp", n * 3 * _matmul(s, h, llm.ffn))
    else:
        moe = llm.moe
        f.add("router", n * _matmul(s, h, moe.num_experts))
        f.add("experts", n * moe.top_k * 3 * _matmul(s, h, moe.expert_ffn))
        if moe.shared_ffn:
            f.add("shared_expert", n * 3 * _matmul(s, h, moe.shared_ffn))
    f.add("logits", _matmul(s, h, llm.vocab))
    return f


def backward_flops(fwd: ForwardFlops, trainable: bool, input_needs_grad: bool) -> float:
    if trainable:
        return 2 * (fwd.weight + fwd.attention) + fwd.first_weight
    if input_needs_grad:
        return fwd.weight + 2 * fwd.attention
    return 0.0


@dataclass
class PartFlops:
    forward: float
    backward: float
    trainable: bool
    items: dict[str, float]

    @property
    def total(self) -> float:
        return self.forward + self.backward


@dataclass
class SampleFlops:
    """Training FLOPs (forward + backward) of one sample, by part."""

    parts: dict[str, PartFlops]
    seq_length: int
    tiles: float
    visual_tokens: float
    conventions: Conventions

    @property
    def total(self) -> float:
        return sum(p.total for p in self.parts.values())

    @property
    def forward(self) -> float:
        return sum(p.forward for p in self.parts.values())

    def as_dict(self) -> dict:
        out: dict = {name: {"forward": p.forward, "backward": p.backward, "total": p.total,
                            "trainable": p.trainable, "forward_by_matmul": p.items}
                     for name, p in self.parts.items()}
        out.update(total=self.total, forward=self.forward, seq_length=self.seq_length,
                   tiles=self.tiles, visual_tokens=self.visual_tokens,
                   conventions=self.conventions.describe())
        return out


def sample_flops(shape: ModelShape, seq_length: int, tiles: float,
                 frozen: tuple[str, ...] | list[str] = (),
                 conventions: Conventions = Conventions()) -> SampleFlops:
    """One sample of ``seq_length`` tokens (visual ones included) with ``tiles`` 448 px tiles
    (thumbnail included). ``frozen`` names parts that do not train."""
    visual = shape.tokens_per_tile * tiles
    if visual > seq_length:
        raise ValueError(f"{tiles} tiles give {visual:g} visual tokens, more than seq_length "
                         f"{seq_length}")
    unknown = set(frozen) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown frozen parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    forwards = {
        "vision": vision_forward(shape.vision, tiles),
        "adapter": adapter_forward(shape, tiles),
        "llm": llm_forward(shape.llm, seq_length, conventions),
    }
    parts, upstream_trains = {}, False
    for name in PARTS:  # data flows vision -> adapter -> llm
        trainable = name not in frozen
        fwd = forwards[name]
        parts[name] = PartFlops(fwd.total, backward_flops(fwd, trainable, upstream_trains),
                                trainable, dict(fwd.items))
        upstream_trains = upstream_trains or trainable
    return SampleFlops(parts, seq_length, tiles, visual, conventions)


# The built-in synthetic dataset (the only one so far) gives every sample one tile.
SYNTHETIC_TILES_PER_SAMPLE = 1


def train_flops_per_iteration(cfg, tiles_per_sample: float | None = None,
                              conventions: Conventions = Conventions()) -> float:
    """Model FLOPs of one optimizer step of a resolved ``SailConfig``: global batch x one
    sample of ``data.seq_length`` tokens with ``tiles_per_sample`` tiles at the data's image
    size, frozen parts from ``model.freeze``."""
    tiles = SYNTHETIC_TILES_PER_SAMPLE if tiles_per_sample is None else tiles_per_sample
    per_sample = sample_flops(shape_from_config(cfg), cfg.data.seq_length, tiles,
                              tuple(cfg.model.freeze), conventions)
    return cfg.train.global_batch_size * per_sample.total


def batch_flops(shape: ModelShape, samples: Sequence[tuple[int, int]],
                frozen: Sequence[str] = (), conventions: Conventions = Conventions()) -> float:
    """Model FLOPs of one step over real samples, each ``(tokens, visual tokens)``: a packed
    sample attends only within itself, so each is counted at its own length (padding is not
    model work). AnyRes images count as visual_tokens / tokens_per_tile tiles."""
    cache: dict[tuple[int, int], float] = {}
    total = 0.0
    for length, visual in samples:
        if (length, visual) not in cache:
            cache[length, visual] = sample_flops(shape, length, visual / shape.tokens_per_tile,
                                                 tuple(frozen), conventions).total
        total += cache[length, visual]
    return total


def mfu(flops_per_iteration: float, step_time_s: float, num_gpus: int,
        peak_tflops_per_gpu: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all GPUs of the job."""
    return flops_per_iteration / (step_time_s * num_gpus * peak_tflops_per_gpu * 1e12)
