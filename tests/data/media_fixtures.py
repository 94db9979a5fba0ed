"""Small media files made on the fly: images with Pillow, videos with PyAV."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(width: int = 64, height: int = 48, fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def truncated_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A JPEG whose header is intact (it probes) but whose scan data is cut short."""
    data = image_bytes(width, height, "JPEG")
    return data[: len(data) // 2]


def video_bytes(frames: int = 4, width: int = 32, height: int = 32, seed: int = 0,
                codec: str = "mpeg4") -> bytes:
    """Random frames encoded with ``codec`` (mpeg4 / libx264 in mp4, libvpx-vp9 in webm,
    mjpeg in avi)."""
    import av

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    fmt = "webm" if codec.startswith("libvpx") else "avi" if codec == "mjpeg" else "mp4"
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON) or raw strings (written as they are)."""
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat(*texts: str, system: str | None = None) -> list[dict]:
    """Alternating human/gpt turns from ``texts``."""
    turns = [{"from": "system", "value": system}] if system is not None else []
    return turns + [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]
