"""Image preprocessing throughput: our uint8 tiling path vs the release's per-sample Pillow path.

    python benchmarks/preprocess_throughput.py [--images 200] [--workers 2] [--rounds 2]

Both paths read the same synthetic JPEGs (mixed sizes 640x480..2048x1536 and aspect ratios,
written to a temp dir) through a torch DataLoader with the same number of worker processes, in
the same run, alternating rounds so machine noise hits both alike. Throughput is images/s
delivered to the training process (median over rounds).

- baseline: the model card's code — ``Image.open(path).convert("RGB")``, ``dynamic_preprocess``
  (crop each tile from the resized image), then per tile torchvision-style ``ToTensor`` +
  ``Normalize`` in float32, stacked; float32 tiles cross the worker queue.
- ours: ``decode_image`` + ``dynamic_tiles`` — the same bicubic resizes, but tiles stay uint8
  (one strided copy out of the resized image, no per-tile float work) and 4x fewer bytes cross the
  worker queue. Normalisation is DEFERRED: ``normalize()`` runs on the accelerator after the copy
  (or, measured separately here, on the CPU in the training process when there is no GPU).

The two paths' tiles are checked for equality (uint8 and normalised) on a few samples first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_sail.data.media import decode_image, dynamic_tiles, normalize, read_media_file  # noqa: E402
# The release's preprocessing, reimplemented literally for the tests, is the baseline here.
from benchmarks.internvl_reference import dynamic_preprocess, normalize_tensor, to_tensor  # noqa: E402

ASPECTS = [(4, 3), (3, 4), (16, 9), (9, 16), (1, 1), (3, 2), (2, 3), (2, 1), (1, 2), (5, 4), (21, 9)]


def make_dataset(folder: Path, count: int, seed: int) -> list[str]:
    """``count`` photo-like JPEGs: smooth colour fields + shapes + sensor-like noise, quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        aw, ah = ASPECTS[i % len(ASPECTS)]
        # long side 640..2048 px, short side at least 480 and at most 1536 px (the 640x480..2048x1536 range)
        long_side = int(rng.integers(640, 2049))
        w, h = (long_side, long_side * ah // aw) if aw >= ah else (long_side * aw // ah, long_side)
        w, h = min(max(w, 480), 2048), min(max(h, 480), 1536)
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        pixels = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        pixels += rng.integers(-12, 13, (h, 1, 3), dtype=np.int16)  # banding
        pixels += rng.integers(-10, 11, (h, w, 1), dtype=np.int16)  # luminance noise
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(str(path))
        if (i + 1) % 50 == 0 or i + 1 == count:
            print(f"  wrote {i + 1}/{count} JPEGs", flush=True)
    return paths


def baseline_tiles(path: str, max_tiles: int) -> torch.Tensor:
    """The model card's ``load_image``: float32 [N, 3, 448, 448] normalised tiles."""
    image = Image.open(path).convert("RGB")
    crops, _ = dynamic_preprocess(image, image_size=448, use_thumbnail=True, max_num=max_tiles)
    return torch.stack([normalize_tensor(to_tensor(crop)) for crop in crops])


def our_tiles(path: str, max_tiles: int) -> torch.Tensor:
    """uint8 [N, 3, 448, 448] tiles; normalize() runs later, where the tiles are used."""
    return dynamic_tiles(decode_image(read_media_file(path), path), max_tiles=max_tiles)


class TileDataset(Dataset):
    def __init__(self, paths: list[str], fn, max_tiles: int) -> None:
        self.paths, self.fn, self.max_tiles = paths, fn, max_tiles

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.fn(self.paths[i], self.max_tiles)


def run_pass(name: str, paths: list[str], fn, workers: int, max_tiles: int, consume) -> float:
    """Images/s for one pass over ``paths`` through a DataLoader with ``workers`` processes."""
    loader = DataLoader(TileDataset(paths, fn, max_tiles), batch_size=None, shuffle=False,
                        num_workers=workers, prefetch_factor=2 if workers else None)
    start = time.perf_counter()
    tiles = 0
    for i, sample in enumerate(loader, 1):
        consume(sample)
        tiles += sample.shape[0]
        if i % 50 == 0:
            print(f"    {name}: {i}/{len(paths)} images, {i / (time.perf_counter() - start):.1f} img/s", flush=True)
    elapsed = time.perf_counter() - start
    rate = len(paths) / elapsed
    print(f"    {name}: {len(paths)} images ({tiles} tiles) in {elapsed:.1f} s = {rate:.2f} img/s", flush=True)
    return rate


def check_identical(paths: list[str], max_tiles: int, count: int) -> None:
    for path in paths[:count]:
        expected = baseline_tiles(path, max_tiles)
        ours = our_tiles(path, max_tiles)
        image = Image.open(path).convert("RGB")
        crops, _ = dynamic_preprocess(image, image_size=448, use_thumbnail=True, max_num=max_tiles)
        crops_uint8 = torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1) for c in crops])
        if not (torch.equal(ours, crops_uint8) and torch.equal(normalize(ours), expected)):
            raise SystemExit(f"tiles differ between the two paths for {path}")
    print(f"  outputs identical on {count} samples (uint8 tiles and normalised float32 tiles)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, same for both paths")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per path; the median counts")
    p.add_argument("--max-tiles", type=int, default=12)
    p.add_argument("--check", type=int, default=6, help="samples checked for identical tiles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cpu-normalize", action="store_true",
                   help="skip the extra variant that normalises our tiles on the CPU in the training process")
    ns = p.parse_args()
    torch.set_num_threads(1)  # the training process only receives; the workers do the work
    gpu = torch.cuda.is_available()
    print(f"preprocess throughput: {ns.images} JPEGs, {ns.workers} DataLoader workers per path, "
          f"max {ns.max_tiles} tiles + thumbnail, {os.cpu_count()} CPUs visible, CUDA: {gpu}")

    with tempfile.TemporaryDirectory(prefix="sail-preprocess-") as tmp:
        paths = make_dataset(Path(tmp), ns.images, ns.seed)
        check_identical(paths, ns.max_tiles, ns.check)

        def to_gpu_and_normalize(sample: torch.Tensor) -> None:
            normalize(sample.cuda())

        def to_gpu(sample: torch.Tensor) -> None:
            sample.cuda()

        variants = {
            "baseline (float32 tiles from workers)": (baseline_tiles, to_gpu if gpu else (lambda s: None)),
            "ours (uint8 tiles, normalise deferred)": (our_tiles, to_gpu_and_normalize if gpu else (lambda s: None)),
        }
        if not ns.no_cpu_normalize:
            variants["ours + normalize() on CPU in the training process"] = (our_tiles, normalize)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(ns.rounds):
            print(f"  round {r + 1}/{ns.rounds}")
            for name, (fn, consume) in variants.items():
                rates[name].append(run_pass(name, paths, fn, ns.workers, ns.max_tiles, consume))
        if gpu:
            torch.cuda.synchronize()

    median = {name: statistics.median(v) for name, v in rates.items()}
    base = median["baseline (float32 tiles from workers)"]
    print("\nresults (median images/s over rounds)")
    for name, rate in median.items():
        print(f"  {name:52s} {rate:7.2f} img/s  {rate / base:5.2f}x")
    ours = rates["ours (uint8 tiles, normalise deferred)"]
    paired = ", ".join(f"{o / b:.2f}x" for o, b in zip(ours, rates["baseline (float32 tiles from workers)"]))
    print(f"  ours / baseline per round (same machine state): {paired}")
    ratio = median["ours (uint8 tiles, normalise deferred)"] / base
    where = ("on the GPU after the host-to-device copy" if gpu
             else "on the accelerator in training (not timed here: no GPU)")
    print(f"\nSPEEDUP ours vs baseline: {ratio:.2f}x (target >= 1.5x); normalisation deferred, done {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
