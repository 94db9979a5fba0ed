"""Small DALI pipelines (one sample or one batch per run), cached per process and device.

DALI is imported only here and only when a DALI backend is used. Each pipeline runs
synchronously (no prefetching) because it is fed one request at a time by the caller; a pipeline
that failed is shut down and dropped, since DALI marks it unusable after an error. Every
pipeline is adopted by :mod:`megatron_sail.compat.dali_fork`, so a forked process (a DataLoader
worker) can drop the ones it inherited without touching their parent's threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from megatron_sail.compat import dali_fork

_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def _device_id(device: str) -> int | None:
    if device == "cpu":
        return None
    if device != "mixed":
        raise ValueError(f"DALI device must be 'cpu' or 'mixed', got {device!r}")
    import torch

    return torch.cuda.current_device()


def _pipeline(batch_size: int, num_threads: int, device_id: int | None):
    from nvidia.dali.pipeline import Pipeline

    pipeline = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                        prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    dali_fork.adopt(pipeline)
    return pipeline


class DaliVideoDecoder:
    """Selected frames of one encoded video per run (``fn.decoders.video`` with ``frames=``).

    ``device="mixed"`` (NVDEC) is UNVERIFIED on GPU: written for DALI's documented API, never run
    on the development machines. Its colour conversion is NVIDIA's, so frames may differ slightly
    from the CPU backends, which agree with each other exactly.
    """

    def __init__(self, device: str) -> None:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        self.device = device
        self._lock = threading.Lock()
        self._pipe = _pipeline(1, 1, _device_id(device))
        with self._pipe:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            self._pipe.set_outputs(fn.decoders.video(encoded, frames=frames, device=device))
        self._pipe.build()

    def decode(self, data: bytes, indices: Sequence[int]) -> np.ndarray:
        """uint8 [K, H, W, 3] RGB frames at ``indices``; RuntimeError if DALI fails."""
        with self._lock:
            self._pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
            self._pipe.feed_input("frames", [np.asarray(indices, dtype=np.int32)])
            (out,) = self._pipe.run()
            if self.device == "mixed":
                out = out.as_cpu()
            return np.array(out[0])  # copy: DALI reuses its output buffers on the next run

    def close(self) -> None:
        with self._lock:
            dali_fork.shut_down(self._pipe)


class DaliImageDecoder:
    """A batch of encoded images per run (``fn.decoders.image``, RGB output)."""

    def __init__(self, device: str, num_threads: int, capacity: int) -> None:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        self.device = device
        self.capacity = capacity
        self._lock = threading.Lock()
        self._pipe = _pipeline(capacity, num_threads, _device_id(device))
        with self._pipe:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            self._pipe.set_outputs(fn.decoders.image(encoded, device=device, output_type=types.RGB))
        self._pipe.build()

    def decode(self, images: Sequence[bytes]) -> list[np.ndarray]:
        with self._lock:
            self._pipe.feed_input("encoded", [np.frombuffer(d, dtype=np.uint8) for d in images])
            (out,) = self._pipe.run()
            if self.device == "mixed":
                out = out.as_cpu()
            return [np.array(out[i]) for i in range(len(images))]

    def close(self) -> None:
        with self._lock:
            dali_fork.shut_down(self._pipe)


def _cached(key: tuple, build):
    key = (os.getpid(), *key)  # a forked worker must not reuse its parent's pipeline
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def _forget(key: tuple) -> None:
    with _cache_lock:
        _cache.pop((os.getpid(), *key), None)


class _Guarded:
    """Runs a cached decoder; on failure drops it (DALI invalidates a failed pipeline)."""

    def __init__(self, key: tuple, decoder) -> None:
        self._key, self._decoder = key, decoder

    def decode(self, *args):
        try:
            return self._decoder.decode(*args)
        except Exception as exc:
            _forget(self._key)
            # now, not when the GC reaches it: the traceback keeps it alive in a reference cycle
            self._decoder.close()
            raise RuntimeError(_essence(str(exc))) from exc


def _essence(message: str) -> str:
    """The line of a DALI pipeline error that says what went wrong (it also prints a traceback)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return lines[i + 1]
    return lines[0] if lines else message


def dali_video_decoder(device: str) -> _Guarded:
    key = ("video", device)
    return _Guarded(key, _cached(key, lambda: DaliVideoDecoder(device)))


def dali_image_decoder(device: str, num_threads: int, batch_size: int = 1) -> _Guarded:
    capacity = 1 << max(0, batch_size - 1).bit_length()  # round up so few pipelines get built
    key = ("image", device, num_threads, capacity)
    return _Guarded(key, _cached(key, lambda: DaliImageDecoder(device, num_threads, capacity)))
