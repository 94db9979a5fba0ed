"""Media fixtures made in-process: random-content images and tiny videos encoded with PyAV."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

VIDEO_FRAMES = 24
VIDEO_W, VIDEO_H = 64, 48


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Noise over a gradient, so every resize changes pixels and tile mix-ups show."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 120, height), np.linspace(0, 120, width))[..., None]
    pixels = (ramp + rng.integers(0, 136, (height, width, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def source_frames(n: int = VIDEO_FRAMES) -> np.ndarray:
    """uint8 [n, H, W, 3] moving pattern; consecutive frames differ clearly."""
    yy, xx = np.mgrid[0:VIDEO_H, 0:VIDEO_W]
    return np.stack([
        np.stack([(xx * 4 + i * 8) % 256, (yy * 5 + i * 3) % 256, ((xx + yy) * 3 + i * 11) % 256], -1)
        for i in range(n)]).astype(np.uint8)


def encode_video(codec: str, fmt: str, pix_fmt: str, frames: np.ndarray | None = None) -> bytes:
    import av

    frames = source_frames() if frames is None else frames
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="session")
def videos() -> dict[str, bytes]:
    """Same 24-frame 64x48 clip as VP9/WebM, MJPEG/AVI and H.264/MP4."""
    pytest.importorskip("av")
    return {
        "vp9": encode_video("libvpx-vp9", "webm", "yuv420p"),
        "mjpeg": encode_video("mjpeg", "avi", "yuvj420p"),
        "h264": encode_video("libx264", "mp4", "yuv420p"),
    }
