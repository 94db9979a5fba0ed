"""``sail convert {import-hf, export-hf, init-from, verify}``: parses, calls, reports."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from megatron_sail.errors import UserError, report_error
from megatron_sail.utils.logs import get_logger

GiB = 2**30


def _layout_args(cmd: argparse.ArgumentParser, ep: bool = True) -> None:
    cmd.add_argument("--tp", type=int, default=1, help="tensor parallel size (default 1)")
    cmd.add_argument("--pp", type=int, default=1, help="pipeline parallel size (default 1)")
    if ep:
        cmd.add_argument("--ep", type=int, default=1,
                         help="expert parallel size (Qwen3-MoE only; default 1)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sail convert", description="SAIL-VL2 Hugging Face release <-> Megatron checkpoints")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    imp = sub.add_parser("import-hf", help="release layout -> Megatron checkpoint, written and "
                         "reloaded at --tp/--pp/--ep")
    imp.add_argument("--hf", required=True, help="release directory (config.json + safetensors)")
    imp.add_argument("--out", required=True, help="new checkpoint directory")
    _layout_args(imp)
    imp.add_argument("--dtype", choices=("bf16", "fp32"), help="default: the stored dtype")

    exp = sub.add_parser("export-hf", help="Megatron checkpoint -> release layout")
    exp.add_argument("--ckpt", required=True,
                     help="a run's checkpoints/ directory (latest is used) or an iter_* directory")
    exp.add_argument("--out", required=True, help="new output directory")
    exp.add_argument("--reference", help="release directory whose code, tokenizer and processor "
                     "files to add (auto_map is kept)")
    exp.add_argument("--max-shard-size", default="5GB", help="per safetensors file (default 5GB)")

    ini = sub.add_parser("init-from", help="AIMv2 ViT + Qwen3 or Qwen3-MoE LLM -> SAIL-VL2 "
                         "checkpoint with a fresh adapter")
    ini.add_argument("--vision", required=True, help="transformers Aimv2VisionModel directory")
    ini.add_argument("--llm", required=True,
                     help="transformers Qwen3ForCausalLM or Qwen3MoeForCausalLM directory")
    ini.add_argument("--out", required=True, help="new checkpoint directory")
    _layout_args(ini)
    ini.add_argument("--dtype", choices=("bf16", "fp32"), help="default: the stored dtype")
    ini.add_argument("--seed", type=int, default=1234, help="adapter initialisation seed")
    ini.add_argument("--init-std", type=float, default=0.02, help="adapter initialisation std")

    ver = sub.add_parser("verify", help="HF reference vs Megatron checkpoint logits")
    ver.add_argument("--hf", required=True, help="release-layout directory")
    ver.add_argument("--ckpt", required=True, help="Megatron checkpoint")
    _layout_args(ver, ep=False)
    ver.add_argument("--seed", type=int, default=0, help="seed of the random images and tokens")
    ver.add_argument("--atol", type=float, default=1e-4,
                     help="allowed max abs logit difference is atol + rtol * max |logit|")
    ver.add_argument("--rtol", type=float, default=1e-5)
    ver.add_argument("--img-context-token-id", type=int, help="default: the checkpoint's")
    return p


def _yaml(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_overrides(model) -> list[str]:
    """``sail train`` overrides that give this architecture (``checkpoint.load`` checks it)
    and the MoE settings the Hugging Face config carried."""
    from megatron_sail.config.presets import PRESETS
    from megatron_sail.config.schema import MoEConfig

    if model.preset in PRESETS:
        out = [f"model.preset={model.preset}"]
    else:
        base = "tiny-moe" if model.llm.is_moe else "tiny"
        out = [f"model.preset={base}"]
        for part in ("vision", "adapter", "llm"):
            ours = dataclasses.asdict(getattr(model, part))
            preset = dataclasses.asdict(getattr(PRESETS[base], part))
            out += [f"model.{part}.{k}={_yaml(v)}" for k, v in ours.items() if preset.get(k) != v]
    if model.llm.is_moe and model.moe.aux_loss_coeff != MoEConfig().aux_loss_coeff:
        out.append(f"model.moe.aux_loss_coeff={model.moe.aux_loss_coeff}")
    return out


def _write(ns) -> int:
    from megatron_sail.convert.importer import write_checkpoint, write_world_size
    from megatron_sail.convert.procs import Ranks

    # the rank processes start up while this one reads and checks the sources
    with Ranks(write_world_size(ns.tp, ns.pp, ns.ep)) as ranks:
        if ns.command == "import-hf":
            from megatron_sail.convert.sources import open_release

            opened = open_release(ns.hf, ns.dtype)
            origin = {"kind": "release", "dir": ns.hf}
        else:
            from megatron_sail.convert.sources import open_init_from

            opened = open_init_from(ns.vision, ns.llm, ns.dtype, ns.seed, ns.init_std)
            origin = {"kind": "init_from", "vision": ns.vision, "llm": ns.llm}
        for note in opened.notes:
            get_logger("megatron_sail.convert").info(f"note: {note}")
        report = write_checkpoint(opened, ns.out, ns.tp, ns.pp, ns.ep, origin, ranks=ranks)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items())
    layout = f"TP {ns.tp} x PP {ns.pp}" + (f" x EP {ns.ep}" if ns.ep > 1 else "")
    print(f"wrote {report.out} ({report.config.train.precision}, {layout}) in "
          f"{report.seconds:.1f} s ({phases}); reloaded at that layout: all {report.parameters} "
          f"parameter shards bit-exact; peak memory {report.peak_rss / GiB:.2f} GiB summed over "
          f"{report.processes} rank process(es)")
    print(f"fine-tune from it: sail train CONFIG.yaml checkpoint.load={report.out} "
          + " ".join(train_overrides(report.config.model)))
    return 0


def _export(ns) -> int:
    import resource

    from megatron_sail.convert.exporter import export_checkpoint

    r = export_checkpoint(ns.ckpt, ns.out, ns.reference, ns.max_shard_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"wrote {r.out} from {r.source}: {r.tensors} tensors, {r.bytes / GiB:.2f} GiB in "
          f"{r.seconds:.1f} s; peak memory {peak / GiB:.2f} GiB (1 process)")
    return 0


def _verify(ns) -> int:
    from megatron_sail.convert.verify import verify

    r = verify(ns.hf, ns.ckpt, ns.tp, ns.pp, ns.seed, ns.atol, ns.rtol, ns.img_context_token_id)
    print(f"logits {list(r.shape)}: max abs diff {r.max_abs_diff:.3e} (allowed "
          f"{r.tolerance:.3e}, max |logit| {r.max_abs_logit:.2f}), cosine similarity "
          f"{r.cosine:.8f}")
    print("verify: OK" if r.ok else "verify: MISMATCH")
    return 0 if r.ok else 1


def _run(ns) -> int:
    if ns.command in ("import-hf", "init-from"):
        return _write(ns)
    return _export(ns) if ns.command == "export-hf" else _verify(ns)


def main(argv: list[str]) -> int:
    from megatron_sail.utils.processes import exit_on_sigterm

    ns = _parser().parse_args(argv)
    try:
        with exit_on_sigterm():
            return _run(ns)
    except UserError as exc:  # conversion, checkpoint, config and output errors
        report_error(f"convert {ns.command}", str(exc))
        return 2
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM via exit_on_sigterm
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        print(f"sail convert {ns.command}: interrupted; no output was written", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
