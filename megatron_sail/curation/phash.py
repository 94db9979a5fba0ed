"""Perceptual image hash (DCT hash): near-duplicates - the same picture re-encoded, resized or
lightly recompressed - get hashes a few bits apart; different pictures about half the bits.

The image is reduced to 32x32 grey levels, transformed with a 2-D DCT-II, and the 8x8 lowest
frequencies (without the DC term, which only carries brightness) are compared with their
median: one bit each, 64 bits in all (DC replaced by the 64th coefficient of the block)."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

SIDE, KEEP = 32, 8


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II basis: ``D @ x`` transforms a length-32 column."""
    k = np.arange(SIDE)[:, None]
    n = np.arange(SIDE)[None, :]
    d = np.cos(np.pi * (2 * n + 1) * k / (2 * SIDE)) * np.sqrt(2 / SIDE)
    d[0] /= np.sqrt(2)
    return d


def phash(data: bytes) -> int:
    """The 64-bit hash of encoded image bytes (raises what Pillow raises on bad bytes)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
        pixels = np.asarray(grey, dtype=np.float64)
    d = _dct_matrix()
    coeffs = (d @ pixels @ d.T)[:KEEP, :KEEP].flatten()
    coeffs = coeffs[1:]                                  # 63 AC terms ...
    coeffs = np.append(coeffs, (d @ pixels @ d.T)[KEEP, KEEP])   # ... and one more: 64 bits
    bits = coeffs > np.median(coeffs)
    return int("".join("1" if b else "0" for b in bits), 2)


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def bands(h: int, count: int) -> list[tuple[int, int]]:
    """(band number, bits) for ``count`` bands covering the 64 bits: two hashes at most
    ``count - 1`` bits apart agree on at least one band (pigeonhole), so bands index the
    candidates of a near-duplicate search."""
    out, start = [], 0
    for b in range(count):
        width = (64 - start) // (count - b)
        out.append((b, (h >> start) & ((1 << width) - 1)))
        start += width
    return out
