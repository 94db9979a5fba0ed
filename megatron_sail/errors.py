"""The base class of every error a user must fix, and how such values are quoted in messages.

``sail`` turns a ``UserError`` into one ``sail <cmd>: error: <message>`` report and exit code 2,
never a traceback. Messages quote user values through ``shown`` so that a hostile or accidental
megabyte of input never floods a terminal or a log.
"""

from __future__ import annotations

import os
import sys
from typing import Any

SHOWN_CHARS = 200      # a quoted user value is cut to this many characters
MESSAGE_LINES = 60     # a report is cut to this many lines (lists of problems) ...
LINE_CHARS = 1000      # ... each of at most this many characters


class UserError(Exception):
    """Bad input: a file, key, option or value the user can fix; the message names it."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with an ellipsis and the full length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def bounded(message: str) -> str:
    """A report of at most MESSAGE_LINES lines of LINE_CHARS characters each."""
    lines = message.splitlines() or [""]
    out = [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + "..." for line in lines]
    if len(out) > MESSAGE_LINES:
        out = out[:MESSAGE_LINES] + [f"  ... and {len(out) - MESSAGE_LINES} more lines"]
    return "\n".join(out)


class UsageError(UserError, ValueError):
    """A command-line option or argument that cannot work."""


def check_option_ranges(ns: Any, positive: tuple[str, ...] = (),
                        non_negative: tuple[str, ...] = ()) -> None:
    """Every parsed ``--option`` named in ``positive`` must be > 0, in ``non_negative`` >= 0
    (None: not given); all violations in one UsageError."""
    problems = []
    for names, ok, bound in ((positive, lambda v: v > 0, "> 0"),
                             (non_negative, lambda v: v >= 0, ">= 0")):
        for name in names:
            value = getattr(ns, name)
            if value is not None and not ok(value):
                problems.append(f"--{name.replace('_', '-')} must be {bound}, got {shown(value)}")
    if problems:
        raise UsageError("; ".join(problems))


def is_first_rank() -> bool:
    """Rank 0 of a torchrun/srun/local launch, or a process that no launcher started."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def report_error(command: str, message: str) -> None:
    """``sail <command>: error: <message>`` on stderr. Every rank of a multi-process run meets
    the same bad input: rank 0 alone reports it."""
    if is_first_rank():
        print(f"sail {command}: error: {bounded(message)}", file=sys.stderr, flush=True)
