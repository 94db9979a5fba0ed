"""Render the batch script from ``slurm/sbatch.sh.tmpl``: the template holds the shell logic,
this module only the values (#SBATCH lines, which run, environment, launch command).

Nothing a user typed or a site file holds reaches the script unchecked: ``#SBATCH`` values
follow SLURM's syntax for their option (never a control character: a newline would start a
command), everything in shell context is ``shlex.quote``d, and site ``env`` values may refer
to variables (``$VAR``, ``${VAR}``) but never substitute commands.
"""

from __future__ import annotations

import datetime
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from megatron_sail.errors import shown
from megatron_sail.launch.resources import SYNTAX, JobRequest, slurm_value
from megatron_sail.launch.site import SLURM_DIR, SiteError, SiteProfile

TEMPLATE = SLURM_DIR / "sbatch.sh.tmpl"
REPO_ROOT = SLURM_DIR.parent
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*")
# $NAME and ${NAME} expand on the node; any other $ (e.g. $(...), ${x:-$(...)}) is refused.
_ENV_VALUE = re.compile(r"([^$`\\]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^$`\\{}]*)?\})*")


def one_line(what: str, value: object) -> str:
    """``str(value)`` when it has no control character (a newline would start a command)."""
    text = str(value)
    if _CONTROL.search(text):
        raise SiteError(f"{what} {shown(text)} contains a newline or control character")
    return text


def _directive_value(name: str, value: object) -> str:
    """An #SBATCH value: SLURM's syntax for the options it has one for; any other value on one
    line, double-quoted (sbatch strips the quotes) when it holds spaces."""
    if f"--{name}" in SYNTAX:
        return slurm_value(f"--{name}", str(value))
    text = one_line(f"#SBATCH --{name}", value)
    if '"' in text:
        raise SiteError(f"#SBATCH --{name} {shown(text)} contains a double quote")
    return f'"{text}"' if re.search(r"\s", text) else text


@dataclass(frozen=True)
class RunSpec:
    """One run the script may train: its output directory and where it is complete."""
    run_dir: Path
    train_iters: int


@dataclass(frozen=True)
class ScriptSpec:
    command: str            # "submit" or "sweep", for the header
    job_name: str
    request: JobRequest
    site: SiteProfile
    runs: list[RunSpec]     # one for a job, one per element for an array job
    workdir: Path           # --chdir: relative paths in configs resolve as at submission
    log: str                # --output pattern
    python: str             # interpreter on the compute nodes (outside a container)
    array: bool = False
    max_parallel: int | None = None
    max_restarts: int | None = None  # None: the site's
    dependency: str | None = None    # e.g. afterok:123 (a recipe's chained stages)
    # What each task runs after the interpreter; None: `sail <entry>` of the run's stored config.
    step_args: tuple[str, ...] | None = None
    entry: str = "train"             # train, or rl (an RL run: the same job, the RL loop)


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}``; a missing or unused value is an error, not a blank."""
    used = set(_PLACEHOLDER.findall(template))
    missing, unused = used - set(values), set(values) - used
    if missing or unused:
        raise KeyError(f"template placeholders missing {sorted(missing)}, unused {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _directives(spec: ScriptSpec) -> list[str]:
    req, site = spec.request, spec.site
    opts: dict[str, object] = {
        "job-name": spec.job_name,
        "nodes": req.nodes,
        "ntasks-per-node": req.ntasks_per_node,
        "gpus-per-node": req.gpus_per_node or None,
        "cpus-per-task": req.cpus_per_task,
        "mem": req.mem,
        "exclusive": req.exclusive or None,
        "partition": req.partition,
        "account": req.account,
        "time": req.time,
        "signal": f"B:USR1@{site.signal_seconds}",
        "requeue": True,
        "open-mode": "append",   # a requeued job appends to its log
        "chdir": str(spec.workdir),
        "output": spec.log,
        "dependency": spec.dependency,
        # a job whose predecessor failed is cancelled instead of pending forever
        "kill-on-invalid-dep": "yes" if spec.dependency else None,
    }
    if spec.array:
        throttle = f"%{spec.max_parallel}" if spec.max_parallel else ""
        opts["array"] = f"0-{len(spec.runs) - 1}{throttle}"
    for name, value in site.sbatch.items():
        name = str(name).lstrip("-")
        if not _OPTION_NAME.fullmatch(name):
            raise SiteError(f"site sbatch option {shown(name)} is not an option name")
        if name in opts:
            raise SiteError(f"site sbatch option '{name}' is set by sail slurm itself; "
                            "use the command-line option instead")
        opts[name] = value
    lines = []
    for name, value in opts.items():
        if value is None or value is False:
            continue
        lines.append(f"#SBATCH --{name}" if value is True
                     else f"#SBATCH --{name}={_directive_value(name, value)}")
    return lines


def _run_selection(spec: ScriptSpec) -> str:
    def assign(run: RunSpec) -> str:
        return f"RUN_DIR={shlex.quote(str(run.run_dir))}; TRAIN_ITERS={run.train_iters}"

    if not spec.array:
        return assign(spec.runs[0])
    cases = "\n".join(f"    {i}) {assign(run)} ;;" for i, run in enumerate(spec.runs))
    return (f'case "${{SLURM_ARRAY_TASK_ID:?an array job: submit with sail slurm sweep}}" in\n'
            f"{cases}\n"
            '    *) echo "[sail] no sweep element $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;\n'
            "esac")


def _env_exports(site: SiteProfile) -> str:
    lines = []
    for name, value in site.env.items():
        if not _ENV_NAME.match(name):
            raise SiteError(f"site env: {shown(name)} is not a variable name")
        one_line(f"site env {name}:", value)
        if not _ENV_VALUE.fullmatch(value):
            raise SiteError(f"site env {name}: {shown(value)} may refer to variables ($VAR, "
                            "${VAR}, ${VAR:-default}) but not run commands or escape quotes")
        quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
        lines.append(f'export {name}="{quoted}"')   # $VAR references expand on the node
    return "\n".join(lines)


def _container_args(spec: ScriptSpec) -> list[str]:
    container = spec.site.container
    shared = [REPO_ROOT, spec.workdir, *{run.run_dir.parent for run in spec.runs}]
    for path in shared:
        if re.search(r"[,:]", str(path)):   # the separators of --container-mounts
            raise SiteError(f"{shown(str(path))}: a directory with ',' or ':' in its path "
                            "cannot be mounted into the container")
    mounts = list(dict.fromkeys(f"{p}:{p}" for p in shared)) + list(container.mounts)
    return [f"--container-image={container.image}", f"--container-mounts={','.join(mounts)}",
            f"--container-workdir={spec.workdir}"]


def render_script(spec: ScriptSpec) -> str:
    site = spec.site
    for line in site.setup:   # shell commands by design (module load ...), one per line
        one_line("site setup line", line)
    srun_args = list(site.srun_args)
    if site.container.image:
        srun_args += _container_args(spec)
        python = shlex.quote(site.container.python)
        setup = [f'export PYTHONPATH={shlex.quote(str(REPO_ROOT))}"${{PYTHONPATH:+:$PYTHONPATH}}"']
    else:
        python = shlex.quote(spec.python)
        bindir = shlex.quote(str(Path(spec.python).parent))
        setup = ["# the Python environment `sail` was submitted from",
                 f'export PATH={bindir}:"$PATH"']
    setup = list(site.setup) + setup
    restarts = site.max_restarts if spec.max_restarts is None else spec.max_restarts
    if spec.entry not in ("train", "rl"):
        raise ValueError(f"unknown entry {spec.entry!r}")
    step = (f'{spec.entry} "$RUN_DIR/slurm/config.yaml"' if spec.step_args is None
            else " ".join(shlex.quote(one_line("step argument", a)) for a in spec.step_args))
    return fill(TEMPLATE.read_text(), {
        "command": spec.command,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "sbatch_directives": "\n".join(_directives(spec)),
        "signal_seconds": str(site.signal_seconds),
        "run_selection": _run_selection(spec),
        "max_restarts": str(restarts),
        "setup": "\n".join(setup),
        "env_exports": _env_exports(site),
        "srun_args": "".join(f" {shlex.quote(one_line('srun argument', a))}" for a in srun_args),
        "python": one_line("python interpreter", python),
        "step": step,
    })
