"""``sail recipe run | show | status | submit``: parse and dispatch; the work is beside."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from megatron_sail.errors import UsageError, UserError, report_error

USAGE = """sail recipe run RECIPE.yaml --out ROOT [--until STAGE | --only STAGE] [--nproc-per-node N] [key=value ...]
sail recipe show RECIPE.yaml [key=value ...]
sail recipe status ROOT
sail recipe submit RECIPE.yaml --out ROOT [--until STAGE] [key=value ...] + the sail slurm submit options"""


def _usage_error(message: str):
    raise UsageError(message)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one error line and exit 2."""

    def error(self, message: str):
        _usage_error(message)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"needs a positive integer, got {text!r}")
    return int(text)


def _load(recipe_path: str, root: Path, overrides: list[str], world: int | None,
          gpus: bool = False):
    from megatron_sail.recipe.plan import plan_recipe
    from megatron_sail.recipe.schema import load_recipe

    recipe = load_recipe(recipe_path)
    return recipe, plan_recipe(recipe, root, world, overrides, gpus)


def cmd_run(args: list[str]) -> int:
    from megatron_sail.recipe.plan import select, stage_finished
    from megatron_sail.recipe.report import write_root_record
    from megatron_sail.recipe.runner import check_start, run_stages

    parser = _Parser(prog="sail recipe run", description="run a recipe's stages in order")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for every stage")
    parser.add_argument("--out", required=True, help="root: stage NN-STAGE runs in ROOT/NN-STAGE")
    parser.add_argument("--until", help="stop after this stage")
    parser.add_argument("--only", help="run this stage alone (its predecessors must be done)")
    parser.add_argument("--nproc-per-node", type=_positive, default=1)
    ns = parser.parse_intermixed_args(args)
    root = Path(ns.out).absolute()
    recipe, plans = _load(ns.recipe, root, ns.overrides, ns.nproc_per_node)
    selected = select(recipe, plans, ns.until, ns.only)
    first = selected[0] if selected else None
    if first is not None and not stage_finished(first):
        check_start(first)  # before anything is written
    write_root_record(root, recipe.path, ns.overrides)
    return run_stages(plans, selected, ns.nproc_per_node)


def cmd_show(args: list[str]) -> int:
    from megatron_sail.recipe.report import show

    parser = _Parser(prog="sail recipe show", description="print a recipe's chain as a table")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    ns = parser.parse_intermixed_args(args)
    _, plans = _load(ns.recipe, Path("ROOT"), ns.overrides, None)  # display: no file checks
    print(show(plans))
    return 0


def cmd_status(args: list[str]) -> int:
    from megatron_sail.recipe.report import ROOT_RECORD, read_root_record, status
    from megatron_sail.recipe.schema import RecipeError

    parser = _Parser(prog="sail recipe status", description="where each stage of a root is")
    parser.add_argument("root")
    ns = parser.parse_args(args)
    root = Path(ns.root).absolute()
    record = read_root_record(root)
    if record is None:
        raise RecipeError(f"{root}: no {ROOT_RECORD}; not made by sail recipe run or submit")
    recipe, plans = _load(record["recipe"], root, record.get("overrides", []), None)
    print(f"recipe {recipe.path}\nroot   {root}")
    print(status(plans))
    return 0


def cmd_submit(args: list[str]) -> int:
    from megatron_sail.launch.cli import job_options, job_parser
    from megatron_sail.recipe.submit import submit_recipe

    parser = job_parser("sail recipe submit", "a recipe's stages as chained jobs")
    parser.error = _usage_error  # sail slurm's parser, with one-line errors
    parser.add_argument("--out", required=True)
    parser.add_argument("--until")
    ns = parser.parse_intermixed_args(args)
    opts = job_options(ns)
    return submit_recipe(ns.file, Path(ns.out).absolute(), ns.overrides, ns.until, opts)


COMMANDS = {"run": cmd_run, "show": cmd_show, "status": cmd_status, "submit": cmd_submit}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"sail recipe: error: unknown command {argv[0]!r}\nusage: {USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[recipe] %(message)s", stream=sys.stdout)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as exc:
        for line in str(exc).splitlines() or [""]:  # several problems: one line each
            report_error(f"recipe {argv[0]}", line)
        return 2
