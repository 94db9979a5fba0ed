import random
from collections import Counter

import pytest

from megatron_sail.data.records.blend import PERIOD, BlendError, BlendSchedule, load_blend, quantise_weights


def write(tmp_path, text: str):
    path = tmp_path / "conf" / "blend.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def test_blend_file_resolves_paths_and_normalises_weights(tmp_path):
    path = write(tmp_path, """
name: sft
datasets:
  - {path: ../data/a.jsonl, weight: 7}
  - {path: /abs/shards/ocr, weight: 2, root: media, name: ocr-set}
  - {path: b.jsonl, weight: 1}
""")
    blend = load_blend(path)
    assert blend.name == "sft"
    assert [e.path for e in blend.entries] == [str(tmp_path / "data" / "a.jsonl"), "/abs/shards/ocr",
                                               str(tmp_path / "conf" / "b.jsonl")]
    assert [e.name for e in blend.entries] == ["a.jsonl", "ocr-set", "b.jsonl"]
    assert blend.entries[1].root == str(tmp_path / "conf" / "media") and blend.entries[0].root is None
    assert blend.weights == pytest.approx([0.7, 0.2, 0.1])


@pytest.mark.parametrize("text, message", [
    ("datasets: []", "'datasets' must be a non-empty list"),
    ("sets: []", "unknown key(s) ['sets']"),
    ("datasets: [{path: a.jsonl}]", "datasets[0].weight must be a positive number, got None"),
    ("datasets: [{path: a.jsonl, weight: -1}]", "datasets[0].weight must be a positive number, got -1"),
    ("datasets: [{path: a.jsonl, weight: true}]", "weight must be a positive number, got True"),
    ("datasets: [{weight: 1}]", "datasets[0].path must be a path"),
    ("datasets: [{path: a.jsonl, weight: 1, shuffle: no}]", "datasets[0]: unknown key(s) ['shuffle']"),
    ("datasets: [{path: x/a.jsonl, weight: 1}, {path: y/a.jsonl, weight: 1}]", "['a.jsonl'] used twice"),
    ("datasets: [a.jsonl]", "datasets[0] must be a mapping"),
    ("datasets: [{path: a.jsonl, weight: 1}", "not valid YAML"),
])
def test_blend_file_errors_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(BlendError) as info:
        load_blend(path)
    assert str(info.value).startswith(path) and message in str(info.value), str(info.value)
    with pytest.raises(BlendError, match="blend file not found"):
        load_blend(str(tmp_path / "none.yaml"))


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.123, 0.877], [1, 1, 1], [0.97, 0.01, 0.02]])
def test_proportions_follow_weights_within_one_percent(weights):
    schedule = BlendSchedule([1000, 37, 5000][: len(weights)], weights, seed=0)
    counts = Counter(schedule.source_of(p)[0] for p in range(10_000))
    total = sum(weights)
    for d, w in enumerate(weights):
        assert abs(counts[d] / 10_000 - w / total) <= 0.01
    assert [counts[d] for d in range(len(weights))] == schedule.counts(10_000)
    # The greedy rule keeps every prefix within one sample per dataset of its target.
    seen = [0] * len(weights)
    for p in range(2_000):
        seen[schedule.draw(p)[0]] += 1
        assert all(abs(c - q / PERIOD * (p + 1)) < len(weights) for c, q in zip(seen, schedule.quota))


def test_deterministic_per_seed_and_seeds_differ():
    def order(seed):
        schedule = BlendSchedule([50, 20], [0.6, 0.4], seed=seed)
        return [schedule.source_of(p) for p in range(500)]

    a, b, c = order(7), order(7), order(8)
    assert a == b and a != c
    # The seed reshuffles samples, not the mixture.
    assert [d for d, _ in a] == [d for d, _ in c]


def test_random_access_equals_sequential_reading():
    sequential = BlendSchedule([13, 7, 29], [0.2, 0.5, 0.3], seed=3)
    expected = [sequential.source_of(p) for p in range(25_000)]
    fresh = BlendSchedule([13, 7, 29], [0.2, 0.5, 0.3], seed=3)
    positions = random.Random(0).sample(range(25_000), 3_000)
    assert all(fresh.source_of(p) == expected[p] for p in positions)


def test_each_epoch_of_a_dataset_is_a_fresh_permutation():
    schedule = BlendSchedule([10, 30], [0.5, 0.5], seed=1)
    draws: dict[int, list[int]] = {0: [], 1: []}
    for p in range(120):
        d, i = schedule.source_of(p)
        draws[d].append(i)
    epochs = [draws[0][k:k + 10] for k in range(0, 60, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == len(epochs)
    assert sorted(draws[1][:30]) == list(range(30))
    assert schedule.epochs(120) == [6.0, 2.0]


def test_weight_quantisation():
    assert sum(quantise_weights([1e-9, 1, 1])) == PERIOD and min(quantise_weights([1e-9, 1, 1])) == 1
    assert quantise_weights([1, 1, 1]) == [3334, 3333, 3333]
    assert quantise_weights([0.7, 0.3]) == [7000, 3000]
    with pytest.raises(ValueError, match="positive"):
        quantise_weights([1, 0])
    with pytest.raises(ValueError, match="no samples"):
        BlendSchedule([3, 0], [0.5, 0.5], seed=0)
    with pytest.raises(IndexError):
        BlendSchedule([3], [1], seed=0).source_of(-1)


def test_blend_cycles_are_named_not_followed(tmp_path, capsys):
    from megatron_sail.cli import main as sail
    from megatron_sail.data.loader.build import load_sources

    itself = write(tmp_path, "datasets: [{path: blend.yaml, weight: 1}]")
    with pytest.raises(BlendError, match=r"datasets\[0\]\.path lists this blend file itself"):
        load_blend(itself)

    conf = tmp_path / "conf"
    (conf / "data.jsonl").write_text("")
    (conf / "a.yaml").write_text("datasets: [{path: data.jsonl, weight: 1}, "
                                 "{path: b.yaml, weight: 1}]")
    (conf / "b.yaml").write_text("datasets: [{path: c.yaml, weight: 1}]")
    (conf / "c.yaml").write_text("datasets: [{path: b.yaml, weight: 1}]")
    assert sail(["data", "check", str(conf / "a.yaml"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"sail data check: error: {conf / 'c.yaml'}: blend files list each other in a "
                   f"cycle: {conf / 'b.yaml'} -> {conf / 'c.yaml'} -> {conf / 'b.yaml'}\n")
    # training reads JSONL files and shard directories; a nested blend is named, not misread
    with pytest.raises(BlendError, match=r"a\.yaml: lists other blend files \[.*b\.yaml'\]"):
        load_sources(str(conf / "a.yaml"))
