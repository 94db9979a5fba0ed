"""``sail data check|prepare``: argument parsing and printing; the work is in ``check``."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys

from megatron_sail.data.media.backends import BACKEND_CHOICES, require_backend
from megatron_sail.errors import UserError

USAGE = """sail data check PATH... [--tokenizer PATH --seq-length N] [options]
    PATH: a JSONL file, a shard directory or a blend YAML. Reports every problem as
    file:line: kind: reason and exits 1 if there is any.
sail data prepare JSONL... --out DIR [--shard-size 1GB] [--tokenizer PATH --seq-length N] [options]
    Writes the usable samples as tar shards + index.json; skipped samples are reported.
options: --root DIR (media of JSONL inputs) --image-size 448 --max-tiles 12 --min-tiles 1
    --no-thumbnail --num-frames 16 --video-backend auto --workers N"""

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``1073741824``, ``512MB``, ``1GiB``, ``1.5GB``."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GB, 512MiB, 1000000)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"sail data {command}", usage=USAGE)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--tokenizer", help="HF tokenizer directory or SentencePiece .model")
    parser.add_argument("--seq-length", type=_positive)
    parser.add_argument("--root", help="where relative media paths of JSONL inputs resolve")
    parser.add_argument("--image-size", type=_positive, default=448)
    parser.add_argument("--max-tiles", type=_positive, default=12)
    parser.add_argument("--min-tiles", type=_positive, default=1)
    parser.add_argument("--no-thumbnail", action="store_true")
    parser.add_argument("--num-frames", type=_positive, default=16)
    parser.add_argument("--video-backend", default="auto", choices=BACKEND_CHOICES)
    parser.add_argument("--workers", type=_positive, default=min(8, os.cpu_count() or 1))
    if command == "prepare":
        parser.add_argument("--out", required=True)
        parser.add_argument("--shard-size", type=parse_size, default="1GiB")
    return parser


def _settings(ns):
    from megatron_sail.data.check import Settings

    if ns.seq_length is not None and ns.tokenizer is None:
        raise ValueError("--seq-length needs --tokenizer (lengths are counted in tokens)")
    if ns.video_backend != "auto":  # once, here, not in a worker for every video
        require_backend(ns.video_backend, "--video-backend")
    return Settings(image_size=ns.image_size, min_tiles=ns.min_tiles, max_tiles=ns.max_tiles,
                    use_thumbnail=not ns.no_thumbnail, num_frames=ns.num_frames, tokenizer=ns.tokenizer,
                    seq_length=ns.seq_length, video_backend=ns.video_backend)


def cmd_check(args: list[str]) -> int:
    from megatron_sail.data.check import check

    ns = _parser("check").parse_args(args)
    try:
        report = check(ns.paths, _settings(ns), ns.root, ns.workers, on_problem=print)
    except (ValueError, OSError, UserError) as exc:  # inputs, tokenizer, output, backend
        print(f"sail data check: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.problems else 0


def cmd_prepare(args: list[str]) -> int:
    from megatron_sail.data.check import prepare

    ns = _parser("prepare").parse_args(args)
    try:
        report, index = prepare(ns.paths, ns.out, _settings(ns), ns.shard_size, ns.root, ns.workers,
                                on_problem=lambda p: print(f"skipped {p}"))
    except (ValueError, OSError, UserError) as exc:  # inputs, tokenizer, output, backend
        print(f"sail data prepare: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {len(index)} samples in {len(index.shards)} shard(s) to {ns.out}")
    return 0


COMMANDS = {"check": cmd_check, "prepare": cmd_prepare}
_STOPPED = {"check": "", "prepare": "; no output was written"}


def main(args: list[str]) -> int:
    from megatron_sail.utils.processes import exit_on_sigterm

    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        with exit_on_sigterm():  # SIGTERM unwinds like Ctrl-C: workers stopped, temp files removed
            return COMMANDS[args[0]](args[1:])
    except KeyboardInterrupt:
        print(f"sail data {args[0]}: interrupted{_STOPPED[args[0]]}", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0; SIGTERM 143
        if exc.code == 128 + signal.SIGTERM:
            print(f"sail data {args[0]}: terminated{_STOPPED[args[0]]}", file=sys.stderr)
        return int(exc.code or 0)
