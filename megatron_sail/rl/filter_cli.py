"""``sail rl filter``: pass@k filtering of an RL data set with a checkpoint.

Every record (training format) is asked ``k`` times with sampling; each rollout is scored with
the ``boxed_answer`` reward against the record's reference, and the records go to
``kept.jsonl`` / ``dropped.jsonl`` with their pass rate (``megatron_sail.rl.filter``).

The reference is the record's ``"reference"`` field, else its ``"answer"`` field (a string or
a number), else the ``\\boxed{}`` content of its last gpt turn - the one training would learn,
which the prompt leaves out. A record with none is skipped and counted.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

from megatron_sail.errors import UserError, check_option_ranges
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID

REFERENCE_KEYS = ("reference", "answer")
PASSES_KEY, K_KEY = "passes", "k"

DESCRIPTION = """pass@k filtering: sample k answers per record, score each with the boxed_answer
reward, drop the records every rollout solves (--drop-unsolved: also those none solves) and
write DIR/kept.jsonl and DIR/dropped.jsonl, each record with "pass_rate", "passes" and "k".
The reference answer: the record's "reference" or "answer" field, else the \\boxed{} content
of its last gpt turn."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sail rl filter", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="a run's checkpoints/ directory (latest is used) or an iter_* directory")
    p.add_argument("--input", required=True, help="RL records (training-format JSONL)")
    p.add_argument("--out", required=True, help="directory for kept.jsonl and dropped.jsonl")
    p.add_argument("--k", type=int, default=4, help="rollouts per record (default 4: pass@4)")
    p.add_argument("--drop-unsolved", action="store_true",
                   help="also drop the records no rollout solves")
    p.add_argument("--tokenizer", help="tokenizer (HF directory or sentencepiece .model); "
                                       "default: the run's")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-context-token-id", type=int, default=RELEASE_IMG_CONTEXT_ID)
    p.add_argument("--eos-token-id", type=int, nargs="+", default=None,
                   help="end token ids (default: the tokenizer's <|im_end|>)")
    p.add_argument("--thinking", action="store_true",
                   help="append the SAIL-VL2-Thinking prompt to every user turn")
    p.add_argument("--batch-size", type=int, default=4,
                   help="records generated together (each with its k rollouts)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    return p


def reference_of(obj: dict) -> str | None:
    """The record's reference answer (module docstring), or None when it has none."""
    from megatron_sail.rl.rewards import last_boxed

    for key in REFERENCE_KEYS:
        value = obj.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
                and str(value).strip():
            return str(value)
    conv = obj.get("conversations")
    last = conv[-1] if isinstance(conv, list) and conv else None
    if isinstance(last, dict) and last.get("from") in ("gpt", "assistant") \
            and isinstance(last.get("value"), str):
        return last_boxed(last["value"])
    return None


def question_of(obj: dict) -> str:
    """The last user turn's text (for rewards that read the question)."""
    turns = [t for t in obj["conversations"]
             if isinstance(t, dict) and t.get("from") in ("human", "user")]
    return str(turns[-1].get("value", "")) if turns else ""


def correctness(references: Sequence[str], questions: Sequence[str],
                rollouts: Sequence[Sequence[str]]) -> list[list[bool]]:
    """Per record, whether each rollout earns the ``boxed_answer`` reward."""
    from megatron_sail.rl.rewards import Sample, build_rewards

    score = build_rewards({"boxed_answer": 1.0})
    samples = [Sample(q, text, ref) for ref, q, texts in zip(references, questions, rollouts)
               for text in texts]
    flat = score(samples).parts["boxed_answer"] if samples else []
    out, at = [], 0
    for texts in rollouts:
        out.append([s == 1.0 for s in flat[at:at + len(texts)]])
        at += len(texts)
    return out


def with_counts(records: Sequence[dict], correct: Sequence[Sequence[bool]]) -> list[dict]:
    """Each record unchanged plus how many of its ``k`` rollouts passed."""
    return [{**r, PASSES_KEY: sum(c), K_KEY: len(c)} for r, c in zip(records, correct)]


def _filter(ns) -> int:
    import os

    import torch

    from megatron_sail.data.records.record import RecordError
    from megatron_sail.generation.cli import (
        answer_text, chat_encoder, read_prompt_file, tokenizer_and_config,
    )
    from megatron_sail.generation.cli_job import tiles_per_prompt
    from megatron_sail.generation.runner import GenerateOptions, run_generation
    from megatron_sail.rl.filter import split_by_pass_rate, write_split

    check_option_ranges(ns, positive=("k", "batch_size", "max_new_tokens", "tp", "pp"))
    if not os.path.isfile(ns.input):
        raise UserError(f"--input {ns.input}: no such file")
    cfg, tokenizer, eos = tokenizer_and_config(ns)

    def has_reference(obj: dict, line: int) -> None:
        if reference_of(obj) is None:
            raise RecordError(ns.input, line, "no reference answer (a \"reference\" or \"answer\" "
                                              "field, or a \\boxed{} in the last gpt turn)")

    batch = read_prompt_file(ns.input, chat_encoder(cfg, tokenizer), ns.thinking, "rl filter",
                             accept=has_reference)
    k = ns.k
    # Each record's k rollouts side by side (record-major), its tiles repeated with it.
    prompts = [p for p in batch.prompts for _ in range(k)]
    pixels = None
    if batch.pixel_values is not None:
        tiles = tiles_per_prompt(batch.prompts, batch.pixel_values, ns.img_context_token_id,
                                 cfg.model.vision.patch_size)
        starts = [sum(tiles[:i]) for i in range(len(tiles))]
        pixels = torch.cat([batch.pixel_values[s:s + t] for s, t in zip(starts, tiles)
                            for _ in range(k)])
    opts = GenerateOptions(max_new_tokens=ns.max_new_tokens, temperature=ns.temperature,
                           top_p=ns.top_p, top_k=ns.top_k, seed=ns.seed, eos_token_ids=eos,
                           img_context_token_id=ns.img_context_token_id, tp=ns.tp, pp=ns.pp,
                           dtype=ns.dtype, batch_size=ns.batch_size * k, progress=True,
                           vocab_limit=tokenizer.vocab_size, group=k)
    start = time.perf_counter()
    result = run_generation(ns.ckpt, prompts, pixels, opts)
    texts = [answer_text(tokenizer, g, eos) for g in result.generated]
    rollouts = [texts[i * k:(i + 1) * k] for i in range(len(batch.records))]
    correct = correctness([reference_of(r) for r in batch.records],
                          [question_of(r) for r in batch.records], rollouts)
    split = split_by_pass_rate(with_counts(batch.records, correct), correct, ns.drop_unsolved)
    kept, dropped = write_split(split, ns.out)
    seconds = time.perf_counter() - start
    n = len(batch.records)
    print(f"sail rl filter: kept {len(split.kept)} of {n} records in {kept}, dropped "
          f"{len(split.dropped)} in {dropped} ({split.solved} solved by all {k} rollouts, "
          f"{split.unsolved} by none); {batch.skipped} records skipped; {len(prompts)} rollouts, "
          f"{result.tokens} tokens, {n / max(seconds, 1e-9):.2f} records/s")
    return 0


def main(argv: list[str]) -> int:
    """User errors (checkpoint, config, record, option) are reported by ``sail``'s main."""
    ns = _parser().parse_args(argv)
    from megatron_sail.utils.processes import exit_on_sigterm

    with exit_on_sigterm():
        return _filter(ns)
