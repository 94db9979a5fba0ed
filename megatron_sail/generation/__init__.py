"""Generation on the Megatron model: ``generate`` (batched, greedy or sampled) and
``load_for_generation`` (a checkpoint at a chosen TP/PP in the calling ranks)."""

from megatron_sail.generation.generate import generate
from megatron_sail.generation.loading import load_for_generation

__all__ = ["generate", "load_for_generation"]
