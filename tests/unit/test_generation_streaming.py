"""The streamed answer prints each character once, whole, as soon as its last token arrives,
and ends up equal to decoding all the tokens at once."""

from __future__ import annotations

import io

from megatron_sail.generation.streaming import TextStream


class ByteTokenizer:
    """Token i is byte i (a byte-level vocabulary): multi-byte characters span tokens."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_characters_print_whole():
    text = "a 日本 😀!"
    ids = list(text.encode("utf-8"))
    out = io.StringIO()
    stream = TextStream(ByteTokenizer(), eos=(), out=out)
    seen = []
    for token in ids:
        stream.add(token)
        seen.append(out.getvalue())
    stream.finish()
    assert out.getvalue() == text + "\n"
    assert all("\ufffd" not in s for s in seen)
    # after the three bytes of 日 arrive (not before) the character shows
    first = ids.index(text.encode()[2])
    assert seen[first] == "a " and seen[first + 1] == "a " and seen[first + 2] == "a 日"


def test_end_token_and_finished_rows_are_not_shown():
    out = io.StringIO()
    stream = TextStream(ByteTokenizer(), eos=(0,), out=out)
    for token in [104, 105, 0, 33, None]:
        stream.add(token)
    stream.finish()
    assert out.getvalue() == "hi\n"


def test_incomplete_character_at_the_end_shows_as_decoding_does():
    out = io.StringIO()
    stream = TextStream(ByteTokenizer(), eos=(), out=out)
    for token in list("é".encode())[:1]:
        stream.add(token)
    assert out.getvalue() == ""
    stream.finish()
    assert out.getvalue() == "\ufffd\n"
