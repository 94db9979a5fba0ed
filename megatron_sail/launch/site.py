"""The site profile: cluster-wide defaults for generated job scripts (``slurm/site.yaml``),
overridden by a user's site file merged on top of it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_sail.config.loader import read_yaml
from megatron_sail.errors import UserError

SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"  # templates + default profile
DEFAULT_PROFILE = SLURM_DIR / "site.yaml"
SITE_ENV_VAR = "SAIL_SLURM_SITE"


class SiteError(UserError, ValueError):
    """A site profile the user must fix; names the file and key."""


@dataclass(frozen=True)
class Container:
    image: str | None = None
    mounts: tuple[str, ...] = ()
    python: str = "python"


@dataclass(frozen=True)
class GpuJob:
    exclusive: bool = True
    mem: str | None = None
    cpus_per_task: int | None = None


@dataclass(frozen=True)
class SiteProfile:
    signal_seconds: int = 300
    max_restarts: int = 50
    python: str | None = None
    setup: tuple[str, ...] = ()
    container: Container = field(default_factory=Container)
    gpu_job: GpuJob = field(default_factory=GpuJob)
    sbatch: dict[str, Any] = field(default_factory=dict)
    srun_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict:
    return read_yaml(path, SiteError, "site profile")


def _section(tree: dict, name: str, cls, where: str):
    raw = tree.get(name) or {}
    known = set(cls.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise SiteError(f"{where}: unknown key(s) {sorted(unknown)} in '{name}' "
                        f"(known: {sorted(known)})")
    return raw


def load_site(path: str | os.PathLike | None = None) -> SiteProfile:
    """The default profile, with ``path`` (or $SAIL_SLURM_SITE) merged on top."""
    tree = _read(DEFAULT_PROFILE)
    where = str(DEFAULT_PROFILE)
    override = path or os.environ.get(SITE_ENV_VAR)
    if override:
        tree = _merge(tree, _read(Path(override)))
        where = f"{DEFAULT_PROFILE} + {override}"
    known = set(SiteProfile.__dataclass_fields__)
    unknown = set(tree) - known
    if unknown:
        raise SiteError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(known)})")
    container = _section(tree, "container", Container, where)
    gpu_job = _section(tree, "gpu_job", GpuJob, where)
    try:
        profile = SiteProfile(
            signal_seconds=int(tree.get("signal_seconds", 300)),
            max_restarts=int(tree.get("max_restarts", 50)),
            python=tree.get("python"),
            setup=tuple(str(line) for line in tree.get("setup") or ()),
            container=Container(image=container.get("image"),
                                mounts=tuple(container.get("mounts") or ()),
                                python=str(container.get("python") or "python")),
            gpu_job=GpuJob(exclusive=bool(gpu_job.get("exclusive", True)),
                           mem=None if gpu_job.get("mem") is None else str(gpu_job["mem"]),
                           cpus_per_task=gpu_job.get("cpus_per_task")),
            sbatch=dict(tree.get("sbatch") or {}),
            srun_args=tuple(str(a) for a in tree.get("srun_args") or ()),
            # null removes a default variable
            env={str(k): str(v) for k, v in (tree.get("env") or {}).items() if v is not None},
        )
    except (TypeError, ValueError) as exc:
        raise SiteError(f"{where}: {exc}") from None
    if not 0 < profile.signal_seconds <= 65535:  # SLURM's limit for --signal=...@N
        raise SiteError(f"{where}: signal_seconds must be in 1..65535, got {profile.signal_seconds}")
    if profile.max_restarts < 0:
        raise SiteError(f"{where}: max_restarts must be >= 0, got {profile.max_restarts}")
    return profile
