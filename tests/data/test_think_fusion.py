"""Think-fusion data: direct-answer records (loss on the answer only) and CoT records asked in
thinking mode (the release's prompt appended, loss on the reasoning and the answer), mixed by
a blend at the ratio of its weights."""

import json
import os

import pytest

from megatron_sail.data.records.blend import BlendSchedule, load_blend
from megatron_sail.data.encoding.conversation import encode_conversation
from megatron_sail.data.encoding.hf_tokenizer import HFTokenizer
from megatron_sail.data.records.record import (
    THINKING_PROMPT, RecordError, iter_jsonl, parse_record,
)
from tests.data.media_fixtures import chat

RELEASE = "/work/shared/fixtures/sailvl2-2b-release"
COT = "<think>\n3 apples plus 4 apples.\n</think>\n\n\\boxed{7}"
DIRECT = "<think>\n\n</think>\n\n7"  # Qwen3's no-thinking form: an empty think block


def _record(obj):
    return parse_record(obj, "t.jsonl", 1)


def test_thinking_appends_the_release_prompt_to_every_user_turn():
    rec = _record({"conversations": chat("How many?", COT, "And now?", COT), "thinking": True})
    users = [t.text for t in rec.turns if t.role == "user"]
    assert users == ["How many?" + THINKING_PROMPT, "And now?" + THINKING_PROMPT]
    assert THINKING_PROMPT.startswith("You FIRST think about the reasoning process")
    assert THINKING_PROMPT.endswith("The final answer MUST BE put in \\boxed{}.")
    # written back, the prompt is in the text and the flag gone: read again, it stays once
    again = _record(rec.to_json())
    assert again.turns == rec.turns and "thinking" not in rec.to_json()
    plain = _record({"conversations": chat("How many?", COT)})
    assert plain.turns[0].text == "How many?"


@pytest.mark.parametrize("obj, message", [
    ({"conversations": chat("q", "7"), "thinking": True}, "does not open with a <think>"),
    ({"conversations": chat("q", COT), "thinking": "yes"}, "'thinking' must be true or false"),
])
def test_bad_thinking_records_are_rejected_with_the_reason(obj, message):
    with pytest.raises(RecordError, match=message):
        _record(obj)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_blend_mixes_direct_and_cot_samples_at_the_configured_ratio(tmp_path):
    direct = [{"conversations": chat(f"q{i}", DIRECT), "loss": "answer_only"} for i in range(20)]
    cot = [{"conversations": chat(f"q{i}", COT), "thinking": True} for i in range(5)]
    _write_jsonl(tmp_path / "direct.jsonl", direct)
    _write_jsonl(tmp_path / "cot.jsonl", cot)
    (tmp_path / "think-fusion.yaml").write_text(
        "datasets:\n  - {path: direct.jsonl, weight: 0.9}\n  - {path: cot.jsonl, weight: 0.1}\n")
    blend = load_blend(str(tmp_path / "think-fusion.yaml"))
    records = [list(iter_jsonl(e.path)) for e in blend.entries]
    schedule = BlendSchedule([len(r) for r in records], blend.weights, seed=3)
    drawn = [records[d][i] for d, i in map(schedule.source_of, range(1000))]
    assert sum(r.loss == "answer_only" for r in drawn) == 900
    cot_drawn = [r for r in drawn if r.loss == "all_assistant"]
    assert len(cot_drawn) == 100
    assert all(r.turns[0].text.endswith(THINKING_PROMPT) for r in cot_drawn)
    assert not any(THINKING_PROMPT in r.turns[0].text for r in drawn if r.loss == "answer_only")


@pytest.mark.skipif(not os.path.isdir(RELEASE), reason="release tokenizer fixture missing")
def test_loss_covers_the_answer_of_direct_samples_and_reasoning_plus_answer_of_cot():
    hf = HFTokenizer(RELEASE)

    def targets(rec):
        enc = encode_conversation(hf, rec.turns, loss=rec.loss)
        ids = [int(t) for t, m in zip(enc.labels, enc.loss_mask) if m]
        return hf.decode(ids), hf.decode(enc.tokens.tolist())

    direct, _ = targets(_record({"conversations": chat("q", DIRECT), "loss": "answer_only"}))
    assert direct == "7<|im_end|>"
    cot, text = targets(_record({"conversations": chat("q", COT), "thinking": True}))
    assert cot == COT + "<|im_end|>"
    assert "<|im_start|>user\nq" + THINKING_PROMPT + "<|im_end|>" in text
