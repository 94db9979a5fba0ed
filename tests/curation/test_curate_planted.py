"""``sail curate`` on a planted data set: every planted defect is dropped by the stage and for
the reason it was planted for, every clean record is kept, kept + dropped = input; the outcome
does not depend on --workers or --shard; bad specs get one clear line per problem."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from megatron_sail import cli
from megatron_sail.curation.runner import Assignment, run_curation
from tests.curation.planted import write_planted


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outputs(out: Path) -> dict[str, bytes]:
    names = ["kept.jsonl", "dropped.jsonl", "report.json"]
    names += [f"plots/{p.name}" for p in sorted((out / "plots").iterdir())]
    return {name: (out / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    spec, defects, clean = write_planted(root / "data")
    out = root / "out"
    assert cli.main(["curate", str(spec), "--out", str(out), "--quiet"]) == 0
    return spec, defects, clean, out


def test_every_planted_item_dropped_for_its_reason(planted):
    spec, defects, clean, out = planted
    kept, dropped = lines(out / "kept.jsonl"), lines(out / "dropped.jsonl")
    inputs = (spec.parent / "captions.jsonl").read_text().splitlines()
    assert len(kept) + len(dropped) == len(inputs)
    assert [r["id"] for r in kept] == clean
    got = {r.get("id", "<raw>"): (r["curation"]["stage"], r["curation"]["reason"]) for r in dropped}
    assert got == defects
    # Records unchanged apart from the added field; the later record of a pair is the duplicate.
    by_line = {json.loads(line)["id"]: json.loads(line) for line in inputs if line.endswith("}")}
    for record in kept + [r for r in dropped if "id" in r]:
        assert {k: v for k, v in record.items() if k != "curation"} == by_line[record["id"]]
    dup = next(r for r in dropped if r.get("id") == "dup_jpeg")
    assert dup["curation"]["duplicate_of"].endswith("captions.jsonl:2")   # clean0_1's line
    # Scores so far: a judge-dropped record carries the filters' scores and the judge's.
    blurry = next(r for r in dropped if r.get("id") == "blurry")["curation"]["scores"]
    assert blurry["quality"] == 2 and blurry["words"] == 9 and blurry["min_side"] == 120
    assert all(r["curation"]["scores"]["quality"] == 4 for r in kept)
    mumbling = next(r for r in dropped if r.get("id") == "mumbling")["curation"]
    assert mumbling["detail"] == "no usable quality after 3 tries; last answer {'quality': 'n/a'}"
    raw = next(r for r in dropped if "raw" in r)
    assert raw["raw"] == '{"id": "broken", "conversations": ['


def test_report_counts_and_plots(planted):
    _, defects, clean, out = planted
    report = json.loads((out / "report.json").read_text())
    assert (report["in"], report["kept"], report["dropped"]) == (len(clean) + len(defects), len(clean), len(defects))
    assert report["unreadable_input"] == {"dropped": 2, "reasons": {"invalid_record": 1,
                                                                    "unparseable_record": 1}}
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["dedup"]["reasons"] == {"duplicate_image": 1, "near_duplicate_image": 2,
                                          "duplicate_text": 1}
    assert stages["judge"] == {"stage": "judge", "in": len(clean) + 2, "kept": len(clean),
                               "dropped": 2, "reasons": {"judge_unparseable": 1,
                                                         "quality not >= 3": 1}}
    for first, second in zip(report["stages"], report["stages"][1:]):
        assert second["in"] == first["kept"]
    assert "plots/score-quality.png" in report["plots"]
    for plot in report["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workers_and_shards_give_the_same_output(planted, tmp_path):
    spec, _, _, out = planted
    reference = outputs(out)
    assert cli.main(["curate", str(spec), "--out", str(tmp_path / "w2"), "--workers", "2",
                     "--quiet"]) == 0
    assert outputs(tmp_path / "w2") == reference
    # Two shards (as two array elements would be) meet at dedup and both write the outputs.
    shards = tmp_path / "shards"
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_curation, spec, shards, Assignment(i, 2), True) for i in range(2)]
        reports = [run.result(timeout=240) for run in runs]
    assert reports[0] == reports[1]
    assert outputs(shards) == reference


def test_rerun_of_a_finished_run_changes_nothing(planted, tmp_path):
    spec, _, _, out = planted
    before = outputs(out)
    assert cli.main(["curate", str(spec), "--out", str(out), "--quiet"]) == 0
    assert outputs(out) == before


@pytest.mark.parametrize("text, message", [
    ("inputs: [nope.jsonl]\nstages: []\n", "inputs: nope.jsonl: neither a file nor a shard directory"),
    ("inputs: [captions.jsonl]\nstages: [{name: resolution, min_side: 0}]\n",
     "stages[0] (resolution): min_side=0 must be >= 1"),
    ("inputs: [captions.jsonl]\nstages: [{name: sharpen}]\n", "stages[0]: unknown stage 'sharpen'"),
    ("inputs: [captions.jsonl]\nstages: [{name: judge, judge: {python: x:y}, keep: {q: 'about 3'}}]\n",
     "stages[0] (judge): keep.q: 'about 3' is not a rule"),
    ("inputs: [captions.jsonl]\nstages: [{name: dedup, images: fuzzy}]\n",
     "stages[0] (dedup): images='fuzzy' must be one of ['exact', 'perceptual', 'none']"),
    ("inputs: [captions.jsonl]\nstages: [{name: rebalance, by: ngrams}]\n",
     "stages[0] (rebalance): by: ngrams needs max_per_ngram"),
    ("inputs: [captions.jsonl]\nstages: [{name: judge, judge: {checkpoint: c}, keep: {q: '>= 3'}}]\n",
     "stages[0] (judge): a model judge needs prompts"),
])
def test_bad_spec_one_line_per_problem(planted, tmp_path, capsys, text, message):
    spec, _, _, _ = planted
    bad = spec.parent / "bad.yaml"
    bad.write_text(text)
    capsys.readouterr()
    assert cli.main(["curate", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sail curate: error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_bad_options_and_other_curation_in_out(planted, tmp_path, capsys):
    spec, _, _, out = planted
    assert cli.main(["curate", str(spec), "--out", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert "--shard must be I/N with 0 <= I < N" in capsys.readouterr().err
    assert cli.main(["curate", str(spec), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers must be > 0" in capsys.readouterr().err
    other = spec.parent / "other.yaml"
    other.write_text(spec.read_text().replace("min_words: 3", "min_words: 4"))
    assert cli.main(["curate", str(other), "--out", str(out)]) == 2
    assert "holds the work of another curation" in capsys.readouterr().err
