"""Where checkpoints live and how completeness is recorded (no torch.distributed here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from megatron_sail.errors import UserError
from megatron_sail.utils.atomic import rename_synced, write_atomic

LATEST_FILE = "latest_checkpointed_iteration.txt"
MARKER_FILE = "sail_checkpoint.json"  # written last: a directory without it is not a checkpoint


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or incompatible; names the path."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that names a class no checkpoint holds. Every rank reads the same
    files and refuses the same way, so one rank reporting it is enough."""


def iteration_dir(root: Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_marker(ckpt_dir: Path) -> dict:
    marker = Path(ckpt_dir) / MARKER_FILE
    if not marker.is_file():
        raise CheckpointError(f"{ckpt_dir}: not a complete checkpoint (no {MARKER_FILE})")
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{marker}: unreadable checkpoint description: {exc}") from None


def refuse_unsafe_pickles(ckpt_dir: Path) -> None:
    """Every checkpoint read goes through here first: restricts unpickling in this process
    (and the processes it starts) to the classes a checkpoint holds, and names the file and
    class of anything else before Megatron or torch read the checkpoint."""
    from megatron_sail.compat import safe_checkpoint_load

    try:
        safe_checkpoint_load.scan(Path(ckpt_dir))
    except safe_checkpoint_load.UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(str(exc)) from None


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The checkpoint named by ``root/latest_checkpointed_iteration.txt``, or None."""
    latest = Path(root) / LATEST_FILE
    if not latest.is_file():
        return None
    text = latest.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{latest}: expected an iteration number, found {text!r}")
    ckpt = iteration_dir(root, int(text))
    read_marker(ckpt)
    return ckpt


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run's ``checkpoints/`` directory (latest is used) or an ``iter_*`` directory."""
    path = Path(path)
    if (path / MARKER_FILE).is_file():
        return path
    if (path / LATEST_FILE).is_file():
        return latest_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint path does not exist")
    raise CheckpointError(f"{path}: neither a checkpoint directory ({MARKER_FILE}) nor a "
                          f"checkpoints directory ({LATEST_FILE})")


def publish(tmp_dir: Path, final_dir: Path, iteration: int, marker: dict,
            keep_last: Optional[int]) -> None:
    """Rank 0, after every rank wrote into ``tmp_dir``: mark complete, rename, update latest."""
    write_atomic(tmp_dir / MARKER_FILE, json.dumps(marker, indent=1))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    rename_synced(tmp_dir, final_dir)  # Megatron syncs its tensor files, not common.pt
    write_atomic(final_dir.parent / LATEST_FILE, f"{iteration}\n")
    if keep_last:
        done = sorted(p for p in final_dir.parent.glob("iter_*")
                      if p.is_dir() and not p.name.endswith(".tmp") and (p / MARKER_FILE).exists())
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


# -- lineage: where a checkpoint's weights came from, decidable from checkpoints alone -------
ARCH_PARTS = ("vision", "adapter", "llm")


def architecture_fingerprint(config: dict) -> str:
    """A digest of the stored config's architecture (model.vision/adapter/llm): equal for
    checkpoints whose weights have the same names, shapes and meaning."""
    import hashlib

    parts = {part: config["model"][part] for part in ARCH_PARTS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_lineage(run: dict, arch: str, parent: Optional[dict]) -> dict:
    """What a run stamps on each of its checkpoints: its identity (e.g. id and seed), the
    architecture fingerprint and the lineage of the checkpoint it started from (None: from
    scratch)."""
    return {"run": run, "arch": arch, "parent": parent}


def stamped(lineage: dict, iteration: int) -> dict:
    """The lineage of one checkpoint of the run: ``checkpoint`` is its identity."""
    return {"checkpoint": f"{lineage['run']['id']}@{iteration}", **lineage}


def checkpoint_lineage(ckpt_dir: Path) -> dict:
    """A checkpoint's lineage from its description file. Checkpoints written before lineage
    was recorded are known by their path alone (architecture and parent unknown)."""
    marker = read_marker(ckpt_dir)
    if isinstance(marker.get("lineage"), dict) and "checkpoint" in marker["lineage"]:
        return marker["lineage"]
    resolved = Path(ckpt_dir).resolve()
    return {"checkpoint": f"path:{resolved}", "run": None, "arch": None, "parent": None}


def parent_id(lineage: dict) -> Optional[str]:
    parent = lineage.get("parent")
    return parent.get("checkpoint") if isinstance(parent, dict) else None
