"""Prompts for ``sail generate`` from text and media, through the training data pipeline:
records parsed as training parses them, images tiled and ``<image>`` expanded by the
``SampleEncoder``, rendered in the checkpoint's chat template up to the assistant header."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from megatron_sail.data.packing.microbatch import normalize_pixels
from megatron_sail.data.records.record import THINKING_PROMPT, USER, Turn, parse_record
from megatron_sail.data.encoding.sample_encoder import FileMedia, SampleEncoder, SampleError


@dataclass
class Prompt:
    ids: list[int]
    pixel_values: torch.Tensor | None  # float32 [tiles, 3, H, W], ImageNet-normalised


def prompt_record(obj: dict, source: str, line: int | None, base_dir: str | None,
                  thinking: bool):
    """A record whose last turn is the user's question (an assistant turn after it, as in a
    training record, is dropped - it is the answer to be generated again)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        return parse_record(obj, source, line, base_dir)   # raises its clear error
    conv = list(obj["conversations"])
    if conv and isinstance(conv[-1], dict) and conv[-1].get("from") in ("gpt", "assistant"):
        conv = conv[:-1]
    # parse_record validates full conversations: a placeholder answer closes it, then goes.
    # Thinking is applied here: the record's check of earlier answers' think blocks would
    # reject the placeholder.
    flag = obj.get("thinking", False)
    full = dict(obj, conversations=conv + [{"from": "gpt", "value": "-"}],
                thinking=flag if not isinstance(flag, bool) else False)  # a bad value: its error
    record = parse_record(full, source, line, base_dir)
    turns = record.turns[:-1]
    if thinking or flag is True:   # the release's usage: question + cot_prompt
        turns = tuple(Turn(USER, t.text + THINKING_PROMPT) if t.role == USER else t for t in turns)
    return dataclasses.replace(record, turns=turns)


def encode_prompt(encoder: SampleEncoder, record, media: FileMedia | None = None) -> Prompt:
    enc = encoder.encode(record, media or FileMedia())
    pixels = normalize_pixels(enc.pixel_values) if enc.pixel_values.shape[0] else None
    return Prompt(enc.tokens.tolist(), pixels)


__all__ = ["Prompt", "SampleError", "encode_prompt", "prompt_record"]
