"""Frame sampling, backend selection, DALI-CPU == PyAV frames, and video failures as MediaError."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_sail.data.media import (BackendUnavailableError, MediaError, dali_available, decode_video,
                                      frame_indices, probe_video, select_video_backend, video_tiles)
from megatron_sail.data.media import backends, video
from tests.data.media.conftest import VIDEO_FRAMES, VIDEO_H, VIDEO_W, encode_video, source_frames

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")


@pytest.mark.parametrize("n", [1, 2, 5, 15, 16, 17, 31, 32, 100, 1001, 54321])
@pytest.mark.parametrize("k", [1, 4, 16, 32])
def test_frame_indices_are_segment_middles(n, k):
    indices = frame_indices(n, k)
    assert len(indices) == k
    assert all(0 <= i < n for i in indices)
    assert indices == sorted(indices)
    if n >= k:
        assert len(set(indices)) == k  # no frame twice when there are enough
    else:
        assert set(indices) == set(range(n))  # every frame used, repeated in order
    for i, index in enumerate(indices):  # each index lies in its own segment [i n / k, (i + 1) n / k)
        assert i * n / k - 1 < index < (i + 1) * n / k
        assert abs(index - (i + 0.5) * n / k) <= 1


def test_frame_indices_examples_and_errors():
    assert frame_indices(16, 16) == list(range(16))
    assert frame_indices(32, 4) == [4, 12, 20, 28]
    assert frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        frame_indices(0, 16)
    with pytest.raises(ValueError):
        frame_indices(10, 0)


def _nearest_source_frame(frame: np.ndarray, sources: np.ndarray) -> int:
    errors = np.abs(sources.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
    return int(errors.argmin())


@pytest.mark.parametrize("codec", ["vp9", "mjpeg", "h264"])
def test_pyav_returns_the_sampled_frames(videos, codec):
    info = probe_video(videos[codec], f"clip.{codec}")
    assert (info.codec, info.width, info.height, info.num_frames) == (codec, VIDEO_W, VIDEO_H, VIDEO_FRAMES)
    frames = decode_video(videos[codec], f"clip.{codec}", num_frames=8, backend="pyav")
    assert frames.dtype == torch.uint8 and frames.shape == (8, VIDEO_H, VIDEO_W, 3)
    sources = source_frames()
    assert [_nearest_source_frame(f, sources) for f in frames.numpy()] == frame_indices(VIDEO_FRAMES, 8)


@needs_dali
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_frames_equal_pyav_frames(videos, codec):
    for k in (16, 5, 40):  # fewer frames than the clip, and more (repeats)
        dali = decode_video(videos[codec], "clip", num_frames=k, backend="dali-cpu")
        pyav = decode_video(videos[codec], "clip", num_frames=k, backend="pyav")
        assert dali.shape == (k, VIDEO_H, VIDEO_W, 3)
        assert torch.equal(dali, pyav)
    assert torch.equal(decode_video(videos[codec], "clip", backend="auto"),
                       decode_video(videos[codec], "clip", backend="pyav"))


def test_auto_selection_rule(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "dali_available", lambda: True)
    assert select_video_backend("auto", "h264") == "pyav"  # DALI's CPU decoder has no H.264
    assert select_video_backend("auto", "hevc") == "pyav"
    for codec in ("vp8", "vp9", "mjpeg"):
        assert select_video_backend("auto", codec) == "dali-cpu"
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        select_video_backend("dali-gpu", "h264")
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert select_video_backend("auto", "h264") == "dali-gpu"
    assert select_video_backend("auto", "vp9") == "dali-gpu"
    assert select_video_backend("auto", "prores") == "pyav"  # NVDEC cannot, FFmpeg can
    monkeypatch.setattr(backends, "dali_available", lambda: False)
    assert select_video_backend("auto", "h264") == "pyav"
    assert select_video_backend("auto", "vp9") == "pyav"
    with pytest.raises(BackendUnavailableError, match="DALI"):
        select_video_backend("dali-cpu", "vp9")
    with pytest.raises(ValueError, match="unknown video backend"):
        select_video_backend("opencv", "vp9")


def test_this_machine_never_picks_the_gpu_without_cuda():
    if not backends.cuda_available():
        for codec in ("h264", "hevc", "av1", "vp9", "mjpeg"):
            assert select_video_backend("auto", codec) != "dali-gpu"


def test_h264_goes_to_pyav_on_cpu_and_is_refused_by_dali_cpu(videos, monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    calls = []
    real = video._decode_pyav
    monkeypatch.setattr(video, "_decode_pyav", lambda *a: calls.append(a[1]) or real(*a))
    frames = decode_video(videos["h264"], "clip.mp4", backend="auto")
    assert frames.shape == (16, VIDEO_H, VIDEO_W, 3) and calls == ["clip.mp4"]
    if dali_available():
        with pytest.raises(MediaError, match="codec 'h264' cannot be decoded by backend 'dali-cpu'"):
            decode_video(videos["h264"], "clip.mp4", backend="dali-cpu")


def test_auto_falls_back_to_pyav_when_dali_fails(videos, monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "dali_available", lambda: True)

    def broken(data, source, indices, backend):
        raise MediaError(source, "DALI failed")

    monkeypatch.setattr(video, "_decode_dali", broken)
    expected = decode_video(videos["vp9"], "clip.webm", backend="pyav")
    assert torch.equal(decode_video(videos["vp9"], "clip.webm", backend="auto"), expected)
    with pytest.raises(MediaError, match="DALI failed"):
        decode_video(videos["vp9"], "clip.webm", backend="dali-cpu")


def _remux_without_first_packet(data: bytes) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format="mp4") as dst:
        stream = src.streams.video[0]
        target = dst.add_stream_from_template(stream)
        for i, packet in enumerate(p for p in src.demux(stream) if p.size):
            if i:
                packet.stream = target
                dst.mux(packet)
    return out.getvalue()


def test_missing_frames_raise_media_error(videos):
    no_keyframe = _remux_without_first_packet(videos["h264"])  # the index lists 23 undecodable frames
    assert probe_video(no_keyframe, "x").num_frames == VIDEO_FRAMES - 1
    with pytest.raises(MediaError, match=r"^broken\.mp4: frame 0 is missing") as info:
        decode_video(no_keyframe, "broken.mp4", backend="pyav")
    assert info.value.source == "broken.mp4"


def test_zero_frame_video_raises_media_error():
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.start_encoding()  # a valid header, then no frames
    assert probe_video(buf.getvalue(), "empty.avi").num_frames == 0
    with pytest.raises(MediaError, match="empty.avi: video has no frames"):
        decode_video(buf.getvalue(), "empty.avi")


@pytest.mark.parametrize("backend", ["pyav", pytest.param("dali-cpu", marks=needs_dali)])
def test_corrupt_and_garbage_videos_raise_media_error(videos, backend):
    data = bytearray(videos["mjpeg"])
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[10] + 200: starts[10] + 1200] = bytes(1000)  # wreck one frame's entropy-coded data
    with pytest.raises(MediaError) as info:
        decode_video(bytes(data), "wrecked.avi", num_frames=VIDEO_FRAMES, backend=backend)
    assert info.value.source == "wrecked.avi"
    for garbage in (b"", b"\x00" * 1000, b"garbage" * 200, videos["h264"][: len(videos["h264"]) // 3]):
        with pytest.raises(MediaError, match="^junk.mp4: "):
            decode_video(garbage, "junk.mp4", backend=backend)
    with pytest.raises(MediaError, match="no video stream"):
        decode_video(_audio_only(), "audio.wav", backend=backend)


def _audio_only() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def test_video_tiles_are_bicubic_448_tiles_per_frame(videos):
    frames = decode_video(videos["vp9"], "clip", num_frames=4, backend="pyav")
    tiles = video_tiles(frames)
    assert tiles.dtype == torch.uint8 and tiles.shape == (4, 3, 448, 448)
    for frame, tile in zip(frames.numpy(), tiles):
        expected = np.asarray(Image.fromarray(frame).resize((448, 448), Image.Resampling.BICUBIC))
        assert np.array_equal(tile.permute(1, 2, 0).numpy(), expected)
    assert video_tiles(frames, image_size=64).shape == (4, 3, 64, 64)
    with pytest.raises(ValueError):
        video_tiles(frames.float())


def test_encoder_fixture_helper_covers_odd_frame_counts():
    clip = encode_video("mjpeg", "avi", "yuvj420p", source_frames(5))
    frames = decode_video(clip, "five.avi", num_frames=16, backend="pyav")
    assert frames.shape[0] == 16
    assert [_nearest_source_frame(f, source_frames(5)) for f in frames.numpy()] == frame_indices(5, 16)
