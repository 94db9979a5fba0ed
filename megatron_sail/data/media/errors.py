"""The one exception type every media probe/decode failure is reported with."""

from __future__ import annotations


class MediaError(ValueError):
    """A media file could not be read, probed or decoded.

    ``source`` names the file (path or shard member) so a data-loading error points at the bad
    sample; ``reason`` says what was wrong with it.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):  # keep both fields when raised in a worker process and pickled back
        return (type(self), (self.source, self.reason))


def describe(exc: BaseException) -> str:
    """``ExcType: message`` of an underlying library error, for a MediaError's reason."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
