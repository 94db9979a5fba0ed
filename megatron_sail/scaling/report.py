"""Write a scaling fit: a Markdown table, the numbers as JSON, and two PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_sail.scaling.fit import StudyFit, curve_points
from megatron_sail.utils.atomic import write_atomic, write_json_atomic


def table(fit: StudyFit) -> str:
    lines = ["| run | N (params) | D (tokens) | C (FLOPs) | iterations | final loss |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(fit.runs, key=lambda r: r.compute):
        lines.append(f"| {r.name} | {r.params:.4g} | {r.tokens:.4g} | {r.compute:.4g} | "
                     f"{r.final_iteration} | {r.final_loss:.4f} |")
    lines += ["", f"- loss vs compute (frontier of the loss curves, first "
                  f"{fit.skip_fraction:.0%} of each run skipped, running mean over "
                  f"{fit.window} steps): `{fit.vs_compute.describe()}`"]
    if fit.vs_params_tokens is not None:
        lines.append(f"- loss vs parameters and tokens (final losses): "
                     f"`{fit.vs_params_tokens.describe()}`")
    else:
        lines.append(f"- {fit.params_tokens_note}")
    lines.append("- exponents +/- one standard error (OLS on logs, covariance s^2 (X^T X)^-1); "
                 "N = trainable parameters without embeddings, D = all LLM tokens, C = model "
                 "FLOPs from `megatron_sail.costs.flops`")
    return "\n".join(lines) + "\n"


def as_json(fit: StudyFit) -> dict:
    return {
        "runs": [{"name": r.name, "run_dir": r.run_dir, "params": r.params, "tokens": r.tokens,
                  "compute": r.compute, "flops_per_iteration": r.flops_per_iteration,
                  "final_iteration": r.final_iteration, "final_loss": r.final_loss}
                 for r in fit.runs],
        "loss_vs_compute": fit.vs_compute.as_dict() | {
            "frontier": {"compute": fit.frontier_compute.tolist(),
                         "loss": fit.frontier_loss.tolist()}},
        "loss_vs_params_tokens": (fit.vs_params_tokens.as_dict() if fit.vs_params_tokens
                                  else {"skipped": fit.params_tokens_note}),
        "settings": {"skip_fraction": fit.skip_fraction, "smoothing_window": fit.window},
    }


def plot(fit: StudyFit, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = fit.vs_compute
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in sorted(fit.runs, key=lambda r: r.compute):
        c = np.asarray(r.iterations, float) * r.flops_per_iteration
        raw = ax.plot(c, r.losses, alpha=0.3, lw=1)[0]  # raw curve; smoothed part on top
        cc, ll = curve_points(r, fit.skip_fraction, fit.window)
        ax.plot(cc, ll, lw=1.5, color=raw.get_color(), label=f"{r.name} (N={r.params:.3g})")
    ax.plot(fit.frontier_compute, fit.frontier_loss, "k.", ms=4, label="frontier points")
    grid = np.geomspace(fit.frontier_compute.min(), fit.frontier_compute.max(), 50)
    a, e = law.exponents[0], law.exponent_stderr[0]
    ax.plot(grid, law.predict(grid), "k--", lw=2,
            label=f"fit: L = {law.k:.3g} C^-{a:.3f} (+/- {e:.3f})")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (model FLOPs)",
           ylabel="training loss", title="Loss curves and the compute-efficient frontier")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out_dir / "loss_vs_compute.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    nd = fit.vs_params_tokens
    fig, ax = plt.subplots(figsize=(7, 5))
    tokens = sorted({r.tokens for r in fit.runs})
    n_grid = np.geomspace(min(r.params for r in fit.runs), max(r.params for r in fit.runs), 50)
    for d in tokens:
        group = sorted((r for r in fit.runs if r.tokens == d), key=lambda r: r.params)
        line = ax.plot([r.params for r in group], [r.final_loss for r in group], "o",
                       label=f"D = {d:.3g} tokens")[0]
        if nd is not None:
            ax.plot(n_grid, nd.predict(n_grid, np.full_like(n_grid, d)), "--",
                    color=line.get_color())
    title = "Final loss vs parameters"
    if nd is not None:
        (an, ad), (en, ed) = nd.exponents, nd.exponent_stderr
        title += f"\nL = {nd.k:.3g} N^-{an:.3f}(+/-{en:.3f}) D^-{ad:.3f}(+/-{ed:.3f})"
    ax.set(xscale="log", yscale="log", xlabel="trainable parameters N (no embeddings)",
           ylabel="final training loss", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "loss_vs_params_tokens.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def write(fit: StudyFit, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scaling_fit.md", table(fit))
    write_json_atomic(out / "scaling_fit.json", as_json(fit), indent=2)
    return [out / "scaling_fit.md", out / "scaling_fit.json", *plot(fit, out)]
