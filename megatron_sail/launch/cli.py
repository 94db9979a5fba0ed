"""``sail slurm submit | sweep | status``: parse and dispatch; the work is in the modules beside."""

from __future__ import annotations

import argparse
import sys

USAGE = """sail slurm submit CONFIG.yaml [key=value ...] --gpus-per-node G [--nodes N] [--ntasks-per-node K]
                 [--partition P] [--time T] [--account A] [--dry-run] [more: --help]
sail slurm sweep SWEEP.yaml [key=value ...] --gpus-per-node G [...the same options]
sail slurm status RUN_DIR|SWEEP_DIR [--json]
sail slurm curate SPEC.yaml --out DIR --array N --gpus-per-node G [--workers W] [...the same options]"""


def job_parser(prog: str, what: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"render and sbatch {what}")
    parser.add_argument("file", help="config YAML" if prog.endswith("submit") else "sweep YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, as for sail train")
    job = parser.add_argument_group("resources")
    job.add_argument("--nodes", type=int, default=1)
    job.add_argument("--gpus-per-node", type=int, required=True,
                     help="0 for a CPU job (then --ntasks-per-node is needed)")
    job.add_argument("--ntasks-per-node", type=int, default=None,
                     help="ranks per node (default: one per GPU)")
    job.add_argument("--partition")
    job.add_argument("--time", help="time limit, e.g. 4:00:00 or 2-00:00:00")
    job.add_argument("--account")
    job.add_argument("--cpus-per-task", type=int, default=None,
                     help="CPU job default: none requested; GPU job: the site profile's")
    job.add_argument("--mem", default=None, help="per-node memory, e.g. 200G (GPU job default: "
                     "the site profile's)")
    run = parser.add_argument_group("job")
    run.add_argument("--job-name")
    run.add_argument("--max-restarts", type=int, default=None,
                     help="requeues after the time-limit warning (default: the site profile's)")
    run.add_argument("--site", default=None,
                     help="site profile merged over slurm/site.yaml (or $SAIL_SLURM_SITE)")
    run.add_argument("--container-image", default=None,
                     help="run in this pyxis/enroot image instead of the current Python env")
    run.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    if prog.endswith("submit"):
        run.add_argument("--rl", action="store_true",
                         help="an RL run: the job runs `sail rl` on the config")
    return parser


def job_options(ns: argparse.Namespace):
    import dataclasses

    from megatron_sail.launch.resources import RequestError, make_request, slurm_value
    from megatron_sail.launch.site import load_site
    from megatron_sail.launch.submit import JobOptions

    site = load_site(ns.site)
    if ns.container_image:
        site = dataclasses.replace(site, container=dataclasses.replace(
            site.container, image=ns.container_image))
    if ns.max_restarts is not None and ns.max_restarts < 0:
        raise RequestError(f"--max-restarts must be >= 0, got {ns.max_restarts}")
    request = make_request(ns.nodes, ns.gpus_per_node, ns.ntasks_per_node, site,
                           partition=ns.partition, time=ns.time, account=ns.account,
                           cpus_per_task=ns.cpus_per_task, mem=ns.mem)
    return JobOptions(request=request, site=site, job_name=slurm_value("--job-name", ns.job_name),
                      max_restarts=ns.max_restarts, dry_run=ns.dry_run,
                      entry="rl" if getattr(ns, "rl", False) else "train")


def cmd_submit(args: list[str], check=None) -> int:
    """``check``: more checks of the resolved config before anything is queued (an RL run's,
    passed by ``sail``'s main)."""
    import dataclasses

    from megatron_sail.launch.submit import submit_run

    ns = job_parser("sail slurm submit", "one training job").parse_intermixed_args(args)
    return submit_run(ns.file, ns.overrides, dataclasses.replace(job_options(ns), check=check))


def cmd_sweep(args: list[str]) -> int:
    from megatron_sail.launch.submit import submit_sweep
    from megatron_sail.launch.sweep import load_sweep

    ns = job_parser("sail slurm sweep", "a sweep as one array job").parse_intermixed_args(args)
    return submit_sweep(load_sweep(ns.file), ns.overrides, job_options(ns))


def cmd_status(args: list[str]) -> int:
    from megatron_sail.launch.status import status

    parser = argparse.ArgumentParser(prog="sail slurm status",
                                     description="job state, progress and restarts of a run")
    parser.add_argument("run_dir", help="a run directory, or a sweep's root")
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args(args)
    print(status(ns.run_dir, as_json=ns.json))
    return 0


COMMANDS = {"submit": cmd_submit, "sweep": cmd_sweep, "status": cmd_status}


def main(argv: list[str]) -> int:
    from megatron_sail.errors import UserError, report_error

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"sail slurm: unknown command {argv[0]!r}\nusage: {USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (UserError, FileNotFoundError) as exc:
        report_error(f"slurm {argv[0]}", str(exc))
        return 2
