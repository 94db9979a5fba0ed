"""``sail data check`` / ``sail data prepare`` on a directory with planted problems."""

import argparse
import io
import json
import re
import shutil
import tarfile

import pytest

from megatron_sail.cli import main as sail
from megatron_sail.data.check import Progress
from megatron_sail.data.cli import parse_size
from megatron_sail.data.records.shards import ShardReader
from tests.data.dataset_fixtures import replace_member
from tests.data.media_fixtures import chat, image_bytes, truncated_jpeg, video_bytes, write, write_jsonl
from tests.helpers import RELEASE_FIXTURE, require_shared

RELEASE = RELEASE_FIXTURE
SETTINGS = ["--tokenizer", RELEASE, "--seq-length", "1024", "--num-frames", "2", "--max-tiles", "4",
            "--workers", "1"]
GOOD_LINES = [1, 2, 3, 4]
PLANTED = {5: "media_missing", 6: "media_corrupt", 7: "video_undecodable", 8: "malformed_record", 10: "too_long"}

pytestmark = require_shared(RELEASE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    write(root / "media" / "good.jpg", image_bytes(64, 48, seed=1))
    write(root / "media" / "good.png", image_bytes(40, 40, "PNG", seed=2))
    write(root / "media" / "clip.mp4", video_bytes(frames=3))
    write(root / "media" / "trunc.jpg", truncated_jpeg())
    write(root / "media" / "garbage.mp4", b"definitely not a video" * 20)
    write_jsonl(root / "data.jsonl", [
        {"image": "media/good.jpg", "conversations": chat("What is this?", "Noise.")},
        {"image": ["media/good.jpg", "media/good.png"], "conversations": chat("<image>\n<image>\nSame?", "No.")},
        {"video": "media/clip.mp4", "conversations": chat("<video>\nWhat happens?", "Flicker.")},
        {"conversations": chat("Hi", "Hello", system="Be brief.")},
        {"image": "media/missing.jpg", "conversations": chat("q", "a")},
        {"image": "media/trunc.jpg", "conversations": chat("q", "a")},
        {"video": "media/garbage.mp4", "conversations": chat("q", "a")},
        '{"conversations": [',
        "",
        {"conversations": chat("Repeat.", "word " * 1200)},
    ])
    return root


def run(capsys, *args):
    code = sail(["data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def reported(out: str) -> dict[int, str]:
    """{line: kind} of the problem lines of data.jsonl in a command's output."""
    return {int(m[1]): m[2] for m in re.finditer(r"data\.jsonl:(\d+): (\w+): ", out)}


def test_check_reports_exactly_the_planted_problems(data_dir, capsys):
    code, out, _ = run(capsys, "check", str(data_dir / "data.jsonl"), *SETTINGS)
    assert code == 1
    assert reported(out) == PLANTED
    assert f"{data_dir}/media/missing.jpg: file not found" in out
    assert "trunc.jpg: cannot decode image" in out and "garbage.mp4: cannot read video" in out
    assert re.search(r"data\.jsonl:10: too_long: needs \d+ tokens \(256 visual", out) is None  # text only
    assert re.search(r"data\.jsonl:10: too_long: needs 1\d{3} tokens \(0 visual", out)
    assert "10 samples" not in out and "9 samples: 4 ok, 5 with problems" in out
    for kind in PLANTED.values():
        assert f"  {kind}: 1" in out


def test_check_with_worker_processes_gives_the_same_report(data_dir, capsys):
    _, serial, _ = run(capsys, "check", str(data_dir / "data.jsonl"), *SETTINGS)
    code, parallel, _ = run(capsys, "check", str(data_dir / "data.jsonl"), *SETTINGS[:-1], "2")
    assert code == 1 and parallel == serial


def test_check_without_tokenizer_skips_lengths_and_clean_data_passes(data_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "check", str(data_dir / "data.jsonl"), "--workers", "1")
    assert code == 1 and reported(out) == {k: v for k, v in PLANTED.items() if v != "too_long"}
    clean = write_jsonl(tmp_path / "clean.jsonl", [{"conversations": chat("a", "b")}])
    code, out, _ = run(capsys, "check", str(clean), "--workers", "1")
    assert code == 0 and "1 samples: 1 ok, 0 with problems" in out
    code, _, err = run(capsys, "check", str(clean), "--seq-length", "10")
    assert code == 2 and "--seq-length needs --tokenizer" in err
    code, _, err = run(capsys, "check", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "no such file" in err


def test_prepare_keeps_good_samples_and_skips_planted_ones(data_dir, tmp_path, capsys):
    out_dir = tmp_path / "shards"
    code, out, _ = run(capsys, "prepare", str(data_dir / "data.jsonl"), "--out", str(out_dir),
                       "--shard-size", "4kB", *SETTINGS)
    assert code == 0
    assert reported(out) == PLANTED and out.count("skipped ") == len(PLANTED)
    assert "wrote 4 samples in" in out
    reader = ShardReader(str(out_dir))
    assert len(reader) == len(GOOD_LINES) and len(reader.index.shards) >= 2
    assert reader.index.origin == [f"{data_dir / 'data.jsonl'}:{n}" for n in GOOD_LINES]
    assert reader.index.image_sizes[:2] == [[[64, 48]], [[64, 48], [40, 40]]]
    assert reader.index.video_frames[2] == 2 and reader.index.length[3] < 50
    assert reader.index.visual_tokens == [256, 512, 512, 0]
    assert reader.index.settings["seq_length"] == 1024 and reader.index.settings["tokens_per_tile"] == 256
    sample = reader.read(1)
    media = [sample.media.read(ref) for ref in sample.record.media]
    assert media == [(data_dir / "media" / n).read_bytes() for n in ("good.jpg", "good.png")]
    # What prepare wrote checks clean, alone and through a blend with a root.
    code, out, _ = run(capsys, "check", str(out_dir), *SETTINGS)
    assert code == 0 and "4 samples: 4 ok" in out
    (tmp_path / "lists").mkdir()
    write_jsonl(tmp_path / "lists" / "more.jsonl", [{"image": "good.png", "conversations": chat("q", "a")}])
    blend = tmp_path / "blend.yaml"
    blend.write_text(f"datasets:\n  - {{path: shards, weight: 3}}\n"
                     f"  - {{path: lists/more.jsonl, weight: 1, root: {data_dir / 'media'}}}\n")
    code, out, _ = run(capsys, "check", str(blend), *SETTINGS)
    assert code == 0 and "5 samples: 5 ok" in out
    # An existing output is not overwritten.
    code, _, err = run(capsys, "prepare", str(data_dir / "data.jsonl"), "--out", str(out_dir))
    assert code == 2 and "not an empty directory" in err


def test_check_finds_a_corrupt_image_inside_a_shard(data_dir, tmp_path, capsys):
    out_dir = tmp_path / "s"
    assert run(capsys, "prepare", str(data_dir / "data.jsonl"), "--out", str(out_dir), "--workers", "1")[0] == 0
    tar_path = out_dir / "shard-000000.tar"
    with tarfile.open(tar_path) as tar:
        member = tar.getmember("000000001.img1.png")
    with open(tar_path, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\0" * 16)  # wipe the PNG signature
    code, out, _ = run(capsys, "check", str(out_dir), "--workers", "1")
    assert code == 1
    (line,) = [ln for ln in out.splitlines() if ": media_corrupt: " in ln]
    assert line.startswith(f"{tar_path}:000000001.json (from {data_dir / 'data.jsonl'}:2): media_corrupt: ")
    assert "000000001.img1.png" in line
    # A stale index (image sizes that planning would trust) is reported too.
    index_path = out_dir / "index.json"
    index = json.loads(index_path.read_text())
    index["samples"]["image_sizes"][0] = [[10, 10]]
    index_path.write_text(json.dumps(index))
    code, out, _ = run(capsys, "check", str(out_dir), "--workers", "1")
    assert "000000000.json (from " in out and "index.json lists image sizes [(10, 10)], the images are [(64, 48)]" in out


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("prepared") / "s"
    assert sail(["data", "prepare", str(data_dir / "data.jsonl"), "--out", str(out_dir),
                 "--workers", "1"]) == 0
    return out_dir


@pytest.mark.parametrize("kind, linkname, what", [
    (tarfile.SYMTYPE, "/etc/passwd", "symbolic link (to '/etc/passwd')"),
    (tarfile.LNKTYPE, "000000000.img0.jpg", "hard link (to '000000000.img0.jpg')"),
    (tarfile.FIFOTYPE, "", "FIFO"),
    (tarfile.CHRTYPE, "", "character device")])
def test_link_and_device_members_are_skipped_and_named(prepared, tmp_path, capsys, kind, linkname,
                                                       what):
    out_dir = tmp_path / "s"
    shutil.copytree(prepared, out_dir)
    tar_path = replace_member(out_dir, "000000001.img1.png", kind, linkname)
    code, out, err = run(capsys, "check", str(out_dir), "--workers", "1")
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in out.splitlines() if ": unsafe_member: " in ln]
    assert line == (f"{tar_path}:000000001.img1.png: unsafe_member: {what} member; shards hold "
                    f"only regular files")
    assert "unsafe_member: 1" in out  # in the summary's counts; the other samples are fine
    assert not [ln for ln in out.splitlines() if ln.startswith(str(tar_path)) and ln != line]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/shard.tar", ".."])
def test_shard_index_names_only_files_inside_its_directory(prepared, tmp_path, capsys, name):
    out_dir = tmp_path / "s"
    shutil.copytree(prepared, out_dir)
    index = json.loads((out_dir / "index.json").read_text())
    index["shards"][0]["file"] = name
    (out_dir / "index.json").write_text(json.dumps(index))
    code, out, err = run(capsys, "check", str(out_dir), "--workers", "1")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"sail data check: error: {out_dir / 'index.json'}: shard file "
                          f"{name!r} is not a file name inside {out_dir}")


def test_usage_and_sizes(capsys):
    assert run(capsys, "frobnicate")[0] == 2
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "sail data prepare" in out
    assert run(capsys, "prepare", "x.jsonl")[0] == 2  # --out is required
    assert [parse_size(s) for s in ("1000", "512MB", "1GiB", "1.5kB")] == [1000, 512 * 10**6, 2**30, 1500]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


def test_progress_line_has_rate_and_eta():
    stream = io.StringIO()
    progress = Progress("prepare", total=100, interval=0.0, stream=stream)
    progress.update(25)
    assert re.fullmatch(r"\[prepare\] 25/100 samples  25% \| [\d.,]+ samples/s \| ETA \d+:\d\d:\d\d\n",
                        stream.getvalue())
