"""``sail generate``: answers from a megatron_sail checkpoint, for one prompt (printed), a
JSONL file of training-format records (answers added as a final gpt turn) or raw token ids
(safetensors, like ``sail forward``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from megatron_sail.errors import UserError
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID

DESCRIPTION = """Generate with a checkpoint in one of three forms:
  --prompt TEXT [--image PATH ...] [--video PATH]     print the answer
  --input prompts.jsonl --output answers.jsonl         training records, answer added as a gpt turn
  --inputs IN.safetensors --out OUT.safetensors        input_ids [B,S] int64 (+ pixel_values) ->
                                                       generated_ids [B,N] int64, -1 after the end"""


class GenerateError(UserError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sail generate", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="a run's checkpoints/ directory (latest is used) or an iter_* directory")
    form = p.add_mutually_exclusive_group(required=True)
    form.add_argument("--prompt", help="the question (an <image> placeholder per image, or "
                                       "images go first)")
    form.add_argument("--input", help="JSONL records (training format); a trailing gpt turn is "
                                      "replaced by the generated answer")
    form.add_argument("--inputs", help="safetensors with input_ids [B, S] int64 and optional "
                                       "pixel_values [tiles, 3, H, W] float32")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--video", help="video file (frames sampled as in training, one tile each)")
    p.add_argument("--tokenizer", help="tokenizer (HF directory or sentencepiece .model); "
                                       "default: the run's")
    p.add_argument("--output", help="answers JSONL (with --input)")
    p.add_argument("--out", help="safetensors for generated_ids (with --inputs)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-context-token-id", type=int, default=RELEASE_IMG_CONTEXT_ID)
    p.add_argument("--eos-token-id", type=int, nargs="+", default=None,
                   help="end token ids (default: the tokenizer's <|im_end|>)")
    p.add_argument("--thinking", action="store_true",
                   help="append the SAIL-VL2-Thinking prompt to every user turn")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1, help="expert parallelism (MoE)")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="re-run the whole sequence every step (the reference path; slower)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    return p


def _options(ns, eos: tuple[int, ...], tokenizer=None, stream_tokenizer=None):
    from megatron_sail.generation.runner import GenerateOptions

    return GenerateOptions(max_new_tokens=ns.max_new_tokens, temperature=ns.temperature,
                           top_p=ns.top_p, top_k=ns.top_k, seed=ns.seed, eos_token_ids=eos,
                           img_context_token_id=ns.img_context_token_id, tp=ns.tp, pp=ns.pp,
                           ep=ns.ep, kv_cache=not ns.no_kv_cache, dtype=ns.dtype,
                           batch_size=ns.batch_size, stream_tokenizer=stream_tokenizer,
                           progress=ns.input is not None,
                           vocab_limit=None if tokenizer is None else tokenizer.vocab_size)


def chat_encoder(cfg, tokenizer):
    """The training pipeline's sample encoder, set up to build generation prompts."""
    from megatron_sail.data.loader.build import sample_encoder

    encoder = sample_encoder(cfg, tokenizer)
    encoder.seq_length = None      # the context limit is checked against the model's positions
    encoder.image_decoder = "pillow"
    return encoder


def _raw(ns) -> int:
    import torch
    from safetensors.torch import load_file, save_file

    from megatron_sail.generation.runner import run_generation, to_padded
    from megatron_sail.utils.atomic import staged_file

    if not ns.out:
        raise GenerateError("--inputs needs --out OUT.safetensors")
    if not ns.eos_token_id:
        raise GenerateError("--inputs needs --eos-token-id ID (raw ids come without a tokenizer)")
    try:
        inputs = load_file(ns.inputs)
    except Exception as exc:  # safetensors raises its own error types
        raise GenerateError(f"{ns.inputs}: unreadable safetensors file: {exc}") from None
    ids = inputs.get("input_ids")
    if ids is None or ids.dtype != torch.int64 or ids.dim() != 2 or ids.shape[1] == 0:
        raise GenerateError(f"{ns.inputs}: input_ids must be an int64 tensor [batch, length]")
    pixels = inputs.get("pixel_values")
    result = run_generation(ns.ckpt, ids.tolist(), pixels, _options(ns, tuple(ns.eos_token_id)))
    with staged_file(ns.out) as tmp:   # as sail forward: whole file or none
        save_file({"generated_ids": to_padded(result.generated)}, str(tmp))
    print(f"wrote generated_ids [{len(result.generated)}, "
          f"{max(len(g) for g in result.generated)}] to {ns.out} "
          f"({result.tokens / max(result.seconds, 1e-9):.1f} tokens/s)")
    return 0


def tokenizer_and_config(ns):
    """(config, tokenizer, end token ids) for ``ns.ckpt``/``ns.tokenizer``/``ns.eos_token_id``."""
    from megatron_sail.generation.loading import find_tokenizer
    from megatron_sail.generation.runner import open_model

    ckpt_dir, cfg = open_model(ns.ckpt)
    tokenizer = find_tokenizer(ckpt_dir, cfg.data.tokenizer, ns.tokenizer)
    if tokenizer is None:
        raise GenerateError(f"{ns.ckpt}: no tokenizer found for this run; give --tokenizer")
    eos = tuple(ns.eos_token_id) if ns.eos_token_id else (tokenizer.eos_id,)
    return cfg, tokenizer, eos


def _prompt(ns) -> int:
    import os

    from megatron_sail.generation.loading import tokenizer_source
    from megatron_sail.generation.prompts import SampleError, encode_prompt, prompt_record
    from megatron_sail.generation.runner import open_model, run_generation

    for flag, path in [("--image", i) for i in ns.image] + [("--video", ns.video)] * bool(ns.video):
        if not os.path.isfile(path):
            raise GenerateError(f"{flag} {path}: no such file")
    cfg, tokenizer, eos = tokenizer_and_config(ns)
    obj = {"conversations": [{"from": "human", "value": ns.prompt}]}
    if ns.image:
        obj["image"] = [os.path.abspath(i) for i in ns.image]
    if ns.video:
        obj["video"] = os.path.abspath(ns.video)
    try:
        prompt = encode_prompt(chat_encoder(cfg, tokenizer),
                               prompt_record(obj, "--prompt", None, None, ns.thinking))
    except SampleError as exc:
        raise GenerateError(str(exc)) from None
    ckpt_dir, _ = open_model(ns.ckpt)
    source = tokenizer_source(ckpt_dir, cfg.data.tokenizer, ns.tokenizer)
    if os.path.exists(source):   # the rank processes resolve it, maybe from elsewhere
        source = os.path.abspath(source)
    # the rank that picks the tokens prints the answer as they arrive
    run_generation(ns.ckpt, [prompt.ids], prompt.pixel_values,
                   _options(ns, eos, tokenizer, stream_tokenizer=source))
    return 0


def answer_text(tokenizer, new_ids: list[int], eos) -> str:
    """The decoded answer: the new tokens without the end token that stopped them."""
    return tokenizer.decode(new_ids[:-1] if new_ids and new_ids[-1] in eos else new_ids)


@dataclass
class PromptFile:
    """The usable records of a JSONL file and their prompts (the model's input ids, and the
    pixel values of all their tiles in record order)."""
    records: list[dict]
    prompts: list[list[int]]
    pixel_values: Optional["torch.Tensor"]
    skipped: int


def read_prompt_file(path: str, encoder, thinking: bool, command: str,
                     accept: Optional[Callable[[dict, int], None]] = None) -> PromptFile:
    """Training-format records -> prompts up to the assistant header. A record that does not
    parse, encode or pass ``accept(obj, line)`` (which raises ``RecordError`` to refuse it)
    is skipped with a ``sail <command>: skipped`` line and counted; none usable is an error."""
    import torch

    from megatron_sail.data.records.record import RecordError, media_base
    from megatron_sail.generation.prompts import SampleError, encode_prompt, prompt_record

    base = media_base(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerateError(f"{path}: cannot read ({exc})") from None
    objs, prompts, pixels, skipped = [], [], [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt = encode_prompt(encoder, prompt_record(obj, path, number, base, thinking))
            if accept is not None:
                accept(obj, number)
        except (json.JSONDecodeError, RecordError, SampleError) as exc:
            skipped += 1
            print(f"sail {command}: skipped {path}:{number}: {exc}", file=sys.stderr)
            continue
        objs.append(obj)
        prompts.append(prompt.ids)
        if prompt.pixel_values is not None:
            pixels.append(prompt.pixel_values)
    if not prompts:
        raise GenerateError(f"{path}: no usable record ({skipped} skipped)")
    return PromptFile(objs, prompts, torch.cat(pixels) if pixels else None, skipped)


def _jsonl(ns) -> int:
    from megatron_sail.utils.atomic import write_atomic
    from megatron_sail.generation.runner import run_generation

    if not ns.output:
        raise GenerateError("--input needs --output answers.jsonl")
    cfg, tokenizer, eos = tokenizer_and_config(ns)
    batch = read_prompt_file(ns.input, chat_encoder(cfg, tokenizer), ns.thinking, "generate")
    result = run_generation(ns.ckpt, batch.prompts, batch.pixel_values,
                            _options(ns, eos, tokenizer))
    out = []
    for obj, new in zip(batch.records, result.generated):
        answer = answer_text(tokenizer, new, eos)
        conv = list(obj["conversations"])
        if conv and conv[-1].get("from") in ("gpt", "assistant"):
            conv = conv[:-1]
        out.append(json.dumps(dict(obj, conversations=conv + [{"from": "gpt", "value": answer}]),
                              ensure_ascii=False))
    Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(ns.output), "".join(line + "\n" for line in out))
    print(f"wrote {len(out)} answers to {ns.output} ({batch.skipped} records skipped; "
          f"{result.tokens} tokens, {result.tokens / max(result.seconds, 1e-9):.1f} tokens/s)")
    return 0


def main(argv: list[str]) -> int:
    """User errors (checkpoint, config, record, option) are reported by ``sail``'s main."""
    ns = _parser().parse_args(argv)
    from megatron_sail.utils.processes import exit_on_sigterm

    with exit_on_sigterm():
        if ns.inputs:
            return _raw(ns)
        if ns.input:
            return _jsonl(ns)
        return _prompt(ns)
