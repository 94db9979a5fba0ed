"""Media filters: ``decodable`` (every image decodes in full, a video yields frames) and
``resolution`` (sides and aspect ratio read from the headers)."""

from __future__ import annotations

from megatron_sail.curation.items import Item
from megatron_sail.curation.stages.base import MapStage
from megatron_sail.data.media.errors import MediaError


def _size(item: Item, kind: str, ref: str) -> tuple[int, int]:
    data = item.read_media(ref)
    if kind == "image":
        from megatron_sail.data.media.images import probe_image

        return probe_image(data, item.media_name(ref))
    from megatron_sail.data.media.video import probe_video

    info = probe_video(data, item.media_name(ref))
    return info.width, info.height


def _media_failure(item: Item, stage: str, exc: MediaError) -> None:
    missing = "not found" in exc.reason or "no such member" in exc.reason
    item.dropped(stage, "missing_media" if missing else "undecodable", str(exc))


class Decodable(MapStage):
    def run(self, items: list[Item]) -> None:
        from megatron_sail.data.media.images import decode_image
        from megatron_sail.data.media.video import decode_video

        for item in items:
            try:
                for kind, ref in item.media_refs():
                    data, name = item.read_media(ref), item.media_name(ref)
                    if kind == "image":
                        decode_image(data, name)
                    else:
                        decode_video(data, name, num_frames=self.options.num_frames,
                                     backend="pyav")
            except MediaError as exc:
                _media_failure(item, self.name, exc)
            except Exception as exc:   # a decoder's own error on hostile bytes: still undecodable
                item.dropped(self.name, "undecodable", f"{item.where}: {type(exc).__name__}: {exc}")


class Resolution(MapStage):
    def run(self, items: list[Item]) -> None:
        opts = self.options
        for item in items:
            try:
                sizes = [_size(item, kind, ref) for kind, ref in item.media_refs()]
            except MediaError as exc:
                _media_failure(item, self.name, exc)
                continue
            if not sizes:
                continue
            short = min(min(w, h) for w, h in sizes)
            long = max(max(w, h) for w, h in sizes)
            aspect = max(max(w, h) / min(w, h) for w, h in sizes)
            item.scores.update(min_side=short, max_side=long, aspect=round(aspect, 4))
            if short < opts.min_side:
                item.dropped(self.name, "too_small", f"shortest side {short} < {opts.min_side}")
            elif opts.max_side is not None and long > opts.max_side:
                item.dropped(self.name, "too_large", f"longest side {long} > {opts.max_side}")
            elif opts.max_aspect is not None and aspect > opts.max_aspect:
                item.dropped(self.name, "extreme_aspect", f"aspect {aspect:.2f} > {opts.max_aspect:g}")
