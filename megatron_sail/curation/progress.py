"""The console progress line of ``sail curate`` (the one progress line, ``utils.progress``):
records done, records/s and the time left, rewritten in place on a terminal and printed every
~10% otherwise; and the line a shard prints while it waits for the others."""

from __future__ import annotations

import sys

from megatron_sail.utils.progress import ProgressLine


class RecordProgress:
    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.tty = sys.stderr.isatty()
        self.line = ProgressLine(f"curate {label}", total, "records", rewrite=self.tty)
        self.done = 0
        self.shown_decile = -1

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.line.emit(text)

    def advance(self, records: int) -> None:
        self.done += records
        decile = 10 * self.done // max(self.total, 1)
        if not self.tty and decile == self.shown_decile:
            return
        self.shown_decile = decile
        self._print(self.line.line(self.done))

    def waiting(self, done_chunks: int, chunks: int, shards: list[int]) -> None:
        if done_chunks == getattr(self, "last_wait", None):
            return
        self.last_wait = done_chunks
        self._print(f"[curate {self.label}] waiting for shard(s) "
                    f"{', '.join(map(str, shards))} ({done_chunks}/{chunks} chunks done)")

    def finish(self) -> None:
        if self.tty and self.done and not self.quiet:
            print(file=sys.stderr, flush=True)
