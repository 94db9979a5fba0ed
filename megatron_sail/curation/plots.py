"""PNG plots of a curation (matplotlib, headless): score histograms and before/after bars."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from megatron_sail.utils.atomic import staged_file

    with staged_file(path) as tmp:
        # No software/date metadata: the same curation gives the same bytes.
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


def histogram(path: Path, name: str, values: list[float]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    distinct = sorted(set(values))
    if len(distinct) <= 12 and all(v == int(v) for v in distinct):   # a discrete scale (1-5)
        edges = [v - 0.5 for v in range(int(distinct[0]), int(distinct[-1]) + 2)]
        ax.hist(values, bins=edges, rwidth=0.8)
    else:
        ax.hist(values, bins=30)
    ax.set_title(f"{name} ({len(values)} records)")
    ax.set_xlabel(name)
    ax.set_ylabel("records")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def bar_before_after(path: Path, title: str, before: dict, after: dict) -> None:
    plt = _pyplot()
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [before[n] for n in names], width=0.4, label="before")
    ax.bar([i + 0.2 for i in x], [after.get(n, 0) for n in names], width=0.4, label="after")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("records")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def counts(path: Path, name: str, values: list) -> None:
    from collections import Counter

    plt = _pyplot()
    tally = sorted(Counter(str(v) for v in values).items())
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(tally) + 2), 4))
    ax.bar([k for k, _ in tally], [n for _, n in tally])
    ax.set_title(f"{name} ({len(values)} records)")
    ax.set_ylabel("records")
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
