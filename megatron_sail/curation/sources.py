"""Where judges' scores and generated QA come from: a Python function ``module:function``
(imported with the spec's directory on ``sys.path``) or a megatron_sail checkpoint run through
batched generation (``sail generate``'s machinery: the model at its TP/PP in rank processes,
prompts encoded by the training data pipeline in the checkpoint's chat template)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from megatron_sail.curation.items import Item
from megatron_sail.curation.spec import ModelSource
from megatron_sail.errors import UserError, shown


def load_function(ref: str, spec_dir: Path) -> Callable:
    module_name, _, attr = ref.partition(":")
    if str(spec_dir) not in sys.path:
        sys.path.insert(0, str(spec_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"python {shown(ref)}: cannot import {module_name} ({exc}; looked in "
                        f"{spec_dir} and the Python path)") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"python {shown(ref)}: {module_name} has no function {attr}")
    return fn


def call_function(fn: Callable, ref: str, item: Item):
    """``fn(record)``; an exception in the user's code stops the run with its location."""
    try:
        return fn(item.record)
    except Exception as exc:
        raise UserError(f"python {ref} raised on {item.where}: {type(exc).__name__}: {exc}") from None


class ModelClient:
    """Generation with one checkpoint for a list of (item, prompt text) pairs."""

    def __init__(self, source: ModelSource) -> None:
        from megatron_sail.generation.cli import chat_encoder, tokenizer_and_config

        self.source = source
        ns = SimpleNamespace(ckpt=source.checkpoint, tokenizer=source.tokenizer, eos_token_id=None)
        self.cfg, self.tokenizer, self.eos = tokenizer_and_config(ns)
        self.encoder = chat_encoder(self.cfg, self.tokenizer)

    def _prompt(self, item: Item, text: str):
        """Token ids and tiles of the question ``text`` about the item's media."""
        from megatron_sail.generation.prompts import encode_prompt, prompt_record

        refs = item.media_refs()
        images = [r for k, r in refs if k == "image"]
        video = next((r for k, r in refs if k == "video"), None)
        marks = "<image>\n" * len(images) + ("<video>\n" if video else "")
        obj: dict = {"conversations": [{"from": "human", "value": marks + text}]}
        if images:
            obj["image"] = [item.media_name(r) for r in images]
        if video:
            obj["video"] = item.media_name(video)
        if item.shard is not None:
            from megatron_sail.data.records.reading import MemberMedia

            from megatron_sail.curation.items import _shard_reader
            members = _shard_reader(item.shard[0]).members(item.shard[1])
            obj["image"] = images or None
            obj["video"] = video
            media = MemberMedia(members, item.shard[0])
            return encode_prompt(self.encoder, prompt_record(obj, item.where, None, None, False), media)
        return encode_prompt(self.encoder, prompt_record(obj, item.where, None, None, False))

    def generate(self, requests: list[tuple[Item, str]], temperature: float,
                 seed: int) -> list[Optional[str]]:
        """One answer per request; None where the prompt cannot be built (bad media)."""
        import torch

        from megatron_sail.data.records.record import RecordError
        from megatron_sail.generation.cli import answer_text
        from megatron_sail.generation.prompts import SampleError
        from megatron_sail.generation.runner import GenerateOptions, run_generation

        ids, pixels, usable = [], [], []
        for n, (item, text) in enumerate(requests):
            try:
                prompt = self._prompt(item, text)
            except (RecordError, SampleError):
                continue
            ids.append(prompt.ids)
            usable.append(n)
            if prompt.pixel_values is not None:
                pixels.append(prompt.pixel_values)
        out: list[Optional[str]] = [None] * len(requests)
        if not ids:
            return out
        s = self.source
        opts = GenerateOptions(max_new_tokens=s.max_new_tokens, temperature=temperature, seed=seed,
                               eos_token_ids=self.eos, img_context_token_id=s.img_context_token_id,
                               tp=s.tp, pp=s.pp, dtype=s.dtype, batch_size=s.batch_size,
                               vocab_limit=self.tokenizer.vocab_size)
        result = run_generation(s.checkpoint, ids, torch.cat(pixels) if pixels else None, opts)
        for n, new in zip(usable, result.generated):
            out[n] = answer_text(self.tokenizer, new, self.eos)
        return out


_CLIENTS: dict[ModelSource, ModelClient] = {}


def model_client(source: ModelSource) -> ModelClient:
    """One client per checkpoint and process (tokenizer and encoder are built once)."""
    if source not in _CLIENTS:
        _CLIENTS[source] = ModelClient(source)
    return _CLIENTS[source]
