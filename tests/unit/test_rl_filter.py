"""pass@k filtering: pass rates, the kept/dropped split and its files."""

import json

import pytest

from megatron_sail.rl.filter import pass_rates, split_by_pass_rate, write_split

RECORDS = [{"id": str(i), "conversations": []} for i in range(4)]
# 4 rollouts each: 4/4 solved, 1/4, 0/4, 3/4
CORRECT = [[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]]


def test_pass_rates():
    assert pass_rates(CORRECT) == [1.0, 0.25, 0.0, 0.75]
    with pytest.raises(ValueError, match="item 1 has no rollouts"):
        pass_rates([[1], []])


def test_split_drops_solved_and_optionally_unsolved():
    split = split_by_pass_rate(RECORDS, CORRECT)
    assert [r["id"] for r in split.kept] == ["1", "2", "3"]
    assert [(r["id"], r["pass_rate"]) for r in split.dropped] == [("0", 1.0)]
    assert (split.solved, split.unsolved) == (1, 0)
    split = split_by_pass_rate(RECORDS, CORRECT, drop_unsolved=True)
    assert [r["id"] for r in split.kept] == ["1", "3"]
    assert [r["id"] for r in split.dropped] == ["0", "2"]
    assert (split.solved, split.unsolved) == (1, 1)
    assert "pass_rate" not in RECORDS[0]  # inputs untouched
    with pytest.raises(ValueError, match="4 records but correctness for 3"):
        split_by_pass_rate(RECORDS, CORRECT[:3])


def test_write_split(tmp_path):
    kept, dropped = write_split(split_by_pass_rate(RECORDS, CORRECT), tmp_path / "out")
    assert [json.loads(x)["pass_rate"] for x in kept.read_text().splitlines()] == [0.25, 0.0, 0.75]
    assert [json.loads(x)["id"] for x in dropped.read_text().splitlines()] == ["0"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dropped.jsonl", "kept.jsonl"]
