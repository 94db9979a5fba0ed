"""``sail generate`` in its three forms on an imported release-layout checkpoint: raw ids at
TP=2 against a greedy loop over the reference model; --prompt and --input/--output build the
prompt of the chat template through the data pipeline (checked against encode_conversation);
bad inputs give one clear error line and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_sail import cli
from megatron_sail.convert.forward import write_inputs
from megatron_sail.convert.reference import ReleaseReference
from megatron_sail.convert.verify import make_inputs
from megatron_sail.data.encoding.conversation import encode_conversation
from megatron_sail.data.records.record import USER, Turn
from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer
from megatron_sail.generation.runner import GenerateOptions, run_generation
from tests.convert.test_generate_parity import IMG, reference_greedy

NEW = 5


def test_raw_ids_at_tp2_equal_reference(release, imported, tmp_path):
    reference = ReleaseReference(release("fp32"))
    ids, pixels = make_inputs(reference.model, IMG, seed=11, tiles=2, text=9)
    first = reference_greedy(reference, ids[0].tolist(), pixels[:1], eos=-1)
    eos = first[1]
    expected = torch.full((2, 6), -1, dtype=torch.int64)
    for row in range(2):
        got = reference_greedy(reference, ids[row].tolist(), pixels[row:row + 1], eos)
        expected[row, :len(got)] = torch.tensor(got)
    expected = expected[:, :int((expected >= 0).sum(1).max())]
    inputs, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    write_inputs(inputs, ids, pixels)
    code = cli.main(["generate", "--ckpt", str(imported("fp32")), "--inputs", str(inputs),
                     "--out", str(out), "--tp", "2", "--max-new-tokens", "6",
                     "--eos-token-id", str(eos), "--img-context-token-id", str(IMG)])
    assert code == 0
    got = load_file(str(out))["generated_ids"]
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert int(got[0, 1]) == eos and (got[0, 2:] == -1).all()


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A 256-token sentencepiece model: its ids fit the tiny release's 300-token vocabulary."""
    return train_synthetic_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"))


def image_file(path, size=(150, 90)):
    from PIL import Image

    Image.new("RGB", size, (200, 30, 60)).save(path)
    return path


def test_prompt_and_jsonl_forms(imported, spm, tmp_path, capfd):
    ckpt = imported("fp32")
    capfd.readouterr()   # the import's own report
    img = spm.img_context_id
    picture = image_file(tmp_path / "red.png")
    common = ["--tokenizer", spm.model_path, "--img-context-token-id", str(img),
              "--max-new-tokens", str(NEW)]
    assert cli.main(["generate", "--ckpt", str(ckpt), "--prompt", "a red square", *common]) == 0
    printed = capfd.readouterr().out.rstrip("\n")
    # The same prompt built independently: univl-chat/chatml per the checkpoint's config
    # (an import with the tiny architecture: chatml), ending with the assistant header.
    ids = encode_conversation(spm, [Turn(USER, "a red square")]).tokens.tolist()
    assert spm.decode(ids).endswith("assistant\n")
    opts = GenerateOptions(max_new_tokens=NEW, eos_token_ids=(spm.eos_id,), img_context_token_id=img,
                           vocab_limit=spm.vocab_size)
    (new,) = run_generation(ckpt, [ids], None, opts).generated
    assert printed == spm.decode(new[:-1] if new[-1] == spm.eos_id else new)

    records = tmp_path / "in.jsonl"
    records.write_text(
        json.dumps({"id": 1, "conversations": [{"from": "human", "value": "hello"},
                                                {"from": "gpt", "value": "old answer"}]}) + "\n"
        + "not json\n"
        + json.dumps({"image": "red.png", "conversations": [{"from": "human",
                                                             "value": "<image>\nwhat colour?"}]})
        + "\n")
    answers = tmp_path / "out" / "answers.jsonl"
    assert cli.main(["generate", "--ckpt", str(ckpt), "--input", str(records), "--output",
                     str(answers), *common]) == 0
    captured = capfd.readouterr()
    assert "skipped" in captured.err and "tokens/s" in captured.err and "1 records skipped" in captured.out
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r.get("id") for r in rows] == [1, None]
    assert [t["from"] for t in rows[0]["conversations"]] == ["human", "gpt"]
    assert [t["from"] for t in rows[1]["conversations"]] == ["human", "gpt"]
    # Text-only answer equals the --prompt path for the same question.
    hello = encode_conversation(spm, [Turn(USER, "hello")]).tokens.tolist()
    (new,) = run_generation(ckpt, [hello], None, opts).generated
    assert rows[0]["conversations"][-1]["value"] == spm.decode(new[:-1] if new[-1] == spm.eos_id else new)


def test_video_prompt(imported, spm, tmp_path, capfd):
    from megatron_sail.generation.cli import chat_encoder
    from megatron_sail.generation.prompts import encode_prompt, prompt_record
    from megatron_sail.generation.runner import open_model
    from tests.data.media_fixtures import video_bytes

    ckpt = imported("fp32")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(video_bytes(frames=6))
    _, cfg = open_model(ckpt)
    encoder = chat_encoder(cfg, spm)
    prompt = encode_prompt(encoder, prompt_record(
        {"video": str(clip), "conversations": [{"from": "human", "value": "what happens?"}]},
        "t", None, None, thinking=False))
    frames = prompt.pixel_values.shape[0]
    assert 1 <= frames <= cfg.data.num_frames
    assert prompt.ids.count(spm.img_context_id) == frames * encoder.tokens_per_tile
    assert prompt.ids.count(spm.img_start_id) == frames   # one block per frame (FrameK: <img>...)
    capfd.readouterr()
    assert cli.main(["generate", "--ckpt", str(ckpt), "--prompt", "what happens?", "--video",
                     str(clip), "--tokenizer", spm.model_path, "--img-context-token-id",
                     str(spm.img_context_id), "--max-new-tokens", "3"]) == 0
    opts = GenerateOptions(max_new_tokens=3, eos_token_ids=(spm.eos_id,),
                           img_context_token_id=spm.img_context_id, vocab_limit=spm.vocab_size)
    (new,) = run_generation(ckpt, [prompt.ids], prompt.pixel_values, opts).generated
    expected = spm.decode(new[:-1] if new[-1] == spm.eos_id else new)
    assert capfd.readouterr().out.rstrip("\n") == expected


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{tmp}/nope", "--inputs", "{tmp}/long.safetensors", "--out", "{tmp}/o.safetensors",
      "--eos-token-id", "3"], "checkpoint path does not exist"),
    (["--ckpt", "{ckpt}", "--prompt", "hi", "--image", "{tmp}/missing.png"], "missing.png: no such file"),
    (["--ckpt", "{ckpt}", "--prompt", "hi", "--video", "{tmp}/missing.mp4"], "missing.mp4: no such file"),
    (["--ckpt", "{ckpt}", "--inputs", "{tmp}/long.safetensors", "--out", "{tmp}/o.safetensors",
      "--eos-token-id", "3"], "exceeds the model's context of 1024"),
    (["--ckpt", "{ckpt}", "--inputs", "{tmp}/long.safetensors", "--out", "{tmp}/o.safetensors"],
     "needs --eos-token-id"),
])
def test_bad_inputs_get_one_clear_line(args, message, imported, tmp_path, capsys):
    write_inputs(tmp_path / "long.safetensors", torch.ones(1, 1020, dtype=torch.int64), None)
    argv = [a.format(tmp=tmp_path, ckpt=imported("fp32")) for a in args]
    assert cli.main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sail generate: error: ") and message in err[0], err
