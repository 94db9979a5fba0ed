"""A planted curation data set: clean caption records, and one planted defect per kind, each
with the stage and reason that must drop it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = [
    "A red bicycle leans against a brick wall beside a green door.",
    "Two children fly a yellow kite over a sandy beach at sunset.",
    "A bowl of ramen with sliced egg, scallions and pork on a wooden table.",
    "A snowy mountain peak rises above a pine forest under a clear blue sky.",
    "An old man reads a newspaper on a park bench next to a sleeping dog.",
    "A street market stall sells oranges, lemons and bright red peppers.",
    "A white sailboat crosses a calm lake surrounded by autumn trees.",
    "A cat sits on a windowsill watching raindrops run down the glass.",
]

# The Python judge below scores by these words (known scores).
JUDGE_MODULE = '''
import os

def score(record):
    caption = record["conversations"][-1]["value"]
    log = os.environ.get("CURATE_JUDGE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(str(record.get("id")) + "\\n")
    delay = float(os.environ.get("CURATE_JUDGE_DELAY", "0"))
    if delay:
        import time
        time.sleep(delay)
    if "mumbling" in caption:
        return {"quality": "n/a"}
    quality = 2 if "blurry" in caption else 4
    return {"quality": quality, "length": len(caption.split())}
'''

SPEC = """inputs: [captions.jsonl]
chunk_size: {chunk}
stages:
  - {{name: decodable}}
  - {{name: resolution, min_side: 64, max_aspect: 8}}
  - {{name: caption_length, min_words: 3}}
  - {{name: ngram_repetition, n: 3, max_repeat_fraction: 0.3}}
  - {{name: dedup, images: perceptual, text: normalized}}
  - {{name: judge, judge: {{python: "planted_judge:score"}}, keep: {{quality: ">= 3"}}}}
"""


def picture(seed: int, size=(160, 120)) -> Image.Image:
    """A distinct, structured picture: a seeded 6x8 grid of colours, smoothly upsampled."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def record(rid: str, image: str, caption: str) -> dict:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                              {"from": "gpt", "value": caption}]}


def write_planted(root: Path, chunk: int = 3, copies: int = 1) -> tuple[Path, dict, list[str]]:
    """The data set under ``root``: (spec path, {record id: (stage, reason)} for the planted
    defects, ids of the clean records). ``copies`` repeats the clean set with new pictures
    (for longer runs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    lines: list[str] = []
    clean: list[str] = []
    planted: dict[str, tuple[str, str]] = {}

    def add(rec: dict) -> None:
        lines.append(json.dumps(rec))

    for copy in range(copies):
        for n, caption in enumerate(CAPTIONS):
            name = f"img/clean{copy}_{n}.png"
            (root / name).write_bytes(encoded(picture(100 * copy + n)))
            add(record(f"clean{copy}_{n}", name, caption if copy == 0 else f"{caption} View {copy}."))
            clean.append(f"clean{copy}_{n}")
    first = (root / "img/clean0_0.png").read_bytes()
    (root / "img/copy.png").write_bytes(first)                          # byte-identical
    add(record("dup_bytes", "img/copy.png", "A different caption about a copied photo of a bicycle."))
    planted["dup_bytes"] = ("dedup", "duplicate_image")
    (root / "img/reencoded.jpg").write_bytes(encoded(picture(1).convert("RGB"), "JPEG", quality=60))
    add(record("dup_jpeg", "img/reencoded.jpg", "The kite picture again, saved as a JPEG file."))
    planted["dup_jpeg"] = ("dedup", "near_duplicate_image")
    (root / "img/resized.png").write_bytes(encoded(picture(2).resize((112, 84))))
    add(record("dup_resized", "img/resized.png", "The ramen photo at a smaller size than before."))
    planted["dup_resized"] = ("dedup", "near_duplicate_image")
    (root / "img/fresh.png").write_bytes(encoded(picture(50)))
    add(record("dup_text", "img/fresh.png", "  a RED bicycle leans against a brick-wall, beside a green door "))
    planted["dup_text"] = ("dedup", "duplicate_text")
    (root / "img/corrupt.png").write_bytes(encoded(picture(51))[:300])
    add(record("corrupt", "img/corrupt.png", "A picture whose file was cut off midway."))
    planted["corrupt"] = ("decodable", "undecodable")
    (root / "img/tiny.png").write_bytes(encoded(picture(52, (20, 20))))
    add(record("tiny", "img/tiny.png", "A very small thumbnail of a flower."))
    planted["tiny"] = ("resolution", "too_small")
    (root / "img/strip.png").write_bytes(encoded(picture(53, (900, 100))))
    add(record("strip", "img/strip.png", "A long thin panorama of a city skyline."))
    planted["strip"] = ("resolution", "extreme_aspect")
    (root / "img/a.png").write_bytes(encoded(picture(54)))
    add(record("repeats", "img/a.png", "a dog on a mat a dog on a mat a dog on a mat a dog on a mat"))
    planted["repeats"] = ("ngram_repetition", "repeated_ngrams")
    (root / "img/b.png").write_bytes(encoded(picture(55)))
    add(record("short", "img/b.png", "A dog."))
    planted["short"] = ("caption_length", "too_short")
    (root / "img/c.png").write_bytes(encoded(picture(56)))
    add(record("blurry", "img/c.png", "A blurry photo of something grey in a room."))
    planted["blurry"] = ("judge", "quality not >= 3")
    (root / "img/d.png").write_bytes(encoded(picture(57)))
    add(record("mumbling", "img/d.png", "A mumbling caption the judge cannot score at all."))
    planted["mumbling"] = ("judge", "judge_unparseable")
    add(record("missing", "img/nowhere.png", "A picture that was never downloaded."))
    planted["missing"] = ("decodable", "missing_media")
    lines.append('{"id": "broken", "conversations": [')
    planted["<raw>"] = ("input", "unparseable_record")
    add({"id": "invalid", "conversations": [{"from": "human", "value": "no answer"}]})
    planted["invalid"] = ("input", "invalid_record")
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "planted_judge.py").write_text(JUDGE_MODULE)
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(chunk=chunk))
    return spec, planted, clean
