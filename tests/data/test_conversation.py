"""Chat template, placeholder expansion, loss masks, the HF tokenizer and the sample encoder."""


import pytest
import torch

from megatron_sail.data.encoding.conversation import encode_conversation, encoded_length, render
from megatron_sail.data.encoding.hf_tokenizer import HFTokenizer, load_tokenizer
from megatron_sail.data.records.record import parse_record
from megatron_sail.data.encoding.sample_encoder import (
    FileMedia,
    MemberMedia,
    SampleEncoder,
    SampleError,
    SampleErrorKind,
    media_order,
)
from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer
from tests.data.media_fixtures import chat, image_bytes, truncated_jpeg, video_bytes
from tests.helpers import RELEASE_FIXTURE, require_shared

RELEASE = RELEASE_FIXTURE
# The release's template as the brief and the Qwen3 base define it. (The release's
# tokenizer_config.json ships a Kimi-VL template whose <|im_system|>/<|im_middle|> markers are
# not in its vocabulary, so it cannot be the template the model was trained with.)
CHATML = ("{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}")

pytestmark = require_shared(RELEASE)


@pytest.fixture(scope="module")
def hf() -> HFTokenizer:
    return HFTokenizer(RELEASE)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(RELEASE)


def record(obj) -> "parse_record":
    return parse_record(obj, "t.jsonl", 1)


def messages(rec):
    return [{"role": t.role, "content": t.text} for t in rec.turns]


def reference_ids(reference, msgs) -> list[int]:
    out = reference.apply_chat_template(msgs, chat_template=CHATML, tokenize=True)
    return list(out["input_ids"] if not isinstance(out, list) else out)


CONVERSATIONS = [
    chat("Hi there", "Hello!", system="Be brief."),
    chat("What's 2+2?", "<think>\nadd them</think>\n\n\\boxed{4}", "And 3+3?", "\\boxed{6}"),
    chat(" leading space", "\n\nleading newlines", "中文 ünïcödé\t tabs\r\n", "  spaced  answer  "),
    chat("<tool_call>x</tool_call> <quad>1</quad>", "<ref>cat</ref><box>(1,2)</box>"),
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_text_ids_match_transformers_chat_template(hf, reference, conv):
    rec = record({"conversations": conv})
    ids = encode_conversation(hf, rec.turns).tokens.tolist()
    assert ids == reference_ids(reference, messages(rec))
    assert render(rec.turns) == reference.apply_chat_template(messages(rec), chat_template=CHATML, tokenize=False)


def test_hf_tokenizer_matches_transformers(hf, reference):
    texts = ["Hello world", "x<IMG_CONTEXT><IMG_CONTEXT>y", "<think>\nhmm</think>\n\n\\boxed{42}",
             "user\n\n\nfoo  bar\t\r\nbaz", "中文测试 ünïcödé  ", "I'm 123456 don't", "<|fim_prefix|><|endoftext|>", ""]
    for text in texts:
        assert hf.encode(text) == reference.encode(text, add_special_tokens=False), text
        assert hf.decode(hf.encode(text)) == text
    assert hf.vocab_size == len(reference) == 151678
    assert (hf.img_context_id, hf.img_start_id, hf.img_end_id, hf.pad_id, hf.eos_id) == \
        (151671, 151669, 151670, 151643, 151645)
    assert (hf.token_id("<think>"), hf.token_id("</think>")) == (151667, 151668)
    with pytest.raises(KeyError):
        hf.token_id("<nope>")


def test_load_tokenizer_picks_by_path(tmp_path, tokenizer):
    assert isinstance(load_tokenizer(RELEASE), HFTokenizer)
    assert isinstance(load_tokenizer(tokenizer.model_path), SentencePieceTokenizer)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json and no vocab.json"):
        HFTokenizer(str(tmp_path))


def targets(hf, enc) -> str:
    """The text of every target token, in order."""
    ids = enc.labels[enc.loss_mask.bool()].tolist()
    return hf.decode(ids)


def test_loss_covers_exactly_assistant_turns_with_their_end(hf):
    rec = record({"conversations": chat("q1", "first answer", "q2", "second answer", system="sys")})
    enc = encode_conversation(hf, rec.turns)
    assert targets(hf, enc) == "first answer<|im_end|>second answer<|im_end|>"
    n = len(enc.tokens)
    assert enc.labels[:-1].tolist() == enc.tokens[1:].tolist() and enc.labels[-1] == hf.pad_id
    assert enc.position_ids.tolist() == list(range(n)) and enc.loss_mask[-1] == 0
    assert enc.tokens.dtype == enc.labels.dtype == torch.int64 and enc.loss_mask.dtype == torch.float32


def test_answer_only_masks_the_think_block(hf):
    conv = chat("q", "<think>\nstep 1\nstep 2\n</think>\n\nThe answer is \\boxed{7}.", "again?", "yes")
    think_ids = encode_conversation(hf, record({"conversations": conv}).turns)
    answer_only = encode_conversation(hf, record({"conversations": conv, "loss": "answer_only"}).turns,
                                      loss="answer_only")
    assert torch.equal(think_ids.tokens, answer_only.tokens)
    assert targets(hf, think_ids) == "<think>\nstep 1\nstep 2\n</think>\n\nThe answer is \\boxed{7}.<|im_end|>yes<|im_end|>"
    assert targets(hf, answer_only) == "The answer is \\boxed{7}.<|im_end|>yes<|im_end|>"
    # The think tags are single tokens, kept as text.
    assert think_ids.tokens.tolist().count(151667) == 1 and think_ids.tokens.tolist().count(151668) == 1


def test_image_and_video_placeholders_expand(hf):
    rec = record({"image": ["a.jpg", "b.jpg"], "video": "v.mp4",
                  "conversations": chat("<image>\n<video>\nand <image> too", "ok")})
    enc = encode_conversation(hf, rec.turns, image_tiles=[3, 1], video_frames=2, tokens_per_tile=256)
    ids = enc.tokens.tolist()
    assert ids.count(hf.img_context_id) == enc.num_visual_tokens == (3 + 2 + 1) * 256
    assert ids.count(hf.img_start_id) == ids.count(hf.img_end_id) == 4
    text = render(rec.turns, [3, 1], 2, tokens_per_tile=1)
    assert text == ("<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 3 + "</img>\nFrame1: <img><IMG_CONTEXT></img>\n"
                    "Frame2: <img><IMG_CONTEXT></img>\nand <img><IMG_CONTEXT></img> too<|im_end|>\n"
                    "<|im_start|>assistant\nok<|im_end|>\n")
    assert hf.decode(ids) == render(rec.turns, [3, 1], 2)
    assert targets(hf, enc) == "ok<|im_end|>"
    with pytest.raises(ValueError, match="placeholders than images"):
        encode_conversation(hf, rec.turns, image_tiles=[3], video_frames=2)
    with pytest.raises(ValueError, match="left without"):
        encode_conversation(hf, rec.turns, image_tiles=[1, 1, 1], video_frames=2)


@pytest.mark.parametrize("conv, tiles, frames", [
    (chat("Hi", "there", system="s"), [], 0),
    (chat("<image>\nq", "\n\na", "<image>x", "<think>y</think> z"), [7, 2], 0),
    (chat("<video>\nWhat happens?", "Rain."), [], 16),
])
def test_encoded_length_equals_encoding(hf, tokenizer, conv, tiles, frames):
    obj = {"conversations": conv, "image": [f"{i}.jpg" for i in range(len(tiles))] or None,
           "video": "v.mp4" if frames else None}
    rec = record(obj)
    for tok in (hf, tokenizer):
        for loss in ("all_assistant", "answer_only"):
            enc = encode_conversation(tok, rec.turns, tiles, frames, loss=loss, system_message="default sys")
            assert encoded_length(tok, rec.turns, tiles, frames, system_message="default sys") == len(enc.tokens)


def test_default_system_message_only_without_a_system_turn(hf):
    plain = record({"conversations": chat("q", "a")})
    own = record({"conversations": chat("q", "a", system="mine")})
    assert render(plain.turns, system_message="dflt").startswith("<|im_start|>system\ndflt<|im_end|>\n")
    assert render(own.turns, system_message="dflt").startswith("<|im_start|>system\nmine<|im_end|>\n")


# -- sample encoder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media_files():
    return {"wide.jpg": image_bytes(900, 300), "small.png": image_bytes(40, 40, "PNG"),
            "bad.jpg": truncated_jpeg(), "clip.mp4": video_bytes(frames=3), "junk.mp4": b"\x00junk" * 50}


def test_sample_encoder_plan_matches_encode(hf, media_files):
    media = MemberMedia(media_files, "mem")
    enc = SampleEncoder(hf, image_size=448, max_tiles=6, num_frames=2)
    rec = parse_record({"image": ["wide.jpg", "small.png"], "video": "clip.mp4",
                        "conversations": chat("<image>\n<video>\n<image>\nCompare.", "Done.")}, "t.jsonl", 3)
    plan = enc.plan(rec, media)
    sample = enc.encode(rec, media)
    # 900x300 -> 3x1 grid + thumbnail = 4 tiles; 40x40 -> 1 tile; video -> 2 frames.
    assert (plan.num_tiles, plan.visual_tokens) == (7, 7 * 256)
    assert plan.length == len(sample.tokens) and sample.num_visual_tokens == plan.visual_tokens
    assert sample.pixel_values.shape == (7, 3, 448, 448) and sample.pixel_values.dtype == torch.uint8
    assert media_order(rec) == ["wide.jpg", "clip.mp4", "small.png"]
    wide = enc.encode(parse_record({"image": "wide.jpg", "conversations": chat("q", "a")}, "t", 1), media)
    assert torch.equal(sample.pixel_values[:4], wide.pixel_values)  # placeholder order
    assert sample.where == "t.jsonl:3"
    text = enc.encode(parse_record({"conversations": chat("q", "a")}, "t", 1), media)
    assert text.pixel_values.shape == (0, 3, 448, 448) and text.num_visual_tokens == 0


@pytest.mark.parametrize("obj, kind, where", [
    ({"image": "gone.jpg"}, SampleErrorKind.MEDIA_MISSING, "mem:gone.jpg"),
    ({"image": "bad.jpg"}, SampleErrorKind.MEDIA_CORRUPT, "mem:bad.jpg"),
    ({"video": "junk.mp4"}, SampleErrorKind.VIDEO_UNDECODABLE, "mem:junk.mp4"),
    ({"image": "wide.jpg", "conversations": chat("q", "long " * 300)}, SampleErrorKind.TOO_LONG, "t.jsonl:9"),
])
def test_sample_errors_have_a_kind_and_a_source(hf, media_files, obj, kind, where):
    enc = SampleEncoder(hf, max_tiles=6, num_frames=2, seq_length=1200)
    rec = parse_record({"conversations": chat("q", "a"), **obj}, "t.jsonl", 9)
    with pytest.raises(SampleError) as info:
        enc.encode(rec, MemberMedia(media_files, "mem"))
    assert info.value.kind == kind and info.value.source == where
    assert str(info.value).startswith(f"{where}: {kind.value}: ")


def test_file_media_resolves_against_root(tmp_path, hf):
    (tmp_path / "a.png").write_bytes(image_bytes(50, 50, "PNG"))
    enc = SampleEncoder(hf)
    rec = parse_record({"image": "a.png", "conversations": chat("q", "a")}, "t", 1)
    assert enc.plan(rec, FileMedia(str(tmp_path))).num_tiles == 1
    with pytest.raises(SampleError, match="file not found"):
        enc.plan(rec, FileMedia(str(tmp_path / "elsewhere")))
