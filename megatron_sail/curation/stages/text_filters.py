"""Text filters: ``caption_length`` (word count) and ``ngram_repetition`` (the share of word
n-gram occurrences that repeat an earlier n-gram of the same text, as in Gopher's quality
rules: a caption looping "a red car a red car a red car" scores high)."""

from __future__ import annotations

from collections import Counter

from megatron_sail.curation.items import Item
from megatron_sail.curation.stages.base import MapStage, text_of, words


def repeat_fraction(tokens: list[str], n: int) -> float:
    """Occurrences of n-grams beyond their first, over all n-gram occurrences (0 when the
    text has fewer than n words)."""
    grams = [tuple(tokens[k:k + n]) for k in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    repeats = sum(c - 1 for c in Counter(grams).values())
    return repeats / len(grams)


class CaptionLength(MapStage):
    def run(self, items: list[Item]) -> None:
        opts = self.options
        for item in items:
            count = len(words(text_of(item.record, opts.text)))
            item.scores["words"] = count
            if count < opts.min_words:
                item.dropped(self.name, "too_short", f"{count} words < {opts.min_words}")
            elif opts.max_words is not None and count > opts.max_words:
                item.dropped(self.name, "too_long", f"{count} words > {opts.max_words}")


class NgramRepetition(MapStage):
    def run(self, items: list[Item]) -> None:
        opts = self.options
        for item in items:
            fraction = repeat_fraction(words(text_of(item.record, opts.text)), opts.n)
            item.scores["repeat_fraction"] = round(fraction, 4)
            if fraction > opts.max_repeat_fraction:
                item.dropped(self.name, "repeated_ngrams",
                             f"{fraction:.2f} of {opts.n}-grams repeat > {opts.max_repeat_fraction:g}")
