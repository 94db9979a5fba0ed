"""The one progress line: rate and time left from the work done since it started."""

from __future__ import annotations

import io

from megatron_sail.training.metrics import Progress
from megatron_sail.utils.progress import ProgressLine, clock


def test_eta_from_the_work_done_since_the_start():
    line = ProgressLine("check", 100, "samples")
    line.t0 -= 10.0  # as if 10 s had passed
    assert line.line(25).startswith("[check] 25/100 samples  25% | 2.50 samples/s | ETA 0:00:3")
    assert line.line(0).endswith("ETA ?")
    assert line.line(100).endswith("| done in 10.0 s")
    # a fraction (bytes) wins over the item count; a caller's rate and detail are shown as given
    text = line.line(1, rate="5.0 MiB/s", fraction=0.5, detail="note")
    assert text.startswith("[check] 1/100 samples  50% | 5.0 MiB/s | ETA 0:00:1") and text.endswith("| note")
    assert clock(3725) == "1:02:05"


def test_a_resumed_run_counts_only_its_own_iterations():
    stream = io.StringIO()
    progress = Progress(start_iteration=10, total=30, stream=stream)
    progress._line.t0 -= 5.0  # 5 s for iterations 11-20: 2 it/s, 10 left
    progress.show(20, 3.5, 1e-3, "val_loss 3.4")
    assert stream.getvalue() == ("[iter] 20/30  66% | 2.00 it/s | ETA 0:00:05 | "
                                 "loss 3.5000 lr 1.000e-03 | val_loss 3.4\n")


def test_an_iteration_without_an_update_says_so_instead_of_a_loss():
    stream = io.StringIO()
    Progress(start_iteration=0, total=4, stream=stream).show(1, None, 1e-6)
    assert "| loss - (no update) lr 1.000e-06" in stream.getvalue()
