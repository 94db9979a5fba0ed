"""``sail rl filter`` on an imported tiny release-layout checkpoint: every usable record lands
in exactly one of kept/dropped with the pass rate its rollouts earn; scoring and splitting on
planted rollouts; bad inputs give one clear error line and exit code 2."""

from __future__ import annotations

import json

import pytest

from megatron_sail import cli
from megatron_sail.rl.filter import split_by_pass_rate
from megatron_sail.rl.filter_cli import correctness, reference_of, with_counts
from tests.convert.test_generate_cli import image_file, spm  # noqa: F401  (spm: a fixture)


RECORDS = [
    {"id": "a", "reference": "7", "conversations": [{"from": "human", "value": "how many?"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "count them"},
                                  {"from": "gpt", "value": "there are \\boxed{2}"}]},
    {"id": "c", "answer": 3, "conversations": [{"from": "human", "value": "and now?"}]},
    {"id": "d", "image": "red.png", "reference": "1",      # its tiles go with each rollout
     "conversations": [{"from": "human", "value": "<image>\nhow many squares?"}]},
]


def test_filter_on_tiny_checkpoint(imported, spm, tmp_path, capfd):
    ckpt = imported("fp32")
    image_file(tmp_path / "red.png")
    # What makes the outcome certain: no token of this vocabulary decodes to a backslash, so
    # no rollout can hold a \boxed{} answer and every rollout earns 0 - all pass rates are 0.
    assert not any("\\" in spm.decode([i]) for i in range(spm.vocab_size))
    data = tmp_path / "data.jsonl"
    no_reference = {"id": "x", "conversations": [{"from": "human", "value": "no answer known"}]}
    data.write_text("".join(json.dumps(r) + "\n" for r in [RECORDS[0], no_reference, *RECORDS[1:]]))
    out = tmp_path / "filtered"
    capfd.readouterr()
    code = cli.main(["rl", "filter", "--ckpt", str(ckpt), "--input", str(data), "--out", str(out),
                     "--k", "2", "--batch-size", "2", "--max-new-tokens", "4", "--seed", "5",
                     "--tokenizer", spm.model_path, "--img-context-token-id",
                     str(spm.img_context_id)])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "records/s" in captured.err and "[generate] 4/4 records 100%" in captured.err
    assert "no reference answer" in captured.err and "1 records skipped" in captured.out
    assert "kept 4 of 4 records" in captured.out and "8 rollouts" in captured.out
    kept = [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()]
    assert (out / "dropped.jsonl").read_text() == ""
    assert kept == [{**r, "passes": 0, "k": 2, "pass_rate": 0.0} for r in RECORDS]

    # --drop-unsolved moves them all to dropped.jsonl (same rollouts: same seed).
    assert cli.main(["rl", "filter", "--ckpt", str(ckpt), "--input", str(data), "--out", str(out),
                     "--k", "2", "--batch-size", "2", "--max-new-tokens", "4", "--seed", "5",
                     "--tokenizer", spm.model_path, "--img-context-token-id",
                     str(spm.img_context_id), "--drop-unsolved"]) == 0
    assert "4 by none" in capfd.readouterr().out
    assert (out / "kept.jsonl").read_text() == ""
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert [r["id"] for r in dropped] == ["a", "b", "c", "d"]


def test_reference_and_scoring_of_planted_rollouts():
    assert [reference_of(r) for r in RECORDS] == ["7", "2", "3", "1"]
    assert reference_of({"conversations": [{"from": "human", "value": "q"}]}) is None
    assert reference_of({"answer": True, "conversations": []}) is None   # not an answer
    references = ["3", "1/2", "x"]
    rollouts = [["\\boxed{3}", "so \\boxed{3.0}"],          # every rollout solves it
                ["\\boxed{0.5}", "\\boxed{2}"],             # one of two
                ["no box: x", "\\boxed{y}"]]                # none
    correct = correctness(references, ["q"] * 3, rollouts)
    assert correct == [[True, True], [True, False], [False, False]]
    records = [{"id": i} for i in range(3)]
    split = split_by_pass_rate(with_counts(records, correct), correct)
    assert split.kept == [{"id": 1, "passes": 1, "k": 2, "pass_rate": 0.5},
                          {"id": 2, "passes": 0, "k": 2, "pass_rate": 0.0}]
    assert split.dropped == [{"id": 0, "passes": 2, "k": 2, "pass_rate": 1.0}]
    split = split_by_pass_rate(with_counts(records, correct), correct, drop_unsolved=True)
    assert [r["id"] for r in split.kept] == [1] and (split.solved, split.unsolved) == (1, 1)


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{tmp}/nope"], "checkpoint path does not exist"),
    (["--ckpt", "{ckpt}", "--input", "{tmp}/missing.jsonl"], "missing.jsonl: no such file"),
    (["--ckpt", "{ckpt}", "--k", "0"], "--k must be > 0, got 0"),
    (["--ckpt", "{ckpt}", "--input", "{tmp}/bad.jsonl"], "bad.jsonl: no usable record (2 skipped)"),
])
def test_bad_inputs_get_one_clear_line(args, message, imported, spm, tmp_path, capsys):
    good = tmp_path / "data.jsonl"
    good.write_text(json.dumps(RECORDS[0]) + "\n")
    (tmp_path / "bad.jsonl").write_text("not json\n" + json.dumps(
        {"conversations": [{"from": "human", "value": "no reference"}]}) + "\n")
    argv = ["--input", str(good), "--out", str(tmp_path / "o"), "--tokenizer", spm.model_path]
    argv += [a.format(tmp=tmp_path, ckpt=imported("fp32")) for a in args]
    capsys.readouterr()
    assert cli.main(["rl", "filter", *argv]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("sail rl filter: skipped")]
    assert len(err) == 1 and err[0].startswith("sail rl filter: error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()
