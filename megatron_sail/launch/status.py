"""``sail slurm status RUN_DIR``: the job's state and restarts (from SLURM while it knows the
job, else from the script's attempt records), and progress from the run's own files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


from megatron_sail.checkpointing.layout_files import LATEST_FILE
from megatron_sail.config.loader import read_yaml
from megatron_sail.launch import slurmctl
from megatron_sail.launch.submit import SUBMISSION, SWEEP_RECORD


@dataclass
class RunStatus:
    run_dir: str
    job: str | None            # job id, or ARRAYID_INDEX for a sweep element
    state: str                 # SLURM's job state; UNKNOWN once it forgot a job
    reason: str | None
    restarts: int
    exit_code: str | None
    iteration: int | None      # last logged iteration
    train_iters: int | None
    loss: float | None
    val_loss: float | None
    checkpoint_iteration: int | None
    last_attempt: dict | None  # the script's record of the last start that ended
    log: str | None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _attempts(run_dir: Path) -> list[dict]:
    path = run_dir / "slurm" / "attempts.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a node failure
    return out


def _last_metrics(run_dir: Path) -> tuple[dict | None, float | None]:
    """The last metrics record and the last validation loss."""
    path = run_dir / "metrics.jsonl"
    last, val_loss = None, None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            last = record
            if record.get("val_loss") is not None:
                val_loss = record["val_loss"]
    return last, val_loss


def _train_iters(run_dir: Path, submission: dict) -> int | None:
    config = run_dir / "slurm" / "config.yaml"
    if config.is_file():
        tree = read_yaml(config)
        return (tree.get("train") or {}).get("train_iters")
    return submission.get("train_iters")


def run_status(run_dir: str | Path) -> RunStatus:
    run_dir = Path(run_dir).absolute()
    submission = _read_json(run_dir / "slurm" / SUBMISSION) or {}
    job = submission.get("job_ref")
    info = slurmctl.job_info(job) if job else None
    attempts = _attempts(run_dir)
    last, val_loss = _last_metrics(run_dir)
    latest = run_dir / "checkpoints" / LATEST_FILE
    ckpt = latest.read_text().strip() if latest.is_file() else ""
    restarts = max([(info.restarts or 0) if info else 0] + [a.get("restart", 0) for a in attempts])
    return RunStatus(
        run_dir=str(run_dir), job=job,
        state=info.state if info else ("UNKNOWN" if job else "NOT SUBMITTED"),
        reason=info.reason if info else None,
        restarts=restarts,
        exit_code=info.exit_code if info else None,
        iteration=last.get("iteration") if last else None,
        train_iters=_train_iters(run_dir, submission),
        loss=last.get("loss") if last else None, val_loss=val_loss,
        checkpoint_iteration=int(ckpt) if ckpt.isdigit() else None,
        last_attempt=attempts[-1] if attempts else None,
        log=submission.get("log"),
    )


def format_run(s: RunStatus) -> str:
    active = s.state in slurmctl.ACTIVE_STATES
    state = s.state + (f" ({s.reason})" if s.reason else "")
    if s.state == "UNKNOWN":
        state += " (SLURM no longer knows the job; see last start)"
    progress = "no metrics yet"
    if s.iteration is not None:
        progress = f"iteration {s.iteration}/{s.train_iters}  loss {s.loss:.4f}"
        if s.val_loss is not None:
            progress += f"  val_loss {s.val_loss:.4f}"
    lines = [f"run         {s.run_dir}",
             f"job         {s.job or '-'}  {state}  restarts {s.restarts}"
             + (f"  exit code {s.exit_code}" if s.exit_code and not active else ""),
             f"progress    {progress}",
             f"checkpoint  {'-' if s.checkpoint_iteration is None else f'iteration {s.checkpoint_iteration}'}"]
    if s.last_attempt:
        a = s.last_attempt
        lines.append(f"last start  restart {a.get('restart')}: {a.get('outcome')} at iteration "
                     f"{a.get('iteration_end')} (exit code {a.get('exit_code')}, ended {a.get('end')})")
    if s.log:
        lines.append(f"log         {s.log}")
    return "\n".join(lines)


def sweep_status(root: str | Path) -> tuple[dict, list[RunStatus]]:
    record = _read_json(Path(root) / SWEEP_RECORD) or {}
    return record, [run_status(e["run_dir"]) for e in record.get("elements", [])]


def status(path: str | Path, as_json: bool = False) -> str:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    if (path / SWEEP_RECORD).is_file():
        record, runs = sweep_status(path)
        if as_json:
            return json.dumps({"sweep": str(path.absolute()), "job_id": record.get("job_id"),
                               "elements": [asdict(r) for r in runs]}, indent=1)
        rows = [("job", "state", "restarts", "iteration", "loss", "run")]
        for r in runs:
            rows.append((r.job or "-", r.state, str(r.restarts),
                         f"{r.iteration if r.iteration is not None else '-'}/{r.train_iters}",
                         "-" if r.loss is None else f"{r.loss:.4f}", Path(r.run_dir).name))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = [f"sweep {path.absolute()}: array job {record.get('job_id')}, {len(runs)} elements"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]
                  for row in rows]
        return "\n".join(lines)
    s = run_status(path)
    return json.dumps(asdict(s), indent=1) if as_json else format_run(s)
