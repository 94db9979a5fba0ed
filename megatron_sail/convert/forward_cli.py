"""``sail forward``: logits of a megatron_sail checkpoint for given inputs."""

from __future__ import annotations

import argparse
import sys

from megatron_sail.errors import UserError, report_error
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="sail forward",
        description="Run the Megatron model on input_ids [B, L] int64 and optional pixel_values "
                    "[tiles, 3, H, W] float32 (tiles in the order of the image blocks); writes "
                    "logits [B, L, V] float32.")
    p.add_argument("--ckpt", required=True,
                   help="a run's checkpoints/ directory (latest is used) or an iter_* directory")
    p.add_argument("--inputs", required=True,
                   help="safetensors file with input_ids and optionally pixel_values")
    p.add_argument("--out", required=True, help="safetensors file to write logits to")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--img-context-token-id", type=int, default=RELEASE_IMG_CONTEXT_ID)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision to run in (default fp32, whatever the checkpoint stores)")
    ns = p.parse_args(argv)
    from megatron_sail.convert.forward import run_forward
    from megatron_sail.utils.processes import exit_on_sigterm

    try:
        with exit_on_sigterm():
            r = run_forward(ns.ckpt, ns.inputs, ns.out, ns.tp, ns.pp, ns.img_context_token_id,
                            ns.dtype)
    except UserError as exc:  # conversion, checkpoint, config and output errors
        report_error("forward", str(exc))
        return 2
    except (KeyboardInterrupt, SystemExit) as exc:
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        print("sail forward: interrupted; no output was written", file=sys.stderr)
        return code
    print(f"wrote logits {list(r.shape)} to {r.logits}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
