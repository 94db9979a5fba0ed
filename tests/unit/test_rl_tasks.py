"""The shape-counting task: deterministic records whose answers match the drawn pixels."""

import json

import numpy as np
import pytest

from megatron_sail.data.records.record import parse_record
from megatron_sail.data.records.synthetic import COLOURS
from megatron_sail.rl.tasks import (RECORDS_FILE, count_record, count_reward, count_sample,
                                    reference_answer, write_count_task)


def colours_drawn(image: np.ndarray) -> int:
    """Shapes in one image have distinct colours (the generator draws colours without
    replacement), so the number of palette colours covering >= 10 pixels counts the shapes -
    read from the pixels, independently of the caption."""
    pixels = image.reshape(-1, 3)
    return sum(int(np.all(pixels == rgb, axis=1).sum()) >= 10 for rgb in COLOURS.values())


def test_counts_match_the_pixels_and_cover_both_answers():
    counts = [count_sample(seed=3, index=i, image_size=56).count for i in range(40)]
    assert counts == [colours_drawn(count_sample(3, i, 56).image) for i in range(40)]
    assert set(counts) == {1, 2}


def test_written_task_is_deterministic_and_parses_as_training_records(tmp_path):
    a = write_count_task(tmp_path / "a", 12, seed=5)
    assert a == tmp_path / "a" / RECORDS_FILE
    b = write_count_task(tmp_path / "b", 12, seed=5)
    assert a.read_bytes() == b.read_bytes()
    for i in range(12):
        name = f"images/{i:06d}.png"
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    records = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(records) == 12
    for i, obj in enumerate(records):
        parsed = parse_record(obj, str(a), i + 1, base_dir=str(a.parent))
        assert parsed.images == (str(a.parent / f"images/{i:06d}.png"),)
        assert reference_answer(obj) == str(count_sample(5, i, 56).count)
    assert write_count_task(tmp_path / "c", 12, seed=6).read_bytes() != a.read_bytes()
    assert not list(tmp_path.glob(".*partial*"))


def test_an_existing_output_is_refused(tmp_path):
    write_count_task(tmp_path / "t", 1)
    with pytest.raises(Exception, match="already exists"):
        write_count_task(tmp_path / "t", 1)


def test_thinking_records_list_the_shapes_then_box_the_count(tmp_path):
    sample = count_sample(0, 0, 56)
    record = count_record(sample, "x", "images/000000.png", thinking=True)
    parsed = parse_record(record, "mem", None, base_dir=str(tmp_path))
    answer = parsed.turns[-1].text
    assert answer.startswith("<think>\nI see a ") and answer.endswith(f"\\boxed{{{sample.count}}}")
    assert reference_answer(record) == str(sample.count)


def test_reward_checks_the_boxed_count():
    records = [count_record(count_sample(1, i, 56), str(i), "i.png") for i in range(4)]
    truth = [count_sample(1, i, 56).count for i in range(4)]
    right = [f"There are \\boxed{{{n}}} shapes." for n in truth]
    wrong = [f"\\boxed{{{n + 1}}}" for n in truth]
    assert count_reward(right, records) == [1.0] * 4
    assert count_reward(wrong, records) == [0.0] * 4
    assert count_reward([str(n) for n in truth], records) == [0.0] * 4  # unboxed
