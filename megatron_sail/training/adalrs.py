"""AdaLRS: loss-guided adaptive learning-rate search (Dong et al., arXiv 2506.13274).

The search multiplies the scheduled LR by a scale. Every ``window`` (k) iterations the slope
of the training loss over those k iterations is estimated by least squares (the loss descent
velocity; more negative is faster). The rule, as implemented here:

- no trial pending: keep a snapshot of the training state, remember the slope just measured
  as the reference and raise the scale by alpha_n (``raise``);
- a trial pending (the window just measured ran at the raised scale): if its slope is steeper
  than the reference the raise is confirmed and the search raises again from here (``raise``,
  new snapshot and reference); otherwise the raise made descent slower: restore the snapshot
  (weights and optimizer state, as at the trial window's start) and set the scale to the
  pre-raise scale times beta (``rollback``);
- ``keep`` where no raise is allowed: the scale at max_scale, after ``search_iters``, or
  alpha_n within 0.1 % of 1 (the search has converged).

alpha_n = 1 + (alpha - 1) * alpha_decay^n after n LR changes (raises and rollbacks), so the
steps shrink and the scale settles near the best one - the geometric narrowing the paper's
convergence argument relies on. The constants (alpha 2, beta 0.5, decay 0.9) are this
project's choice, not the paper's. A rollback discards the trial window's updates, not its
time: the iteration count, the LR schedule's position and the data order continue (the
window's batches are not replayed), and the RNG is not rewound. Every rank sees the same
globally reduced loss (``step.run_step``), so every rank takes the same decision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from megatron_sail.checkpointing.dist_ckpt import load_training_state, save_training_state
from megatron_sail.config.schema import AdaLRSConfig

RAISE, KEEP, ROLLBACK = "raise", "keep", "rollback"
CONVERGED = 1e-3  # a raise factor closer to 1 than this ends the search


def loss_slope(losses: list[float]) -> float:
    """Least-squares slope of ``losses`` against their index (loss change per iteration)."""
    n = len(losses)
    if n < 2:
        raise ValueError("a slope needs at least two losses")
    x_mean = (n - 1) / 2
    y_mean = sum(losses) / n
    num = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(losses))
    den = sum((i - x_mean) ** 2 for i in range(n))
    return num / den


@dataclass
class SearchState:
    """Everything the decisions depend on; plain values, stored in checkpoints."""

    scale: float = 1.0
    losses: list[float] = field(default_factory=list)  # the current window's losses
    reference: Optional[float] = None  # slope of the window before the pending raise
    trial_from: Optional[float] = None  # scale before the pending raise; None: no trial
    snapshot_iteration: Optional[int] = None  # where a rollback would return to
    changes: int = 0  # raises and rollbacks so far


class SearchRule:
    """The decision rule alone (no tensors): feed it one globally reduced loss per iteration."""

    def __init__(self, cfg: AdaLRSConfig, state: Optional[SearchState] = None):
        self.cfg = cfg
        self.state = state or SearchState()

    @property
    def trial_pending(self) -> bool:
        return self.state.trial_from is not None

    def alpha_now(self) -> float:
        return 1 + (self.cfg.alpha - 1) * self.cfg.alpha_decay ** self.state.changes

    def observe(self, iteration: int, loss: float) -> Optional[str]:
        """The decision taken after ``iteration`` (which ran at the current scale), or None
        inside a window. A ``raise`` or ``rollback`` changes ``state.scale``."""
        st = self.state
        st.losses.append(float(loss))
        if len(st.losses) < self.cfg.window:
            return None
        slope = loss_slope(st.losses)
        st.losses = []
        if self.trial_pending and not slope < st.reference:
            st.scale = max(self.cfg.min_scale, st.trial_from * self.cfg.beta)
            st.trial_from = st.reference = st.snapshot_iteration = None
            st.changes += 1
            return ROLLBACK
        return self._raise_or_keep(iteration, slope)

    def _raise_or_keep(self, iteration: int, slope: float) -> str:
        st, cfg = self.state, self.cfg
        factor = self.alpha_now()
        target = min(cfg.max_scale, st.scale * factor)
        searching = cfg.search_iters is None or iteration < cfg.search_iters
        if not searching or factor - 1 < CONVERGED or target <= st.scale:
            st.trial_from = st.reference = st.snapshot_iteration = None
            return KEEP
        st.trial_from, st.reference, st.snapshot_iteration = st.scale, slope, iteration
        st.scale = target
        st.changes += 1
        return RAISE

    def state_dict(self) -> dict:
        return dataclasses.asdict(self.state)

    @classmethod
    def from_state_dict(cls, cfg: AdaLRSConfig, state: dict) -> "SearchRule":
        return cls(cfg, SearchState(**state))


def _inner_optimizers(optimizer) -> list:
    """Megatron's optimizer(s) - a ChainedOptimizer holds several (dense and expert)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


class TrainingSnapshot:
    """A CPU copy of this rank's own training state: its model parameters (for a distributed
    optimizer, the DDP parameter buffer every local parameter lives in), the fp32 main
    parameters the optimizer updates where they are separate tensors (bf16 training), every
    optimizer state tensor (Adam moments and step) and the grad scaler's state if any.
    ``restore`` copies everything back in place, bit for bit."""

    def __init__(self, chunks, optimizer):
        self._chunks, self._optimizer = chunks, optimizer
        self._copies = [t.detach().to("cpu", copy=True) for t in self._tensors(chunks, optimizer)]
        self._scalers = [opt.grad_scaler.state_dict() if getattr(opt, "grad_scaler", None)
                         else None for opt in _inner_optimizers(optimizer)]

    @staticmethod
    def _tensors(chunks, optimizer) -> list[torch.Tensor]:
        tensors = [p.data for chunk in chunks for p in chunk.parameters()]
        storages = {t.untyped_storage().data_ptr() for t in tensors}
        for opt in _inner_optimizers(optimizer):
            inner = opt.optimizer
            for group in inner.param_groups:
                for param in group["params"]:
                    # fp32 training: the optimizer's shards are views of the model's buffer
                    if param.untyped_storage().data_ptr() not in storages:
                        tensors.append(param.data)
                    for key in sorted(inner.state.get(param, {})):
                        value = inner.state[param][key]
                        if isinstance(value, torch.Tensor):
                            tensors.append(value)
        return tensors

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._copies)

    @torch.no_grad()
    def restore(self) -> None:
        # looked up again: loading a checkpoint may have replaced the optimizer's tensors
        targets = self._tensors(self._chunks, self._optimizer)
        if [(t.shape, t.dtype) for t in targets] != [(c.shape, c.dtype) for c in self._copies]:
            raise RuntimeError("AdaLRS snapshot no longer matches the training state's tensors")
        for target, copy in zip(targets, self._copies):
            target.copy_(copy)
        for opt, scaler in zip(_inner_optimizers(self._optimizer), self._scalers):
            if scaler is not None:
                opt.grad_scaler.load_state_dict(scaler)


class AdaLRS:
    """The search wired to a model and its optimizer: scales the LR, snapshots, rolls back."""

    def __init__(self, cfg: AdaLRSConfig, chunks, optimizer, state: Optional[dict] = None):
        self.rule = SearchRule.from_state_dict(cfg, state) if state else SearchRule(cfg)
        self.chunks, self.optimizer = chunks, optimizer
        self.snapshot: Optional[TrainingSnapshot] = None

    @property
    def scale(self) -> float:
        return self.rule.state.scale

    def step(self, iteration: int, loss: float) -> dict:
        """After the optimizer step of ``iteration``: the metrics fields of its record."""
        record = {"adalrs/lr_scale": self.scale}  # the scale this iteration ran with
        decision = self.rule.observe(iteration, loss)
        if decision is None:
            return record
        if decision == ROLLBACK:
            self.snapshot.restore()
        self.snapshot = (TrainingSnapshot(self.chunks, self.optimizer)
                         if self.rule.trial_pending else None)
        record["adalrs/decision"] = decision
        return record

    def state_dict(self) -> dict:
        return self.rule.state_dict()

    # -- checkpoints: the pending trial's snapshot, layout-independent ----------------------
    def save_snapshot(self, directory: Path) -> None:
        """Collective. With a trial pending, the snapshot as model + optimizer state in
        Megatron's distributed format (so a resume may change the layout)."""
        if self.snapshot is None:
            return
        live = TrainingSnapshot(self.chunks, self.optimizer)
        self.snapshot.restore()
        try:
            save_training_state(directory, self.chunks, self.optimizer)
        finally:
            live.restore()

    def load_snapshot(self, directory: Path) -> None:
        """Collective: after a resume with a trial pending, the snapshot saved with it."""
        if not self.rule.trial_pending:
            return
        live = TrainingSnapshot(self.chunks, self.optimizer)
        load_training_state(directory, self.chunks, self.optimizer)
        self.snapshot = TrainingSnapshot(self.chunks, self.optimizer)
        live.restore()
