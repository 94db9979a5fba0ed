"""`sail data check` and `sail data prepare` with the base install (Pillow + PyAV) on a data
set of JPEG, PNG, H.264, VP9 and MJPEG files: the good ones pass, and each broken file is
named, one line per sample."""

from __future__ import annotations

import re

import pytest

from megatron_sail.cli import main as sail
from megatron_sail.data.records.shards import ShardReader
from tests.data.media_fixtures import chat, image_bytes, truncated_jpeg, video_bytes, write, write_jsonl

VIDEOS = {"h264.mp4": "libx264", "vp9.webm": "libvpx-vp9", "mjpeg.avi": "mjpeg"}


def _zeroed(data: bytes) -> bytes:
    """The container's first bytes kept, everything after them lost."""
    return data[:64] + bytes(len(data) - 64)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer

    root = tmp_path_factory.mktemp("formats")
    png = image_bytes(30, 40, "PNG", seed=3)
    files = {"good.jpg": image_bytes(40, 30, seed=1), "good.png": image_bytes(30, 40, "PNG", seed=2),
             "broken.jpg": truncated_jpeg(), "broken.png": png[: len(png) // 2]}
    for name, codec in VIDEOS.items():
        clip = video_bytes(frames=3, codec=codec)
        files[f"good_{name}"], files[f"broken_{name}"] = clip, _zeroed(clip)
    rows = []
    for name, data in files.items():
        write(root / "media" / name, data)
        video = name.endswith((".mp4", ".webm", ".avi"))
        rows.append({"video" if video else "image": f"media/{name}",
                     "conversations": chat("<video>\nWhat is it?" if video else "What is it?", "Noise.")})
    write_jsonl(root / "data.jsonl", rows)
    train_synthetic_tokenizer(str(root / "tokenizer.model"))
    broken = {line: name for line, name in enumerate(files, start=1) if name.startswith("broken")}
    return root, broken


def named(out: str) -> dict[int, str]:
    """{line of data.jsonl: the file named} of each reported sample."""
    return {int(m[1]): m[2].rsplit("/", 1)[-1]
            for m in re.finditer(r"data\.jsonl:(\d+): \w+: (\S+?): ", out)}


def test_check_names_each_broken_file(formats, capsys):
    root, broken = formats
    code = sail(["data", "check", str(root / "data.jsonl"), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1 and named(out) == broken
    assert f"{len(broken) * 2} samples: {len(broken)} ok, {len(broken)} with problems" in out


def test_prepare_keeps_every_good_file_and_names_each_broken_one(formats, tmp_path, capsys):
    root, broken = formats
    code = sail(["data", "prepare", str(root / "data.jsonl"), "--out", str(tmp_path / "shards"),
                 "--tokenizer", str(root / "tokenizer.model"), "--seq-length", "1024",
                 "--num-frames", "2", "--max-tiles", "2", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and named(out) == broken
    reader = ShardReader(str(tmp_path / "shards"))
    kept = [int(origin.rsplit(":", 1)[1]) for origin in reader.index.origin]
    assert kept == [line for line in range(1, 2 * len(broken) + 1) if line not in broken]
    assert [f for f in reader.index.video_frames if f] == [2, 2, 2]  # H.264, VP9, MJPEG


def test_a_missing_optional_backend_is_one_line_naming_the_extra(formats, tmp_path, capsys,
                                                                  monkeypatch):
    from megatron_sail.data.media import backends

    monkeypatch.setattr(backends, "dali_available", lambda: False)  # as without the extra
    root, _ = formats
    code = sail(["data", "check", str(root / "data.jsonl"), "--video-backend", "dali-cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [
        "sail data check: error: --video-backend 'dali-cpu' needs NVIDIA DALI, an optional "
        f"extra: {backends.DALI_EXTRA}"]
    assert "megatron-sail[dali-cuda12]" in backends.DALI_EXTRA
