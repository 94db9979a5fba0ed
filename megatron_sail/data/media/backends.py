"""Which decoder runs a video: availability checks and the ``backend="auto"`` rule.

- ``"dali-gpu"``: DALI's "mixed" video decoder (NVDEC) — H.264, HEVC, AV1, MPEG-4, VP8, VP9, MJPEG.
- ``"dali-cpu"``: DALI's CPU video decoder — VP8, VP9 and MJPEG only.
- ``"pyav"``: FFmpeg through PyAV — everything FFmpeg decodes (e.g. H.264 on a CPU machine).

``"auto"`` takes the GPU decoder when CUDA and DALI are both present and the codec is one NVDEC
handles, else DALI's CPU decoder for VP8/VP9/MJPEG when DALI imports, else PyAV. It never picks
the GPU decoder without CUDA. An explicitly requested backend that is not installed (or needs a
GPU that is absent) raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import functools
import importlib
from typing import Literal

from megatron_sail.config.schema import VIDEO_BACKENDS
from megatron_sail.errors import UserError

VideoBackend = Literal["dali-gpu", "dali-cpu", "pyav"]
BACKEND_CHOICES: tuple[str, ...] = VIDEO_BACKENDS

# Codec names as FFmpeg (and PyAV's ``stream.codec_context.name``) spell them.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "mpeg4", "vp8", "vp9", "mjpeg"})


class BackendUnavailableError(UserError, RuntimeError):
    """A decoder backend was requested by name but cannot run in this process."""


@functools.cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a broken install failing while it loads its libraries
        return False
    return True


def dali_available() -> bool:
    """NVIDIA DALI imports (the CPU operators work without a GPU)."""
    return _importable("nvidia.dali")


def pyav_available() -> bool:
    """PyAV (FFmpeg bindings) imports; needed to probe any video."""
    return _importable("av")


def cuda_available() -> bool:
    """A CUDA device is usable by torch in this process."""
    import torch

    return torch.cuda.is_available()


def supports_codec(backend: VideoBackend, codec: str) -> bool:
    if backend == "dali-cpu":
        return codec in DALI_CPU_CODECS
    if backend == "dali-gpu":
        return codec in DALI_GPU_CODECS
    return True  # PyAV: whatever its FFmpeg build decodes; failures surface as MediaError


# DALI is an optional extra: its wheels are built per CUDA major version.
DALI_EXTRA = ("pip install 'megatron-sail[dali-cuda12]' (or [dali-cuda13], matching the "
              "CUDA major version)")


def require_backend(backend: VideoBackend, what: str = "video backend") -> None:
    """Raise BackendUnavailableError, saying what is missing, if ``backend`` cannot run here
    (``what``: the setting that asked for it)."""
    if backend == "pyav" and not pyav_available():
        raise BackendUnavailableError(f"{what} 'pyav' needs PyAV, a dependency of megatron-sail: "
                                      "pip install av")
    if backend in ("dali-cpu", "dali-gpu") and not dali_available():
        raise BackendUnavailableError(
            f"{what} {backend!r} needs NVIDIA DALI, an optional extra: {DALI_EXTRA}")
    if backend == "dali-gpu" and not cuda_available():
        raise BackendUnavailableError(f"{what} 'dali-gpu' needs a CUDA device; none is visible")


def select_video_backend(requested: str, codec: str) -> VideoBackend:
    """The backend that decodes a ``codec`` video: ``requested`` itself, or the ``"auto"`` choice."""
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"unknown video backend {requested!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if requested == "auto":
        if codec in DALI_GPU_CODECS and cuda_available() and dali_available():
            return "dali-gpu"
        if codec in DALI_CPU_CODECS and dali_available():
            return "dali-cpu"
        return "pyav"
    backend: VideoBackend = requested  # type: ignore[assignment]  # checked against the choices
    require_backend(backend)
    return backend
