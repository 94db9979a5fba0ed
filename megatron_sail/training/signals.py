"""Stop requests (SIGTERM from a scheduler, SIGUSR1 as a pre-emption warning) that every rank
acts on at the same iteration."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

_early: list[int] = []


def record_early_signals() -> None:
    """Install at process start: a scheduler's warning that arrives while torch and Megatron
    are still importing is remembered and acted on at the first iteration, not fatal."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: _early.append(signum))


class StopRequest:
    def __init__(self):
        self.received: int | None = _early[0] if _early else None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """Collective: True on every rank once any rank received a stop signal."""
        import torch  # not at module level: record_early_signals() must install fast

        device = "cuda" if torch.cuda.is_available() else "cpu"  # NCCL needs CUDA tensors
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)
