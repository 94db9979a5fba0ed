"""``sail soup``: the weighted average of homologous checkpoints as a new checkpoint."""

from __future__ import annotations

import argparse
import sys
import time

from megatron_sail.checkpointing.layout_files import CheckpointError
from megatron_sail.errors import UserError, report_error


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other refusal
        report_error("soup", message)
        sys.exit(2)


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise CheckpointError(f"--weights {text!r}: expected comma-separated numbers") from None


def main(argv: list[str]) -> int:
    p = _Parser(prog="sail soup", description="Average the model weights of homologous "
                "checkpoints (same architecture, same parent checkpoint) into a new checkpoint.")
    p.add_argument("ckpts", nargs="+", metavar="CKPT",
                   help="a run's checkpoints/ directory (latest is used) or an iter_* directory")
    p.add_argument("--out", required=True, help="new checkpoint directory")
    p.add_argument("--weights", help="w1,w2,...: one per checkpoint, >= 0, normalised to sum "
                   "to 1 (default: equal)")
    p.add_argument("--force", action="store_true", help="soup checkpoints of different parents "
                   "(never checkpoints of different architectures)")
    ns = p.parse_args(argv)
    from megatron_sail.convert.soup import soup_checkpoints
    from megatron_sail.utils.processes import exit_on_sigterm

    start = time.perf_counter()
    try:
        with exit_on_sigterm():
            out = soup_checkpoints(ns.ckpts, ns.out, _weights(ns.weights), ns.force,
                                   progress=True)
    except UserError as exc:  # checkpoint, config and output errors
        report_error("soup", str(exc))
        return 2
    except (KeyboardInterrupt, SystemExit) as exc:
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        print("sail soup: interrupted; no output was written", file=sys.stderr)
        return code
    print(f"wrote {out} (soup of {len(ns.ckpts)} checkpoints) in {time.perf_counter() - start:.1f} s;"
          f" start from it with checkpoint.load={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
