"""A small multimodal JSONL dataset with planted bad samples, for loader and training tests.

Good samples: captions of images (JPEG/PNG, various aspect ratios, some with several images),
text-only chats and short videos (H.264 .mp4 and VP9 .webm: PyAV and DALI's CPU backend). Planted problems, one each: a malformed JSON line, a
missing image file, a truncated JPEG (header probes fine, pixels do not decode), a video that
is not a video, and a sample too long for the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.data.media_fixtures import chat, image_bytes, truncated_jpeg, video_bytes, write, write_jsonl

WORDS = ("red", "blue", "circle", "square", "small", "large", "left", "right", "top", "bottom")


@dataclass
class PlantedDataset:
    jsonl: Path
    good: int
    bad: dict[str, str]  # kind -> the file (or file:line) the loader must report


def _caption(i: int, n: int = 6) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def make_dataset(root: Path, good: int = 40, bad: bool = True, long_words: int = 400
                 ) -> PlantedDataset:
    media = root / "media"
    rows: list = []
    for i in range(good):
        kind = i % 5
        if kind in (0, 1):  # one image, varied aspect ratio and format
            w, h = [(160, 90), (90, 200), (120, 120), (300, 80)][i % 4]
            name = f"img{i}.{'png' if kind else 'jpg'}"
            write(media / name, image_bytes(w, h, "PNG" if kind else "JPEG", seed=i))
            rows.append({"image": f"media/{name}",
                         "conversations": chat("<image>\nDescribe the picture.", _caption(i))})
        elif kind == 2:  # two images
            for k in range(2):
                write(media / f"pair{i}_{k}.jpg", image_bytes(100 + 20 * k, 80, seed=100 + i + k))
            rows.append({"image": [f"media/pair{i}_0.jpg", f"media/pair{i}_1.jpg"],
                         "conversations": chat("<image>\n<image>\nCompare them.", _caption(i, 4))})
        elif kind == 3:  # text only, two rounds
            rows.append({"conversations": chat("Say a colour.", _caption(i, 2),
                                               "And a shape?", _caption(i + 1, 3))})
        else:  # a short video, H.264 or VP9
            name = f"clip{i}.mp4" if i % 10 == 4 else f"clip{i}.webm"
            codec = "libx264" if name.endswith("mp4") else "libvpx-vp9"
            write(media / name, video_bytes(frames=6, width=48, height=48, seed=i, codec=codec))
            rows.append({"video": f"media/{name}",
                         "conversations": chat("<video>\nWhat happens?", _caption(i, 5))})
    planted: dict[str, str] = {}
    jsonl = root / "train.jsonl"
    if bad:
        rows.insert(3, '{"image": "media/x.jpg", "conversations": [')  # malformed line 4
        planted["malformed_record"] = f"{jsonl}:4"
        rows.append({"image": "media/missing.jpg",
                     "conversations": chat("<image>\nWhat is it?", "nothing")})
        planted["media_missing"] = str(media / "missing.jpg")
        write(media / "broken.jpg", truncated_jpeg(120, 90))
        rows.append({"image": "media/broken.jpg",
                     "conversations": chat("<image>\nWhat is it?", "broken")})
        planted["media_corrupt"] = str(media / "broken.jpg")
        write(media / "garbage.mp4", b"this is not a video at all" * 40)
        rows.append({"video": "media/garbage.mp4",
                     "conversations": chat("<video>\nWhat happens?", "nothing")})
        planted["video_undecodable"] = str(media / "garbage.mp4")
        rows.append({"conversations": chat("Talk a lot.", " ".join(WORDS * (long_words // 10)))})
        planted["too_long"] = f"{jsonl}:{len(rows)}"
    write_jsonl(jsonl, rows)
    return PlantedDataset(jsonl, good, planted)


def replace_member(shard_dir: Path, name: str, kind: bytes, linkname: str = "") -> Path:
    """Rewrites the prepared shard holding member ``name`` so that it becomes a member of tar
    type ``kind`` (e.g. ``tarfile.SYMTYPE`` pointing at ``linkname``), keeping index.json's
    byte ranges right. Returns the shard file."""
    import io
    import json
    import tarfile

    index_path = shard_dir / "index.json"
    index = json.loads(index_path.read_text())
    samples = index["samples"]
    for shard in index["shards"]:
        path = shard_dir / shard["file"]
        with tarfile.open(path) as tar:
            members = [(info, tar.extractfile(info).read()) for info in tar]
        if name not in [info.name for info, _ in members]:
            continue
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for info, data in members:
                key = int(info.name.split(".")[0])
                if info.name.endswith(".json"):  # a sample's first member
                    samples["offset"][key] = out.tell()
                if info.name == name:
                    info = tarfile.TarInfo(name)
                    info.type, info.linkname = kind, linkname
                    tar.addfile(info)
                else:
                    tar.addfile(info, io.BytesIO(data))
                samples["size"][key] = out.tell() - samples["offset"][key]
        path.write_bytes(out.getvalue())
        shard["bytes"] = len(out.getvalue())
        index_path.write_text(json.dumps(index))
        return path
    raise KeyError(name)
