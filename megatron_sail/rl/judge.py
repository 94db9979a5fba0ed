"""The ``judge`` reward's model: a megatron_sail checkpoint asked through the generation API
(``sail generate``'s rank processes), greedy, one user turn per question."""

from __future__ import annotations

from megatron_sail.errors import UserError


def judge_options(rl) -> dict:
    """Factory options of the ``judge`` reward for ``rl`` (an RLConfig)."""
    from megatron_sail.rl.rewards import DEFAULT_JUDGE_TEMPLATE

    if not rl.judge_checkpoint:
        raise UserError("the judge reward needs rl.judge_checkpoint, the model it asks")
    return {"ask": checkpoint_ask(rl.judge_checkpoint),
            "template": rl.judge_template or DEFAULT_JUDGE_TEMPLATE,
            "verdict": rl.judge_verdict, "retries": rl.judge_retries}


def checkpoint_ask(ckpt: str, max_new_tokens: int = 256):
    """``ask(prompts) -> replies`` answering with ``ckpt`` (checked now: a missing or broken
    checkpoint fails at start-up, not at the first episode)."""
    from megatron_sail.generation.cli import answer_text, chat_encoder
    from megatron_sail.generation.loading import find_tokenizer
    from megatron_sail.generation.prompts import encode_prompt, prompt_record
    from megatron_sail.generation.runner import GenerateOptions, open_model, run_generation

    ckpt_dir, cfg = open_model(ckpt)
    tokenizer = find_tokenizer(ckpt_dir, cfg.data.tokenizer)
    if tokenizer is None:
        raise UserError(f"rl.judge_checkpoint={ckpt}: no tokenizer found for it")
    encoder = chat_encoder(cfg, tokenizer)
    eos = (tokenizer.eos_id,)
    # The judge sees text only, but the id must still be the model's placeholder: an id that
    # text also uses (e.g. 0) would be read as image tokens without tiles.
    img_id = cfg.model.img_context_token_id
    if img_id is None:
        img_id = tokenizer.img_context_id

    def ask(prompts: list[str]) -> list[str]:
        ids = [encode_prompt(encoder, prompt_record(
            {"conversations": [{"from": "human", "value": text}]}, "judge", None, None, False)).ids
            for text in prompts]
        opts = GenerateOptions(max_new_tokens=max_new_tokens, eos_token_ids=eos,
                               img_context_token_id=img_id,
                               vocab_limit=tokenizer.vocab_size, batch_size=len(ids))
        return [answer_text(tokenizer, g, eos) for g in run_generation(ckpt, ids, None, opts).generated]
    return ask
