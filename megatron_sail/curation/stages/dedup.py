"""``dedup``: exact media duplicates (SHA-256 of the bytes), near-duplicate images (perceptual
hash within ``max_distance`` bits: re-encoded or resized copies) and duplicate text (exact, or
normalised: Unicode NFKC, case, punctuation and spacing ignored).

Hashes are computed per chunk; the decision runs over the whole data set in input order, so
the first of a group stays and every later record is the duplicate, whichever worker hashed
it. A record is compared with the records kept so far."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from typing import Optional

from megatron_sail.curation.items import Item
from megatron_sail.curation.phash import bands, distance, phash
from megatron_sail.curation.stages.base import GlobalStage, text_of
from megatron_sail.data.media.errors import MediaError


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


class Dedup(GlobalStage):
    def features(self, items: list[Item]) -> None:
        opts = self.options
        for item in items:
            feats: dict = {}
            try:
                for kind, ref in item.media_refs():
                    data = item.read_media(ref)
                    if kind == "image" and opts.images != "none":
                        feats.setdefault("image_sha", []).append(hashlib.sha256(data).hexdigest())
                        if opts.images == "perceptual":
                            feats.setdefault("image_phash", []).append(phash(data))
                    elif kind == "video" and opts.videos != "none":
                        feats["video_sha"] = hashlib.sha256(data).hexdigest()
            except MediaError as exc:
                item.dropped(self.name, "missing_media", str(exc))
                continue
            except Exception as exc:   # Pillow on bytes that do not decode
                item.dropped(self.name, "undecodable", f"{item.where}: {type(exc).__name__}: {exc}")
                continue
            if opts.text != "none":
                text = text_of(item.record, "all")
                key = normalize_text(text) if opts.text == "normalized" else text
                feats["text_sha"] = hashlib.sha256(key.encode("utf-8")).hexdigest()
            item.features = feats

    def decide(self, items: list[Item]) -> Optional[dict]:
        seen: dict[tuple, Item] = {}                     # exact keys of kept records
        band_index: dict[tuple, list[Item]] = defaultdict(list)
        nbands = self.options.max_distance + 1
        for item in items:
            f = item.features
            exact = [("image", tuple(f["image_sha"])) if f.get("image_sha") else None,
                     ("video", f["video_sha"]) if f.get("video_sha") else None,
                     ("text", f["text_sha"]) if f.get("text_sha") else None]
            reasons = {"image": "duplicate_image", "video": "duplicate_video",
                       "text": "duplicate_text"}
            hit = next(((key, seen[key]) for key in exact if key is not None and key in seen), None)
            if hit:
                self._mark(item, reasons[hit[0][0]], hit[1])
                continue
            near = self._near(item, band_index, nbands) if f.get("image_phash") else None
            if near is not None:
                self._mark(item, "near_duplicate_image", near)
                continue
            for key in exact:
                if key is not None:
                    seen.setdefault(key, item)
            if f.get("image_phash"):
                for band in bands(f["image_phash"][0], nbands):
                    band_index[band].append(item)
        return None

    def _near(self, item: Item, band_index: dict, nbands: int) -> Optional[Item]:
        hashes = item.features["image_phash"]
        limit = self.options.max_distance
        candidates = {}
        for band in bands(hashes[0], nbands):
            for other in band_index.get(band, ()):
                candidates[other.i] = other
        for i in sorted(candidates):
            other_hashes = candidates[i].features["image_phash"]
            if len(other_hashes) == len(hashes) and all(
                    distance(a, b) <= limit for a, b in zip(hashes, other_hashes)):
                return candidates[i]
        return None

    def _mark(self, item: Item, reason: str, original: Item) -> None:
        item.dropped(self.name, reason, f"duplicate of {original.where}")
        item.extra["duplicate_of"] = original.where
