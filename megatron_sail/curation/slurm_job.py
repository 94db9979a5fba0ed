"""``sail slurm curate``: a curation (``sail curate``) as one SLURM array job. Element ``i`` of
``--array N`` runs ``sail curate SPEC --out DIR --shard array`` (shard i of N, one task with the
requested GPUs for model judges); the elements share DIR and wait for each other at global
stages, so the array has no throttle. A crashed or cancelled array is continued by submitting
the same command again: finished chunks are kept in DIR."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from megatron_sail.errors import UserError
from megatron_sail.launch import slurmctl
from megatron_sail.launch.render import RunSpec, ScriptSpec, render_script
from megatron_sail.launch.submit import JobOptions, _refuse_if_active, default_job_name

SUBMISSION = "submission.json"


def curation_script(spec_path: str, out: str, array: int, workers: int,
                    opts: JobOptions) -> tuple[ScriptSpec, Path]:
    from megatron_sail.curation.load import load_spec

    if array < 1:
        raise UserError(f"--array must be >= 1, got {array}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    spec = load_spec(spec_path)            # a bad spec is refused before anything is queued
    out_dir = Path(out).absolute()
    request = dataclasses.replace(opts.request, nodes=1, ntasks_per_node=1)
    step = ("curate", str(spec.path), "--out", str(out_dir), "--shard", "array",
            "--workers", str(workers))
    script = ScriptSpec(command="slurm curate",
                        job_name=opts.job_name or default_job_name(f"curate-{out_dir.name}"),
                        request=request, site=opts.site, runs=[RunSpec(out_dir, 0)] * array,
                        workdir=Path.cwd(), log=str(out_dir / "slurm/logs/%x-%A_%a.out"),
                        python=opts.python, array=True, max_restarts=0, step_args=step)
    return script, out_dir


def submit_curation(spec_path: str, out: str, array: int, workers: int, opts: JobOptions) -> int:
    script, out_dir = curation_script(spec_path, out, array, workers, opts)
    text = render_script(script)
    if opts.dry_run:
        print(text, end="")
        return 0
    slurm_dir = out_dir / "slurm"
    _refuse_if_active(slurm_dir / SUBMISSION)
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    path = slurm_dir / "curate.sbatch"
    path.write_text(text)
    job_id, line = slurmctl.sbatch(str(path))
    (slurm_dir / SUBMISSION).write_text(json.dumps(
        {"job_id": job_id, "job_name": script.job_name, "array": array, "script": str(path),
         "spec": script.step_args[1], "out": str(out_dir)}, indent=1) + "\n")
    print(line)
    print(f"curation {out_dir}: {array} array elements as job {job_id}_[0-{array - 1}]; "
          f"logs in {slurm_dir / 'logs'}")
    return 0


def main(args: list[str]) -> int:
    """``sail slurm curate`` (routed here by ``sail``'s main: launch/ sits below curation)."""
    from megatron_sail.errors import UsageError
    from megatron_sail.launch.cli import job_options, job_parser

    parser = job_parser("sail slurm curate", "a curation (sail curate) as one array job")
    parser.add_argument("--out", required=True, help="the curation's output directory")
    parser.add_argument("--array", type=int, required=True,
                        help="array elements: shards of the curation, all running at once")
    parser.add_argument("--workers", type=int, default=1, help="local workers per element")
    ns = parser.parse_intermixed_args(args)
    if ns.overrides:
        raise UsageError(f"unexpected arguments {ns.overrides} (a curation takes no overrides)")
    if ns.gpus_per_node == 0 and ns.ntasks_per_node is None:
        ns.ntasks_per_node = 1      # one task per element; the resources are per element
    opts = job_options(ns)
    # Elements share nodes: no whole-node exclusivity or memory unless asked for.
    request = dataclasses.replace(opts.request, exclusive=False, mem=ns.mem)
    return submit_curation(ns.file, ns.out, ns.array, ns.workers,
                           dataclasses.replace(opts, request=request))
