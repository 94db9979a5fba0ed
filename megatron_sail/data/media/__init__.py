"""Media half of the multimodal data pipeline: decode images and videos, tile them as SAIL-VL2 does.

Everything here produces uint8 pixels; :func:`normalize` (ImageNet mean/std, float32) is meant to
run on the accelerator. Every failure of the media itself is a :class:`MediaError` naming the
source. Modules: ``images`` (probe/decode), ``tiling`` (InternVL dynamic tiles), ``anyres``
(native resolution within a token budget), ``video`` (frame sampling, decoding, per-frame tiles),
``backends`` (which video decoder runs), ``files`` (reading from disk).
"""

from megatron_sail.data.media.anyres import anyres_grid, anyres_image, anyres_size, anyres_tokens
from megatron_sail.data.media.backends import (BackendUnavailableError, cuda_available, dali_available,
                                               pyav_available, select_video_backend)
from megatron_sail.data.media.errors import MediaError
from megatron_sail.data.media.files import read_media_file
from megatron_sail.data.media.images import decode_image, decode_images_dali, probe_image
from megatron_sail.data.media.tiling import (IMAGENET_MEAN, IMAGENET_STD, dynamic_tiles, normalize, num_tiles,
                                             tile_grid)
from megatron_sail.data.media.video import VideoInfo, decode_video, frame_indices, probe_video, video_tiles

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "BackendUnavailableError", "MediaError", "VideoInfo",
    "anyres_grid", "anyres_image", "anyres_size", "anyres_tokens", "cuda_available", "dali_available",
    "decode_image", "decode_images_dali", "decode_video", "dynamic_tiles", "frame_indices", "normalize",
    "num_tiles", "probe_image", "probe_video", "pyav_available", "read_media_file",
    "select_video_backend", "tile_grid", "video_tiles",
]
