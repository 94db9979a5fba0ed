"""Printing an answer as its tokens arrive. Tokens are not characters: a multi-byte character
(CJK, emoji) can span several byte-level tokens, and each alone decodes to U+FFFD. So the
whole answer so far is decoded after every token and only the text that became final is
printed: nothing while the decoded text ends in an incomplete character."""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Optional, TextIO

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer, eos: Collection[int], out: Optional[TextIO] = None):
        self.tokenizer, self.eos = tokenizer, set(eos)
        self.out = out if out is not None else sys.stdout
        self.ids: list[int] = []
        self.printed = ""
        self.ended = False

    def add(self, token: Optional[int]) -> None:
        """The row's next token (None once it has finished); the end token is not shown."""
        if token is None or self.ended:
            return
        if token in self.eos:
            self.ended = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith(REPLACEMENT):
            self._show(text)

    def finish(self) -> None:
        """Whatever is left (an incomplete character shows as U+FFFD, as decoding does) and
        the line end."""
        self._show(self.tokenizer.decode(self.ids))
        self.out.write("\n")
        self.out.flush()

    def _show(self, text: str) -> None:
        # Decoding is prefix-stable for the tokenizers used here; should a tokenizer rewrite
        # earlier text, only what follows the common prefix can still be printed.
        common = 0
        for a, b in zip(self.printed, text):
            if a != b:
                break
            common += 1
        piece = text[common:]
        if piece:
            self.out.write(piece)
            self.out.flush()
        self.printed = text
