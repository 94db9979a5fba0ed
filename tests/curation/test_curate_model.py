"""Model judges and caption-to-QA generation on a tiny imported checkpoint, end to end through
``sail curate`` (its scores are not meaningful; what is checked is that the judge's outcome per
record is what ``sail generate``'s answers to the same prompts, parsed, say)."""

from __future__ import annotations

import json

from megatron_sail import cli
from megatron_sail.curation.judge_prompts import PARSERS, PROMPTS, render
from tests.curation.planted import encoded, picture, record

CAPTIONS = ["A red bicycle against a brick wall.", "Two kites over a beach at sunset.",
            "A bowl of noodles on a table."]


def test_model_judge_and_caption_to_qa(imported, spm, tmp_path, capfd):
    ckpt = imported("fp32")
    for n in range(3):
        (tmp_path / f"p{n}.png").write_bytes(encoded(picture(n, (150, 90))))
    records = [record(f"r{n}", f"p{n}.png", c) for n, c in enumerate(CAPTIONS)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model = (f"{{checkpoint: {ckpt}, tokenizer: {spm.model_path}, "
             f"img_context_token_id: {spm.img_context_id}, max_new_tokens: 4, batch_size: 2}}")
    (tmp_path / "judge.yaml").write_text(
        "inputs: [in.jsonl]\nstages:\n"
        f"  - {{name: judge, judge: {model}, prompts: [richness, acceptable], retries: 0,\n"
        "     keep: {richness: '>= 3', acceptable: '== yes'}}\n")
    capfd.readouterr()
    assert cli.main(["curate", str(tmp_path / "judge.yaml"), "--out", str(tmp_path / "j"),
                     "--quiet"]) == 0
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    kept, dropped = read(tmp_path / "j/kept.jsonl"), read(tmp_path / "j/dropped.jsonl")
    assert sorted(r["id"] for r in kept + dropped) == ["r0", "r1", "r2"]

    # The same prompts through `sail generate`: the answers decide each record's outcome.
    asks = [{"image": str(tmp_path / f"p{n}.png"), "conversations": [
        {"from": "human", "value": "<image>\n" + render(PROMPTS[name][0], r)}]}
        for n, r in enumerate(records) for name in ("richness", "acceptable")]
    (tmp_path / "asks.jsonl").write_text("".join(json.dumps(a) + "\n" for a in asks))
    assert cli.main(["generate", "--ckpt", str(ckpt), "--input", str(tmp_path / "asks.jsonl"),
                     "--output", str(tmp_path / "answers.jsonl"), "--tokenizer", spm.model_path,
                     "--img-context-token-id", str(spm.img_context_id),
                     "--max-new-tokens", "4"]) == 0
    answers = [a["conversations"][-1]["value"] for a in read(tmp_path / "answers.jsonl")]
    outcome = {r["id"]: r["curation"].get("reason", "kept") for r in kept + dropped}
    for n in range(3):
        richness = PARSERS["score_1_5"](answers[2 * n])
        acceptable = PARSERS["yes_no"](answers[2 * n + 1])
        if richness is None or acceptable is None:
            expected = "judge_unparseable"
        elif richness < 3:
            expected = "richness not >= 3"
        elif acceptable != "yes":
            expected = "acceptable not == yes"
        else:
            expected = "kept"
        assert outcome[f"r{n}"] == expected, (n, answers[2 * n:2 * n + 2])

    (tmp_path / "qa.yaml").write_text(
        f"inputs: [in.jsonl]\nstages:\n  - {{name: caption_to_qa, generator: {model}, retries: 1}}\n")
    assert cli.main(["curate", str(tmp_path / "qa.yaml"), "--out", str(tmp_path / "q"),
                     "--quiet"]) == 0
    kept, dropped = read(tmp_path / "q/kept.jsonl"), read(tmp_path / "q/dropped.jsonl")
    assert len(kept) + len(dropped) == 3
    assert all(r["curation"]["reason"] == "qa_unparseable" for r in dropped)
    for r in kept:   # training-format QA records about the same picture
        assert [t["from"] for t in r["conversations"]] == ["human", "gpt"]
        assert r["conversations"][0]["value"].startswith("<image>\n")
