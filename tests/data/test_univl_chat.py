"""The release's ``univl-chat`` template: ids equal tokenizing the rule's string (architecture
notes, "Chat format") with the release tokenizer; the loss covers assistant turns only."""

import os

import pytest

from megatron_sail.config import load_config
from megatron_sail.data.encoding.conversation import UNIVL_SYSTEM_MESSAGE, encode_conversation, encoded_length, render
from megatron_sail.data.encoding.hf_tokenizer import HFTokenizer
from megatron_sail.data.records.record import parse_record
from tests.data.media_fixtures import chat

RELEASE = "/work/shared/fixtures/sailvl2-2b-release"
pytestmark = pytest.mark.skipif(not os.path.isdir(RELEASE), reason="release tokenizer fixture missing")
SEP = "<|im_end|>"


@pytest.fixture(scope="module")
def hf() -> HFTokenizer:
    return HFTokenizer(RELEASE)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(RELEASE)


def rule(turns: list[tuple[str, str]], system: str = UNIVL_SYSTEM_MESSAGE, prompt: bool = False) -> str:
    """conversation.py's MPT style, written out independently of the encoder."""
    text = "<|im_start|>system\n" + system + SEP
    for role, message in turns:
        text += f"<|im_start|>{role}\n" + message + SEP
    return text + ("<|im_start|>assistant\n" if prompt else "")


def rec(conv, **extra):
    return parse_record({"conversations": conv, **extra}, "t.jsonl", 1)


@pytest.mark.parametrize("conv,turns", [
    (chat("Hi there", "Hello!"), [("user", "Hi there"), ("assistant", "Hello!")]),
    (chat("What's 2+2?", "<think>\nadd</think>\n\n\\boxed{4}", "And 3+3?", " \\boxed{6}\n"),
     [("user", "What's 2+2?"), ("assistant", "<think>\nadd</think>\n\n\\boxed{4}"),
      ("user", "And 3+3?"), ("assistant", " \\boxed{6}\n")]),
    (chat("中文 ünïcödé\t", "ünï\n\nnewlines\n"), [("user", "中文 ünïcödé\t"), ("assistant", "ünï\n\nnewlines\n")]),
])
def test_ids_equal_the_rule_tokenized(hf, reference, conv, turns):
    r = rec(conv)
    enc = encode_conversation(hf, r.turns, chat_template="univl-chat")
    text = rule(turns)
    assert render(r.turns, chat_template="univl-chat") == text
    assert enc.tokens.tolist() == reference.encode(text, add_special_tokens=False)
    assert encoded_length(hf, r.turns, chat_template="univl-chat") == len(enc.tokens)
    # No newline after <|im_end|>: every <|im_end|> is followed by <|im_start|> or ends the text.
    ids = enc.tokens.tolist()
    for i, t in enumerate(ids[:-1]):
        if t == hf.eos_id:
            assert ids[i + 1] == hf.token_id("<|im_start|>")
    # Loss: exactly the assistant texts and their closing <|im_end|>.
    target = hf.decode(enc.labels[enc.loss_mask.bool()].tolist())
    assert target == "".join(m + SEP for role, m in turns if role == "assistant")


def test_explicit_system_turn_replaces_the_default(hf, reference):
    r = rec(chat("q", "a", system="Be brief."))
    text = rule([("user", "q"), ("assistant", "a")], system="Be brief.")
    assert encode_conversation(hf, r.turns, chat_template="univl-chat").tokens.tolist() == \
        reference.encode(text, add_special_tokens=False)


def test_generation_prompt_with_an_image(hf, reference):
    from megatron_sail.data.records.record import USER, Turn

    turns = [Turn(USER, "<image>\nWhat is this?")]
    enc = encode_conversation(hf, turns, image_tiles=[2], tokens_per_tile=4, chat_template="univl-chat")
    image = "<img>" + "<IMG_CONTEXT>" * 8 + "</img>"
    text = rule([("user", image + "\nWhat is this?")], prompt=True)
    assert enc.tokens.tolist() == reference.encode(text, add_special_tokens=False)
    assert text.endswith("<|im_end|><|im_start|>assistant\n")
    assert enc.loss_mask.sum() == 0


def test_presets_choose_their_template():
    assert load_config(None, ["model.preset=sailvl2-2b"]).data.chat_template == "univl-chat"
    assert load_config(None, []).data.chat_template == "chatml"
    assert load_config(None, ["model.preset=sailvl2-2b", "data.chat_template=chatml"]).data.chat_template == "chatml"


@pytest.mark.parametrize("thinking", [False, True])
def test_sail_generate_prompt_is_the_rule(hf, reference, thinking):
    """What ``sail generate --prompt`` encodes for a SAIL-VL2 checkpoint (its encoder and record
    path), with and without --thinking (the release's cot prompt appended to the question)."""
    from megatron_sail.data.records.record import THINKING_PROMPT
    from megatron_sail.generation.cli import chat_encoder
    from megatron_sail.generation.prompts import encode_prompt, prompt_record

    cfg = load_config(None, ["model.preset=sailvl2-2b"])
    record = prompt_record({"conversations": [{"from": "human", "value": "What is 2+2?"}]},
                           "--prompt", None, None, thinking)
    prompt = encode_prompt(chat_encoder(cfg, hf), record)
    question = "What is 2+2?" + (THINKING_PROMPT if thinking else "")
    text = rule([("user", question)], prompt=True)
    assert prompt.ids == reference.encode(text, add_special_tokens=False)
    assert prompt.pixel_values is None
