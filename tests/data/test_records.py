import json
import os

import pytest

from megatron_sail.data.records.record import (
    ASSISTANT,
    SYSTEM,
    USER,
    Record,
    RecordError,
    Turn,
    iter_jsonl,
    parse_record,
    split_think,
)
from tests.data.media_fixtures import chat, write_jsonl


def parse(obj, base_dir=None) -> Record:
    return parse_record(obj, "d.jsonl", 7, base_dir)


def test_internvl_record_parses_with_roles_and_resolved_media(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write_jsonl(tmp_path / "sub" / "d.jsonl", [
        {"id": 12, "image": ["imgs/a.jpg", "/abs/b.png"],
         "conversations": chat("<image>\n<image>\nCompare.", "Same.", "Sure?", "Yes."), "width": 3},
    ])
    (record,) = iter_jsonl(str(path))
    assert record.id == "12" and record.line == 1 and record.source == str(path)
    assert record.images == (str(tmp_path / "sub" / "imgs" / "a.jpg"), "/abs/b.png")
    assert [t.role for t in record.turns] == [USER, ASSISTANT, USER, ASSISTANT]
    assert record.loss == "all_assistant" and record.video is None
    # A root from the blend replaces the JSONL's directory.
    (record,) = iter_jsonl(str(path), root=str(tmp_path / "media"))
    assert record.images[0] == str(tmp_path / "media" / "imgs" / "a.jpg")


def test_missing_placeholder_is_prepended_for_one_image_or_video():
    record = parse({"image": "a.jpg", "conversations": chat("What is it?", "A cat.")})
    assert record.turns[0] == Turn(USER, "<image>\nWhat is it?")
    record = parse({"video": "v.mp4", "conversations": chat("Describe.", "Rain.", "More?", "No.")})
    assert record.turns[0].text == "<video>\nDescribe." and record.turns[2].text == "More?"
    record = parse({"image": "a.jpg", "conversations": chat("Look: <image> here", "ok")})
    assert record.turns[0].text == "Look: <image> here"


def test_plain_text_and_system_records():
    record = parse({"conversations": chat("Hi", "Hello", system="Be brief.")})
    assert record.turns[0] == Turn(SYSTEM, "Be brief.") and record.images == () and record.media == ()


@pytest.mark.parametrize("obj, reason", [
    ([1, 2], "must be a JSON object"),
    ({"image": "a.jpg"}, "missing 'conversations'"),
    ({"conversations": []}, "non-empty list"),
    ({"image": ["a.jpg", "b.jpg"], "conversations": chat("<image> only one", "x")},
     "1 <image> placeholder(s) but 2 images"),
    ({"image": ["a.jpg", "b.jpg"], "conversations": chat("none", "x")}, "0 <image> placeholder(s) but 2 images"),
    ({"conversations": chat("<image>", "x")}, "1 <image> placeholder(s) but 0 images"),
    ({"conversations": chat("<video> twice <video>", "x"), "video": "v.mp4"}, "2 <video> placeholder(s) but 1 videos"),
    ({"image": "a.jpg", "conversations": chat("q", "see <image>")}, "conversations[1] is from assistant but has a media"),
    ({"conversations": chat("a", "b", "c")}, "last turn must be an assistant turn"),
    ({"conversations": [{"from": "gpt", "value": "x"}]}, "conversations[0] is from assistant: expected user"),
    ({"conversations": chat("a", "b") + [{"from": "gpt", "value": "c"}]}, "conversations[2] is from assistant: expected user"),
    ({"conversations": chat("a", "b") + [{"from": "system", "value": "s"}, {"from": "gpt", "value": "c"}]},
     "system turn is only allowed first"),
    ({"conversations": [{"from": "system", "value": "s"}]}, "no user/assistant turns"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from is 'bot'"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]}, "value must be a string"),
    ({"conversations": chat("a <IMG_CONTEXT>", "b")}, "reserved token '<IMG_CONTEXT>'"),
    ({"conversations": chat("a", "b<|im_end|>")}, "reserved token '<|im_end|>'"),
    ({"conversations": chat("a", "b"), "loss": "think"}, "'loss' is 'think'"),
    ({"conversations": chat("a", "<think>never closed"), "loss": "answer_only"}, "never closes it"),
    ({"conversations": chat("a", "b"), "image": []}, "'image' must be a path or a non-empty list"),
    ({"conversations": chat("a", "b"), "image": ["", "x"]}, "not a non-empty path"),
    ({"conversations": chat("a", "b"), "video": ["a.mp4"]}, "'video' must be one path"),
    ({"conversations": chat("a", "b"), "id": [1]}, "'id' must be a string or an integer"),
])
def test_record_errors_name_file_line_and_reason(obj, reason):
    with pytest.raises(RecordError) as info:
        parse(obj)
    assert str(info.value).startswith("d.jsonl:7: ")
    assert reason in info.value.reason, info.value.reason


def test_jsonl_errors_carry_line_numbers_and_reading_goes_on(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"conversations": chat("a", "b")},
        "",
        "{not json",
        {"conversations": chat("a")},
        {"conversations": chat("c", "d")},
    ])
    path.write_bytes(path.read_bytes() + b"\xff\xfe{}\n")
    errors: list[RecordError] = []
    records = list(iter_jsonl(str(path), on_error=errors.append))
    assert [r.line for r in records] == [1, 5]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (3, "malformed JSON"), (4, "the last turn must be an assistant turn (nothing to learn from a trailing user turn)"),
        (6, "not UTF-8")]
    with pytest.raises(RecordError, match=r"d.jsonl:3: malformed JSON"):
        list(iter_jsonl(str(path)))
    with pytest.raises(RecordError, match="cannot open"):
        list(iter_jsonl(str(tmp_path / "missing.jsonl")))


def test_to_json_round_trips():
    obj = {"id": "x", "image": ["a.jpg"], "video": "v.mp4", "loss": "answer_only",
           "conversations": chat("<image>\n<video>\nq", "<think>t</think>a", system="s")}
    record = parse(obj)
    again = parse(json.loads(json.dumps(record.to_json())))
    assert again == record


def test_split_think_definition():
    assert split_think("<think>\nsteps\n</think>\n\n\\boxed{4}") == ("<think>\nsteps\n</think>\n\n", "\\boxed{4}")
    assert split_think("  <think></think>answer") == ("  <think></think>", "answer")
    assert split_think("answer <think>x</think>") is None  # only a leading block is reasoning
    assert split_think("plain") is None


def test_relative_paths_without_base_stay_as_given():
    record = parse({"image": "000.img0.jpg", "conversations": chat("q", "a")})
    assert record.images == ("000.img0.jpg",) and not os.path.isabs(record.images[0])
