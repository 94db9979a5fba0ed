"""Power laws fitted by least squares on logarithms, with standard errors.

``y = k * x1^-a1 * x2^-a2 ...`` is linear in logs: ``log y = log k - a1 log x1 - ...``. Ordinary
least squares gives the coefficients; their covariance is ``s^2 (X^T X)^-1`` with the residual
variance ``s^2 = RSS / (n - p)``, so the standard errors need more points than coefficients.
The irreducible-loss term of Chinchilla-style fits (``E + A/N^a + B/D^b``) is not linear in
logs and is not fitted: with the few points of a small sweep it is not identifiable anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_sail.scaling.runs import RunPoint


@dataclass
class PowerLaw:
    variables: tuple[str, ...]
    log_k: float
    exponents: np.ndarray  # a_i in y = k * prod x_i^-a_i
    cov: np.ndarray  # covariance of (log k, -a_1, ..., -a_p)
    n_points: int
    r2: float  # of the log-space fit

    @property
    def k(self) -> float:
        return float(np.exp(self.log_k))

    @property
    def exponent_stderr(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov)[1:])

    def predict(self, *xs) -> np.ndarray:
        log = self.log_k - sum(a * np.log(np.asarray(x, float)) for a, x in zip(self.exponents, xs))
        return np.exp(log)

    def describe(self) -> str:
        terms = " * ".join(f"{v}^-({a:.4f} +/- {e:.4f})"
                           for v, a, e in zip(self.variables, self.exponents, self.exponent_stderr))
        return f"L = {self.k:.4g} * {terms}  (n={self.n_points}, R^2={self.r2:.4f})"

    def as_dict(self) -> dict:
        return {"form": "L = k * " + " * ".join(f"{v}^-a_{v}" for v in self.variables),
                "k": self.k, "log_k": self.log_k, "log_k_stderr": float(np.sqrt(self.cov[0, 0])),
                "exponents": {v: float(a) for v, a in zip(self.variables, self.exponents)},
                "exponent_stderr": {v: float(e) for v, e in
                                    zip(self.variables, self.exponent_stderr)},
                "n_points": self.n_points, "r2": self.r2}


def fit_power_law(y, **variables) -> PowerLaw:
    """Fit ``y = k * prod(x^-a)`` over the named positive variables."""
    y = np.asarray(y, float)
    names = tuple(variables)
    xs = [np.asarray(variables[n], float) for n in names]
    if np.any(y <= 0) or any(np.any(x <= 0) for x in xs):
        raise ValueError("power laws need positive values")
    n, p = len(y), 1 + len(names)
    if n <= p:
        raise ValueError(f"{n} points cannot fit {p} coefficients with an uncertainty "
                         f"(need at least {p + 1})")
    design = np.column_stack([np.ones(n)] + [np.log(x) for x in xs])
    target = np.log(y)
    coef, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    if rank < p:
        raise ValueError(f"the points do not vary independently in {', '.join(names)}")
    residual = target - design @ coef
    rss = float(residual @ residual)
    cov = rss / (n - p) * np.linalg.inv(design.T @ design)
    tss = float(((target - target.mean()) ** 2).sum())
    return PowerLaw(names, float(coef[0]), -coef[1:], cov, n, 1 - rss / tss if tss else 1.0)


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing running mean (training losses are noisy step to step)."""
    v = np.asarray(values, float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(len(v)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def curve_points(run: RunPoint, skip_fraction: float, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(compute, smoothed loss) along one run, without its first ``skip_fraction``
    (warm-up and the initial transient are not on any frontier)."""
    it = np.asarray(run.iterations, float)
    loss = smooth(run.losses, window)
    keep = it > skip_fraction * run.final_iteration
    return it[keep] * run.flops_per_iteration, loss[keep]


def lower_envelope(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no cheaper point beats: the compute-efficient frontier."""
    order = np.argsort(compute, kind="stable")
    best, keep = np.inf, []
    for i in order:
        if loss[i] < best:
            best = loss[i]
            keep.append(i)
    return np.asarray(keep, int)


@dataclass
class StudyFit:
    runs: list[RunPoint]
    frontier_compute: np.ndarray
    frontier_loss: np.ndarray
    vs_compute: PowerLaw
    vs_params_tokens: PowerLaw | None
    params_tokens_note: str
    skip_fraction: float
    window: int


def fit_study(runs: list[RunPoint], skip_fraction: float = 0.5, window: int = 5) -> StudyFit:
    """L(C) on the frontier of all runs' loss curves; L(N, D) on the runs' final losses."""
    if len(runs) < 2:
        raise ValueError("a scaling fit needs at least 2 runs")
    curves = [curve_points(r, skip_fraction, window) for r in runs]
    compute = np.concatenate([c for c, _ in curves])
    loss = np.concatenate([l for _, l in curves])
    front = lower_envelope(compute, loss)
    vs_compute = fit_power_law(loss[front], C=compute[front])
    vs_nd, note = None, ""
    n = np.array([r.params for r in runs])
    d = np.array([r.tokens for r in runs])
    if len(set(n)) < 2 or len(set(d)) < 2:
        note = "L(N, D) not fitted: the runs need at least 2 model sizes and 2 token counts"
    elif len(runs) < 4:
        note = "L(N, D) not fitted: needs at least 4 runs for an uncertainty"
    else:
        vs_nd = fit_power_law([r.final_loss for r in runs], N=n, D=d)
    return StudyFit(runs, compute[front], loss[front], vs_compute, vs_nd, note, skip_fraction,
                    window)
