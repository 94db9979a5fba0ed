"""``sail flops``: training FLOPs of one sample (forward + backward), by module."""

from __future__ import annotations

import argparse
import json

from megatron_sail.errors import check_option_ranges, report_error
from megatron_sail.costs.flops import PARTS, Conventions, sample_flops
from megatron_sail.costs.shapes import preset_names, shape_from_preset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sail flops",
        description="Training FLOPs (forward + backward) of one sample, by module.")
    p.add_argument("--preset", required=True, choices=preset_names())
    p.add_argument("--seq-length", type=int, default=8192,
                   help="all LLM tokens of the sample, the 256 per tile visual ones included")
    p.add_argument("--tiles", type=float, default=1,
                   help="448 px tiles per sample, the thumbnail included")
    p.add_argument("--freeze", default="", help="comma-separated parts that do not train: "
                                                "vision, adapter, llm")
    p.add_argument("--causal-attention", choices=("halved", "full"), default="halved",
                   help="count S^2/2 (halved, default) or S^2 causal attention scores")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _fmt(flops: float) -> str:
    return f"{flops / 1e12:12.3f}"


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    check_option_ranges(ns, positive=("seq_length", "tiles"))
    frozen = tuple(x for x in ns.freeze.split(",") if x)
    try:
        result = sample_flops(shape_from_preset(ns.preset), ns.seq_length, ns.tiles, frozen,
                              Conventions(causal_halved=ns.causal_attention == "halved"))
    except ValueError as exc:
        report_error("flops", str(exc))
        return 2
    if ns.json:
        print(json.dumps({"preset": ns.preset, **result.as_dict()}, indent=2))
        return 0
    print(f"{ns.preset}: one sample, {ns.seq_length} tokens ({result.visual_tokens:g} visual "
          f"from {ns.tiles:g} tiles), TFLOPs")
    print(f"{'module':10s} {'trains':>6s} {'forward':>12s} {'backward':>12s} {'total':>12s}")
    for name in PARTS:
        part = result.parts[name]
        print(f"{name:10s} {'yes' if part.trainable else 'no':>6s} {_fmt(part.forward)} "
              f"{_fmt(part.backward)} {_fmt(part.total)}")
    print(f"{'total':10s} {'':6s} {_fmt(result.forward)} "
          f"{_fmt(result.total - result.forward)} {_fmt(result.total)}")
    conventions = result.conventions.describe()
    print("conventions: " + "; ".join(f"{k}: {v}" for k, v in conventions.items()))
    return 0
