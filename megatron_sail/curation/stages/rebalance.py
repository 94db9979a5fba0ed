"""``rebalance``: resample the data set towards a target distribution, by dropping only (every
record stays in exactly one output file).

- ``by: FIELD`` (a dotted path into the record) or ``by: clusters`` (k-means over hashed
  bag-of-words vectors of the text, ``clusters`` groups): with ``target: uniform`` or a mapping
  of category weights, the largest subset whose category counts follow the target is kept
  (categories missing from a mapping get weight 0). Which records of an over-full category
  stay is decided by a seeded hash of each record's place, so it is random but repeatable.
- ``by: ngrams``: caption vocabulary rebalancing. The report rebalances the n-gram
  distribution of its captions; it does not publish the procedure, so this follows the
  balancing MetaCLIP made known: every word n-gram seen in more than ``max_per_ngram``
  captions is over-represented, and a caption is kept with probability
  ``max over its n-grams of min(1, max_per_ngram / count)`` - captions made only of frequent
  phrasing are thinned, any caption with a rare n-gram stays.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any, Optional

import numpy as np

from megatron_sail.curation.items import Item
from megatron_sail.curation.stages.base import GlobalStage, text_of, words

MISSING = "(missing)"
_DIM = 1 << 12


def unit_random(seed: int, index: int) -> float:
    """A repeatable number in [0, 1) for one record."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def field_value(record: Any, path: str) -> str:
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value if isinstance(value, str) else str(value)


def quotas(counts: dict[str, int], target: Any) -> dict[str, int]:
    """Per category, how many to keep: the largest total ``T`` with ``T * share <= count``
    for every category, then ``floor(T * share)`` each."""
    if target == "uniform":
        weights = {c: 1.0 for c in counts}
    else:
        weights = {c: float(target.get(c, 0.0)) for c in counts}
    total_w = sum(weights.values())
    if total_w == 0:
        return {c: 0 for c in counts}
    shares = {c: w / total_w for c, w in weights.items()}
    total = min(counts[c] / s for c, s in shares.items() if s > 0)
    return {c: math.floor(total * s + 1e-9) for c, s in shares.items()}


def _vector(text: str) -> np.ndarray:
    v = np.zeros(_DIM)
    for w in words(text):
        v[int.from_bytes(hashlib.md5(w.encode()).digest()[:4], "big") % _DIM] += 1.0
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 25) -> np.ndarray:
    """Cluster labels; k-means++ start from a seeded generator (repeatable)."""
    k = min(k, len(x))
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centers], axis=0)
        centers.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centers)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iters):
        # |x - c|^2 up to the per-row constant |x|^2: no [n, k, dim] temporary
        labels = ((c ** 2).sum(1)[None, :] - 2 * x @ c.T).argmin(1)
        new = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return labels


class Rebalance(GlobalStage):
    def decide(self, items: list[Item]) -> Optional[dict]:
        if not items:
            return None
        opts = self.options
        if opts.by == "ngrams":
            return self._ngrams(items)
        if opts.by == "clusters":
            labels = kmeans(np.stack([_vector(text_of(it.record, opts.text)) for it in items]),
                            opts.clusters, opts.seed)
            cats = [f"cluster-{int(label)}" for label in labels]
        else:
            cats = [field_value(it.record, opts.by) for it in items]
        counts = Counter(cats)
        keep = quotas(dict(counts), opts.target)
        by_cat: dict[str, list[Item]] = {}
        for item, cat in zip(items, cats):
            item.scores["category"] = cat
            by_cat.setdefault(cat, []).append(item)
        for cat, members in by_cat.items():
            ranked = sorted(members, key=lambda it: unit_random(opts.seed, it.i))
            for item in ranked[keep[cat]:]:
                item.dropped(self.name, "rebalanced", f"category {cat} over its target share")
        after = Counter(c for it, c in zip(items, cats) if it.alive)
        return {"title": f"{self.name} by {opts.by}", "before": dict(counts),
                "after": {c: after.get(c, 0) for c in counts}}

    def _ngrams(self, items: list[Item]) -> dict:
        opts = self.options
        grams = []
        for item in items:
            tokens = words(text_of(item.record, opts.text))
            grams.append({" ".join(tokens[k:k + opts.n]) for k in range(len(tokens) - opts.n + 1)})
        counts = Counter(g for gs in grams for g in gs)
        t = opts.max_per_ngram
        for item, gs in zip(items, grams):
            p = max((min(1.0, t / counts[g]) for g in gs), default=1.0)
            item.scores["ngram_keep_probability"] = round(p, 6)
            if unit_random(opts.seed, item.i) >= p:
                item.dropped(self.name, "ngram_rebalanced", "made of over-represented n-grams")
        after = Counter(g for item, gs in zip(items, grams) if item.alive for g in gs)
        top = [g for g, _ in counts.most_common(20)]
        return {"title": f"{self.name}: top {opts.n}-grams (captions containing each)",
                "before": {g: counts[g] for g in top}, "after": {g: after.get(g, 0) for g in top}}
