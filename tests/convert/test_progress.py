"""Conversion progress lines: rate and time left for counted steps and for watched phases."""

from __future__ import annotations

import re
import time

from megatron_sail.convert.progress import GiB, Progress, bytes_read, bytes_under, watch


def test_counted_steps_report_eta_from_bytes(capsys):
    bar = Progress("fill", 4, True, total_bytes=4 * GiB)
    bar.start -= 10.0  # as if 10 s had passed
    bar.update(1, 3 * GiB)  # one big tensor of four: 75% of the bytes
    bar.update(4, 4 * GiB)
    lines = capsys.readouterr().err.strip().splitlines()
    # 75% of the bytes in 10 s: 3.3 s left
    assert re.search(r"\[fill\] 1/4 tensors  75% \| [\d.]+ MiB/s \| ETA 0:00:03$", lines[0]), lines
    assert re.search(r"\[fill\] 4/4 tensors 100% .* done in 10\.\d s$", lines[1]), lines


def test_watched_phase_follows_its_byte_counter(capsys, tmp_path):
    total = 10 * 2**20
    with watch("save", total, bytes_under(tmp_path), True, every=0.01):
        for i in range(10):
            (tmp_path / f"part{i}").write_bytes(b"x" * 2**20)
            time.sleep(0.03)
    lines = capsys.readouterr().err.strip().splitlines()
    shown = [int(m.group(1)) for m in (re.search(r" (\d+)% ", line) for line in lines) if m]
    assert shown == sorted(shown) and shown[-1] == 100 and len(shown) >= 3, lines
    assert lines[-1].startswith("[save] 0.01/0.01 GiB 100%") and "done in" in lines[-1]
    assert any("ETA" in line for line in lines[:-1]), lines


def test_bytes_read_counts_this_process_reads(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"y" * 2**20)
    before = bytes_read()
    path.read_bytes()
    assert bytes_read() - before >= 2**20
