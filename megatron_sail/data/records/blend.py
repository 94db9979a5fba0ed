"""Dataset blends: a YAML list of datasets with weights, and the deterministic schedule that
says which dataset and which sample feed each global sample position.

Blend file::

    name: sft-stage-1            # optional
    datasets:
      - path: data/captions.jsonl   # a JSONL file or a shard directory; relative to this file
        weight: 0.7                 # any positive number; weights are normalised
        root: /mnt/images           # optional: where relative media paths resolve (relative: to this file)
        name: captions              # optional: defaults to the path's base name
      - path: shards/ocr
        weight: 0.3

Mixture rule (Megatron's blended dataset): position ``p`` goes to the dataset whose realised
count falls furthest below its target, ``argmax_d(w_d * (p + 1) - c_d(p))``, ties to the lowest
index. Weights are first rounded to integers ``q_d`` summing to ``PERIOD`` (largest remainders,
at least 1 each). With integer weights this greedy rule returns to zero error after exactly
``PERIOD`` steps (every error stays above -1 and the errors sum to 0), so the sequence is
periodic: one table of ``PERIOD`` entries answers any position in O(1), making
``source_of(position)`` a pure function of position for exact resume.

Within a dataset its ``k``-th draw is sample ``perm(seed, d, e)[k mod size_d]``, epoch
``e = k // size_d``: a fresh permutation per (seed, dataset index, epoch). A permutation costs
O(size_d) time and 4-8 bytes per sample to build; the most recent ``PERM_CACHE`` per dataset are
kept, so sequential reading builds one per dataset epoch. A dataset whose samples are already
in random order (``in_order``: the generated synthetic data, effectively infinite) is read in
index order instead: no permutation, nothing allocated per sample.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from megatron_sail.config.loader import ConfigError, read_yaml

PERIOD = 10_000  # weight resolution 1e-4
PERM_CACHE = 2
_ENTRY_KEYS = {"path", "weight", "root", "name"}


class BlendError(ConfigError):
    """A blend file the user must fix (a config error: ``sail train`` reports it in one line)."""


def is_blend_file(path: str) -> bool:
    return path.endswith((".yaml", ".yml"))


@dataclass(frozen=True)
class BlendEntry:
    path: str  # absolute
    weight: float  # normalised: the weights of a blend sum to 1
    root: str | None
    name: str


@dataclass(frozen=True)
class Blend:
    source: str
    name: str | None
    entries: tuple[BlendEntry, ...]

    @property
    def weights(self) -> list[float]:
        return [e.weight for e in self.entries]


def _resolve(base: str, path: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def load_blend(path: str) -> Blend:
    tree = read_yaml(path, BlendError, "blend file")
    unknown = set(tree) - {"name", "datasets"}
    if unknown:
        raise BlendError(f"{path}: unknown key(s) {sorted(unknown)} (expected name, datasets)")
    datasets = tree.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise BlendError(f"{path}: 'datasets' must be a non-empty list")
    base = os.path.dirname(os.path.abspath(path))
    raw = []
    for i, item in enumerate(datasets):
        where = f"{path}: datasets[{i}]"
        if not isinstance(item, dict):
            raise BlendError(f"{where} must be a mapping with path and weight, got {item!r}")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise BlendError(f"{where}: unknown key(s) {sorted(unknown)} (expected {sorted(_ENTRY_KEYS)})")
        if not isinstance(item.get("path"), str) or not item["path"]:
            raise BlendError(f"{where}.path must be a path, got {item.get('path')!r}")
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 \
                or weight == float("inf"):
            raise BlendError(f"{where}.weight must be a positive number, got {weight!r}")
        root = item.get("root")
        if root is not None and not isinstance(root, str):
            raise BlendError(f"{where}.root must be a path, got {root!r}")
        full = _resolve(base, item["path"])
        if is_blend_file(full) and os.path.realpath(full) == os.path.realpath(path):
            raise BlendError(f"{where}.path lists this blend file itself (cycle {path} -> {path})")
        name = item.get("name") or os.path.basename(full.rstrip(os.sep))
        raw.append((full, float(weight), None if root is None else _resolve(base, root), str(name)))
    names = [r[3] for r in raw]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BlendError(f"{path}: dataset name(s) {duplicates} used twice; set distinct 'name's")
    total = sum(r[1] for r in raw)
    entries = tuple(BlendEntry(p, w / total, root, n) for p, w, root, n in raw)
    name = tree.get("name")
    return Blend(source=path, name=None if name is None else str(name), entries=entries)


def quantise_weights(weights: list[float], period: int = PERIOD) -> list[int]:
    """Integers >= 1 summing to ``period``, proportional to ``weights`` (largest remainders)."""
    if not weights or any(not w > 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    if period < len(weights):
        raise ValueError(f"period {period} is smaller than the number of datasets {len(weights)}")
    total = sum(weights)
    exact = [w / total * period for w in weights]
    q = [max(1, int(x)) for x in exact]
    order = sorted(range(len(q)), key=lambda d: (q[d] - exact[d], d))  # furthest below first
    i = 0
    while sum(q) < period:
        q[order[i % len(q)]] += 1
        i += 1
    order = sorted(range(len(q)), key=lambda d: (exact[d] - q[d], d))  # furthest above first
    i = 0
    while sum(q) > period:
        d = order[i % len(q)]
        if q[d] > 1:
            q[d] -= 1
        i += 1
    return q


def _period_table(q: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The greedy choice at each step of one period and the chosen dataset's count before it."""
    period = sum(q)
    counts = [0] * len(q)
    choice = np.empty(period, dtype=np.int32)
    before = np.empty(period, dtype=np.int64)
    for step in range(period):
        # Deficits scaled by ``period`` so the arithmetic is exact integers.
        best = max(range(len(q)), key=lambda d: (q[d] * (step + 1) - counts[d] * period, -d))
        choice[step] = best
        before[step] = counts[best]
        counts[best] += 1
    if counts != q:  # cannot happen (see module docstring); guards the periodicity argument
        raise AssertionError(f"blend schedule did not close its period: {counts} != {q}")
    return choice, before


class BlendSchedule:
    """``source_of(position) -> (dataset index, sample index)``, a pure function of
    (sizes, weights, seed, position)."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int, period: int = PERIOD,
                 in_order: list[bool] | None = None) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} dataset sizes but {len(weights)} weights")
        self.in_order = list(in_order) if in_order is not None else [False] * len(sizes)
        if len(self.in_order) != len(sizes):
            raise ValueError(f"{len(sizes)} dataset sizes but {len(self.in_order)} in_order flags")
        empty = [d for d, n in enumerate(sizes) if n < 1]
        if empty:
            raise ValueError(f"dataset(s) {empty} of the blend have no samples")
        self.sizes = list(sizes)
        self.seed = seed
        self.quota = quantise_weights(list(weights), period)
        self.period = period
        self._choice, self._before = _period_table(self.quota)
        self._perms: list[OrderedDict[int, np.ndarray]] = [OrderedDict() for _ in sizes]

    @property
    def weights(self) -> list[float]:
        """The weights actually realised (after rounding to 1/period)."""
        return [q / self.period for q in self.quota]

    def draw(self, position: int) -> tuple[int, int]:
        """(dataset, how many earlier positions went to that dataset)."""
        if position < 0:
            raise IndexError(f"position must be >= 0, got {position}")
        cycle, step = divmod(position, self.period)
        d = int(self._choice[step])
        return d, cycle * self.quota[d] + int(self._before[step])

    def source_of(self, position: int) -> tuple[int, int]:
        d, k = self.draw(position)
        epoch, offset = divmod(k, self.sizes[d])
        if self.in_order[d]:
            return d, offset
        return d, int(self._permutation(d, epoch)[offset])

    def counts(self, num_positions: int) -> list[int]:
        """How many of positions [0, num_positions) go to each dataset."""
        cycle, rest = divmod(num_positions, self.period)
        partial = np.bincount(self._choice[:rest], minlength=len(self.sizes))
        return [cycle * q + int(p) for q, p in zip(self.quota, partial)]

    def epochs(self, num_positions: int) -> list[float]:
        """Passes over each dataset that ``num_positions`` positions make."""
        return [c / n for c, n in zip(self.counts(num_positions), self.sizes)]

    def _permutation(self, dataset: int, epoch: int) -> np.ndarray:
        cache = self._perms[dataset]
        if epoch in cache:
            cache.move_to_end(epoch)
            return cache[epoch]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, dataset, epoch])))
        n = self.sizes[dataset]
        perm = rng.permutation(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64))
        cache[epoch] = perm
        if len(cache) > PERM_CACHE:
            cache.popitem(last=False)
        return perm
