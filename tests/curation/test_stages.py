"""The curation stages' pieces against independent expectations: perceptual hashes of
re-encoded/resized copies vs different pictures, judge answer parsers, keep rules, n-gram
repetition, rebalancing quotas and n-gram rebalancing, caption-to-QA, shard inputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from megatron_sail import cli
from megatron_sail.curation.judge_prompts import parse_qa, render, score_1_5, yes_no
from megatron_sail.curation.keep import fits, parse_rule, passes
from megatron_sail.curation.phash import bands, distance, phash
from megatron_sail.curation.stages.rebalance import quotas
from megatron_sail.curation.stages.text_filters import repeat_fraction
from tests.curation.planted import encoded, picture, record


def test_perceptual_hash_separates_copies_from_other_pictures():
    original = picture(7)
    h = phash(encoded(original))
    copies = [encoded(original.convert("RGB"), "JPEG", quality=40),
              encoded(original.resize((80, 60))), encoded(original.resize((320, 240))),
              encoded(original.convert("RGB"), "WEBP", quality=50)]
    near = [distance(h, phash(c)) for c in copies]
    far = [distance(h, phash(encoded(picture(seed)))) for seed in range(20, 40)]
    assert max(near) <= 4, near
    assert min(far) > 12, far            # random 64-bit hashes differ in ~32 bits
    assert phash(encoded(original)) == h


def test_bands_find_every_hash_within_the_distance():
    h = 0x0123_4567_89AB_CDEF
    for d in range(0, 9):
        flipped = h ^ sum(1 << (7 * k) for k in range(d))   # d bits spread over the word
        assert distance(h, flipped) == d
        assert set(bands(h, d + 1)) & set(bands(flipped, d + 1))
    assert sum(1 for _ in bands(h, 9)) == 9


@pytest.mark.parametrize("answer, score", [("3", 3), (" 5.", 5), ("4/5", 4), ("Score: 2", 2),
                                           ("6", None), ("3 or 4", None), ("good", None), ("", None)])
def test_score_parser(answer, score):
    assert score_1_5(answer) == score


def test_yes_no_and_qa_parsers_and_prompts():
    assert [yes_no(a) for a in ("Yes.", "no, it is wrong", "Yesterday", "maybe")] == \
        ["yes", "no", None, None]
    assert parse_qa("Question: What colour is the car?\nAnswer: Red.") == ("What colour is the car?", "Red.")
    assert parse_qa("Question: ?\nAnswer:") is None and parse_qa("The car is red.") is None
    rec = record("x", "a.png", "A red car {question}.")
    assert render("Caption: {caption} / {question}", rec) == "Caption: A red car {question}. / Describe the image."


def test_keep_rules():
    assert passes(3, ">= 3") and not passes(2.9, ">= 3") and passes("Yes", "== yes")
    assert not passes("yes", ">= 3") and passes(0, "!= 1") and passes(5, 5)
    assert fits(3, ">= 3") and not fits("n/a", ">= 3") and not fits(True, ">= 3")
    assert fits("no", "== yes") and not fits(1, "== yes")
    with pytest.raises(ValueError):
        parse_rule(">= high")
    with pytest.raises(ValueError):
        parse_rule("about 3")


def test_repeat_fraction():
    assert repeat_fraction("a b c d e".split(), 2) == 0
    assert repeat_fraction("a b a b a b".split(), 2) == pytest.approx(3 / 5)   # ab ba ab ba ab
    assert repeat_fraction(["a"], 3) == 0


def test_quotas():
    assert quotas({"a": 10, "b": 4, "c": 7}, "uniform") == {"a": 4, "b": 4, "c": 4}
    # 2:1 with 10 a and 4 b: total min(10/(2/3), 4/(1/3)) = 12 -> 8 a, 4 b
    assert quotas({"a": 10, "b": 4}, {"a": 2, "b": 1}) == {"a": 8, "b": 4}
    assert quotas({"a": 10, "b": 4}, {"a": 1}) == {"a": 10, "b": 0}


def _write(root: Path, records: list[dict], stages: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = root / "spec.yaml"
    spec.write_text(f"inputs: [in.jsonl]\nchunk_size: 4\nstages:\n{stages}")
    return spec


def _run(spec: Path, out: Path) -> tuple[list[dict], list[dict], dict]:
    assert cli.main(["curate", str(spec), "--out", str(out), "--quiet"]) == 0
    read = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]  # noqa: E731
    return read("kept.jsonl"), read("dropped.jsonl"), json.loads((out / "report.json").read_text())


def test_rebalance_by_field_to_a_target(tmp_path):
    cats = ["cat"] * 12 + ["dog"] * 6 + ["car"] * 3
    records = [dict(record(f"r{i}", "a.png", f"caption {i}"), category=c) for i, c in enumerate(cats)]
    records.append(record("plain", "a.png", "no category"))
    spec = _write(tmp_path, records, "  - {name: rebalance, by: category, target: {cat: 2, dog: 1}}\n")
    kept, dropped, report = _run(spec, tmp_path / "out")
    assert Counter(r["category"] for r in kept) == {"cat": 12, "dog": 6}
    assert {r["curation"]["reason"] for r in dropped} == {"rebalanced"}
    assert Counter(r.get("category", "(missing)") for r in dropped) == {"car": 3, "(missing)": 1}
    assert "plots/stage0-rebalance-distribution.png" in report["plots"]
    again, _, _ = _run(spec, tmp_path / "again")
    assert again == kept
    # Uniform: every category down to the smallest one's count, which records chosen by seed.
    spec = _write(tmp_path / "u", records[:21], "  - {name: rebalance, by: category, seed: 3}\n")
    kept, _, _ = _run(spec, tmp_path / "u" / "out")
    assert Counter(r["category"] for r in kept) == {"cat": 3, "dog": 3, "car": 3}


def test_rebalance_ngrams_thins_frequent_phrasing(tmp_path):
    common = [record(f"c{i}", "a.png", f"a photo of a cat number {i}") for i in range(40)]
    rare = [record(f"r{i}", "a.png", f"unusual {w} zebra crossing" ) for i, w in enumerate("abcdef")]
    spec = _write(tmp_path, common + rare,
                  "  - {name: rebalance, by: ngrams, n: 2, max_per_ngram: 10}\n")
    kept, dropped, _ = _run(spec, tmp_path / "out")
    ids = {r["id"] for r in kept}
    assert {f"r{i}" for i in range(6)} <= ids                # a rare n-gram keeps its caption
    # "number i" is rare, so these captions are kept too: thinning applies only to captions
    # whose n-grams are all frequent. Make one such group and check its expected share.
    assert not dropped
    spec = _write(tmp_path / "b", [record(f"s{i}", "a.png", "a photo of a cat") for i in range(200)],
                  "  - {name: rebalance, by: ngrams, n: 2, max_per_ngram: 20}\n")
    kept, dropped, _ = _run(spec, tmp_path / "b" / "out")
    assert 8 <= len(kept) <= 36                               # p = 20/200: 20 expected
    assert all(r["curation"]["scores"]["ngram_keep_probability"] == 0.1 for r in kept + dropped)


def test_rebalance_by_clusters_and_caption_to_qa(tmp_path):
    topics = ["red car on a road", "green tree in a park", "plate of pasta with sauce"]
    records = [record(f"t{t}_{i}", "a.png", f"{topics[t]} {i}") for t in range(3)
               for i in range((t + 1) * 3)]
    (tmp_path / "qa.py").write_text(
        "def make(record):\n"
        "    caption = record['conversations'][-1]['value']\n"
        "    if caption.endswith(' 0'):\n        return {'question': ''}\n"
        "    return {'question': 'What is shown?', 'answer': caption}\n")
    spec = _write(tmp_path, records, "  - {name: rebalance, by: clusters, clusters: 3}\n"
                  "  - {name: caption_to_qa, generator: {python: 'qa:make'}, retries: 1}\n")
    kept, dropped, _ = _run(spec, tmp_path / "out")
    clusters = Counter(r["curation"]["scores"]["category"] for r in kept + dropped
                       if r["curation"].get("reason") != "rebalanced")
    assert sorted(clusters.values()) == [3, 3, 3]            # each topic its own cluster, 3 each
    assert {r["curation"]["reason"] for r in dropped} >= {"rebalanced", "qa_unparseable"}
    for r in kept:
        assert r["conversations"] == [{"from": "human", "value": "<image>\nWhat is shown?"},
                                      {"from": "gpt", "value": r["curation"]["caption"]}]
        assert r["image"] == "a.png"


def test_shard_directory_input(tmp_path):
    from megatron_sail.data.records.record import parse_record
    from megatron_sail.data.records.shards import ShardSample, ShardWriter

    img = encoded(picture(3))
    with ShardWriter(str(tmp_path / "shards")) as writer:
        for n, data in enumerate([img, img, encoded(picture(4))]):
            rec = parse_record(record(f"s{n}", "x.png", f"caption number {n} here"), "t", n + 1)
            rec = rec.with_media(("m.png",), None)
            writer.add(ShardSample(rec, {"m.png": data}, f"t:{n + 1}", [(160, 120)]))
    spec = tmp_path / "spec.yaml"
    spec.write_text("inputs: [shards]\nstages:\n  - {name: decodable}\n  - {name: dedup}\n")
    kept, dropped, _ = _run(spec, tmp_path / "out")
    assert [r["id"] for r in kept] == ["s0", "s2"]
    assert dropped[0]["id"] == "s1" and dropped[0]["curation"]["reason"] == "duplicate_image"
    assert dropped[0]["curation"]["duplicate_of"].endswith("shards#0")


@pytest.mark.parametrize("name", ["sail-caption2.yaml", "sail-video-qa.yaml", "caption-to-qa.yaml"])
def test_example_specs_are_valid(name, tmp_path):
    """The examples load (every key and rule checked) once their inputs exist."""
    import shutil

    from megatron_sail.curation.load import load_spec

    source = Path(__file__).resolve().parents[2] / "examples" / "curation" / name
    spec = tmp_path / "a" / "b" / name
    spec.parent.mkdir(parents=True)
    shutil.copy(source, spec)
    for given in load_spec_inputs(source):
        target = (spec.parent / given).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
    loaded = load_spec(spec)
    assert [s.name for s in loaded.stages][0] in ("decodable", "caption_to_qa")


def load_spec_inputs(path: Path) -> list[str]:
    import yaml

    return yaml.safe_load(path.read_text())["inputs"]


def test_video_records_and_progress_line(tmp_path, capfd):
    """Videos: a corrupt clip is undecodable, sizes come from the stream, a byte-identical clip
    is a duplicate; the progress line reports records/s and the time left."""
    from tests.data.media_fixtures import video_bytes

    clip = video_bytes(frames=4, width=96, height=64, seed=1)
    (tmp_path / "a.mp4").write_bytes(clip)
    (tmp_path / "b.mp4").write_bytes(clip)
    (tmp_path / "c.mp4").write_bytes(clip[: len(clip) // 3])
    (tmp_path / "d.mp4").write_bytes(video_bytes(frames=4, width=96, height=64, seed=2))

    def qa(rid, video, answer):
        return {"id": rid, "video": video, "conversations": [
            {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": answer}]}

    records = [qa("a", "a.mp4", "Coloured noise flickers."), qa("b", "b.mp4", "Static changes fast."),
               qa("c", "c.mp4", "A broken clip."), qa("d", "d.mp4", "Other noise flickers.")]
    spec = _write(tmp_path, records, "  - {name: decodable, num_frames: 2}\n"
                  "  - {name: resolution, min_side: 32}\n  - {name: dedup}\n")
    capfd.readouterr()
    assert cli.main(["curate", str(spec), "--out", str(tmp_path / "out")]) == 0
    err = capfd.readouterr().err
    assert "[curate phase 1/1 (decodable, resolution, dedup)] 4/4 records 100% |" in err
    assert "records/s" in err
    kept = [json.loads(line) for line in (tmp_path / "out/kept.jsonl").read_text().splitlines()]
    dropped = [json.loads(line) for line in (tmp_path / "out/dropped.jsonl").read_text().splitlines()]
    assert [r["id"] for r in kept] == ["a", "d"]
    assert {r["id"]: r["curation"]["reason"] for r in dropped} == {"b": "duplicate_video",
                                                                   "c": "undecodable"}
    assert kept[0]["curation"]["scores"]["min_side"] == 64
