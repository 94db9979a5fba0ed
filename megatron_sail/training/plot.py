"""Loss curves of one or more runs as a PNG (``sail plot RUN_DIR...``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from megatron_sail.errors import UserError


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no metrics (is {run_dir} a run directory?)")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or not {"iteration", "loss", "lr"} <= set(record):
            raise UserError(f"{path}:{number}: not a training record (iteration, loss, lr)")
        records.append(record)
    if not records:
        raise UserError(f"{path}: no iteration logged yet")
    return records


def plot_runs(run_dirs: list[str], out: Optional[str] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    for run in run_dirs:
        records = read_metrics(run)
        name = Path(run).name
        ax_loss.plot([r["iteration"] for r in records], [r["loss"] for r in records],
                     label=f"{name} train")
        for key, style in (("val_loss", "o-"), ("val_loss_mismatched_images", "x--")):
            points = [(r["iteration"], r[key]) for r in records if key in r]
            if points:
                ax_loss.plot(*zip(*points), style, label=f"{name} {key}")
        ax_lr.plot([r["iteration"] for r in records], [r["lr"] for r in records], label=name)
    ax_loss.set(xlabel="iteration", ylabel="loss (mean over loss tokens)", yscale="log")
    ax_lr.set(xlabel="iteration", ylabel="learning rate")
    ax_loss.legend(fontsize=8)
    ax_lr.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) if out else Path(run_dirs[0]) / "loss.png"
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the plot: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return path
