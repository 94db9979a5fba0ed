"""Ctrl-C or SIGTERM to ``sail data check`` / ``sail data prepare`` while its worker processes
decode: one line, exit 130 (Ctrl-C) or 143 (SIGTERM), no traceback, no worker process left and
no temporary directory left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.data.media_fixtures import chat, image_bytes, write, write_jsonl
from tests.helpers import REPO


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """200 samples of a 1200x1200 noise PNG: about 0.1 s of decoding each."""
    root = tmp_path_factory.mktemp("slow")
    write(root / "big.png", image_bytes(1200, 1200, "PNG", seed=1))
    write_jsonl(root / "data.jsonl", [{"image": "big.png", "conversations": chat("q", "a")}] * 200)
    return root


def _start(*args):
    # A Ctrl-C reaches a foreground command, whose SIGINT is never ignored; a test run started
    # in the background may hand down an ignored SIGINT, which Python would then keep.
    return subprocess.Popen([sys.executable, "-m", "megatron_sail.cli", "data", *args,
                             "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _workers_busy(proc) -> list[psutil.Process]:
    """The command's worker processes, once both have started working."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        children = psutil.Process(proc.pid).children(recursive=True)
        if len(children) >= 2 and all(c.cpu_times().user > 0.2 for c in children):
            return children
        time.sleep(0.1)
    raise AssertionError("the workers never started")


def _gone(processes) -> bool:
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


@pytest.mark.parametrize("command, sig", [("prepare", signal.SIGTERM), ("prepare", signal.SIGINT),
                                          ("check", signal.SIGTERM), ("check", signal.SIGINT)])
def test_stop_leaves_no_process_and_no_temporary_files(slow_data, tmp_path, command, sig):
    out = tmp_path / "shards"
    args = [command, str(slow_data / "data.jsonl")] + (["--out", str(out)] if command == "prepare"
                                                       else [])
    proc = _start(*args)
    try:
        _stop_and_check(proc, command, sig, tmp_path)
    finally:  # a failed check must not leave the command or its workers running
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and its workers
        except ProcessLookupError:
            pass
        proc.wait()


def _stop_and_check(proc, command, sig, tmp_path):
    workers = _workers_busy(proc)
    if sig == signal.SIGINT:  # Ctrl-C in a terminal: the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    else:  # kill, SLURM, a supervisor: the command's own process
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    tail = "; no output was written" if command == "prepare" else ""
    assert proc.returncode == 128 + sig
    assert err.splitlines()[-1] == f"sail data {command}: {word}{tail}", err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while not _gone(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(workers)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither shards/ nor shards.tmp-PID
