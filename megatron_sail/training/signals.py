"""Stop requests (SIGTERM from a scheduler, SIGUSR1 as a pre-emption warning) that every rank
acts on at the same iteration."""

from __future__ import annotations

import signal

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    def __init__(self):
        self.received: int | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """Collective: True on every rank once any rank received a stop signal."""
        device = "cuda" if torch.cuda.is_available() else "cpu"  # NCCL needs CUDA tensors
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)
