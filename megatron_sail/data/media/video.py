"""Video bytes -> K uniformly sampled RGB frames -> one 448 px tile per frame.

Frame sampling (:func:`frame_indices`) takes the middle frame of each of K equal segments of
the video — the "middle" sampling InternVL uses — so the same K frames are chosen whichever
backend decodes. Frames are counted from the container's packets (PyAV demux, no decoding), the
same index DALI's decoder seeks in.

Both CPU backends convert YUV to RGB with FFmpeg's swscale using bilinear full-chroma
interpolation with accurate rounding (what DALI's CPU decoder does), so DALI-CPU and PyAV frames
are identical. Under ``backend="auto"`` a DALI failure falls back to PyAV; with an explicit backend
it is reported. See :mod:`megatron_sail.data.media.backends` for the backend rule.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from megatron_sail.data.media.backends import (BackendUnavailableError, VideoBackend, pyav_available,
                                               select_video_backend, supports_codec)
from megatron_sail.data.media.buffers import pixel_buffer
from megatron_sail.data.media.errors import MediaError, describe
from megatron_sail.data.media.tiling import resized_rgb


@dataclass(frozen=True)
class VideoInfo:
    codec: str  # FFmpeg codec name, e.g. "h264", "vp9", "mjpeg"
    width: int
    height: int
    num_frames: int


def frame_indices(num_frames_in_video: int, k: int = 16) -> list[int]:
    """K frame indices, the middle of each of K equal segments of ``range(num_frames_in_video)``.

    ``index_i = floor((i + 0.5) * n / k)``: strictly increasing when n >= k; when the video has
    fewer than k frames, frames repeat in order so a sample always has k frames (and a fixed
    number of tokens).
    """
    if num_frames_in_video < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames_in_video}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [((2 * i + 1) * num_frames_in_video) // (2 * k) for i in range(k)]


def _av():
    if not pyav_available():
        raise BackendUnavailableError("reading videos needs PyAV: pip install av")
    import av

    return av


def _count_packets(av, container, stream) -> int:
    """Packets of ``stream`` holding data: its frame count, as DALI's frame index counts them."""
    count = 0
    try:
        for packet in container.demux(stream):
            count += packet.size > 0
    except av.error.EOFError:
        pass  # a file cut short: the packets read so far are the video (0 -> "no frames")
    return count


def probe_video(data: bytes, source: str) -> VideoInfo:
    """Codec, size and frame count of the first video stream (demuxes packets, decodes nothing)."""
    av = _av()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError(source, "no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            return VideoInfo(context.name, context.width, context.height, _count_packets(av, container, stream))
    except MediaError:
        raise
    except Exception as exc:  # av.error.* (InvalidDataError, ...), or odd container states
        raise MediaError(source, f"cannot read video container ({describe(exc)})") from exc


def _stack(frames: list[np.ndarray], source: str) -> np.ndarray:
    if len({f.shape for f in frames}) > 1:
        raise MediaError(source, f"frames change size mid-stream ({sorted({f.shape for f in frames})})")
    return np.stack(frames)


def _decode_pyav(data: bytes, source: str, indices: Sequence[int], num_frames: int) -> np.ndarray:
    av = _av()
    from av.video.reformatter import Interpolation

    # DALI's CPU decoder converts with exactly these swscale flags; matching them gives equal frames.
    flags = (Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
             | Interpolation.ACCURATE_RND | Interpolation.BITEXACT)
    wanted = set(indices)
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    found[i] = frame.reformat(format="rgb24", interpolation=flags).to_ndarray()
                if i >= last:
                    break
    except Exception as exc:
        raise MediaError(source, f"cannot decode video ({describe(exc)})") from exc
    missing = sorted(wanted - found.keys())
    if missing:
        raise MediaError(source, f"frame {missing[0]} is missing: only {len(found)} of the "
                                 f"{len(wanted)} sampled frames decoded ({num_frames} frames in the index)")
    return _stack([found[i] for i in indices], source)


def _decode_dali(data: bytes, source: str, indices: Sequence[int], backend: VideoBackend) -> np.ndarray:
    from megatron_sail.data.media.dali_pipelines import dali_video_decoder

    device = "mixed" if backend == "dali-gpu" else "cpu"
    try:
        frames = dali_video_decoder(device).decode(data, indices)
    except RuntimeError as exc:
        raise MediaError(source, f"{backend} could not decode the video ({describe(exc)})") from exc
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise MediaError(source, f"{backend} returned frames of shape {frames.shape}, "
                                 f"expected [{len(indices)}, H, W, 3]")
    return frames


def decode_video(data: bytes, source: str, num_frames: int = 16, backend: str = "auto") -> torch.Tensor:
    """uint8 [K, H, W, 3] RGB frames (K = ``num_frames``, sampled by :func:`frame_indices`), on the CPU.

    ``backend``: "auto", "dali-gpu", "dali-cpu" or "pyav" (see the backends module). Any failure
    of the media itself raises MediaError; a named backend that cannot run here raises
    BackendUnavailableError. The "dali-gpu" path is UNVERIFIED on GPU.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    info = probe_video(data, source)
    if info.num_frames == 0:
        raise MediaError(source, "video has no frames")
    indices = frame_indices(info.num_frames, num_frames)
    chosen = select_video_backend(backend, info.codec)
    if chosen == "pyav":
        return torch.from_numpy(_decode_pyav(data, source, indices, info.num_frames))
    if not supports_codec(chosen, info.codec):
        raise MediaError(source, f"codec {info.codec!r} cannot be decoded by backend {chosen!r}; "
                                 "use backend='auto' or 'pyav'")
    try:
        frames = _decode_dali(data, source, indices, chosen)
    except MediaError:
        if backend != "auto":
            raise
        frames = _decode_pyav(data, source, indices, info.num_frames)  # FFmpeg may cope where DALI did not
    return torch.from_numpy(frames)


def video_tiles(frames: torch.Tensor | np.ndarray, image_size: int = 448) -> torch.Tensor:
    """uint8 [K, 3, S, S] (channels-last storage): each frame resized bicubic to S x S, like a
    one-tile image. Normalise later with :func:`megatron_sail.data.media.tiling.normalize`."""
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 [K, H, W, 3] frames, got {array.dtype} {array.shape}")
    tiles = pixel_buffer((array.shape[0], image_size, image_size, 3))
    out = tiles.numpy()
    for i, frame in enumerate(array):
        out[i] = resized_rgb(Image.fromarray(frame), (image_size, image_size))
    return tiles.permute(0, 3, 1, 2)
