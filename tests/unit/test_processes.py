"""The queue of independent commands (``sail scaling sweep``'s elements): at most J at a time,
one log each, a failure does not stop the others, and an interrupted queue leaves nothing running."""

from __future__ import annotations

import os
import sys
import time

import pytest

from megatron_sail.utils.processes import Job, run_jobs

# Each job records when it started and ended (monotonic clock), then exits with its code.
TIMED = ("import sys, time\n"
         "print('start', time.monotonic(), flush=True)\n"
         "time.sleep(0.5)\n"
         "print('end', time.monotonic())\n"
         "sys.exit(int(sys.argv[1]))\n")


def test_jobs_run_j_at_a_time_each_with_its_log_and_a_failure_stops_none(tmp_path):
    names = ["a", "b", "c", "d"]
    jobs = [Job(n, [sys.executable, "-c", TIMED, "3" if n == "b" else "0"], tmp_path / n / "log")
            for n in names]
    ended = []
    codes = run_jobs(jobs, 2, on_done=lambda job, code, seconds: ended.append((job.name, code)))
    assert codes == {"a": 0, "b": 3, "c": 0, "d": 0}
    assert sorted(ended) == [("a", 0), ("b", 3), ("c", 0), ("d", 0)]
    spans = []
    for n in names:
        fields = dict(line.split() for line in (tmp_path / n / "log").read_text().splitlines())
        spans.append((float(fields["start"]), float(fields["end"])))
    for t in [s for s, _ in spans] + [e for _, e in spans]:
        assert sum(s <= t <= e for s, e in spans) <= 2  # never more than two running


def test_an_interrupted_queue_terminates_its_running_jobs(tmp_path):
    sleeper = Job("sleeper", [sys.executable, "-c", "import os, time\n"
                              "print(os.getpid(), flush=True)\ntime.sleep(60)\n"],
                  tmp_path / "sleeper.log")
    # fails as soon as the sleeper is up; the caller is then interrupted (as by Ctrl-C)
    waiter = Job("waiter", [sys.executable, "-c", "import os, sys, time\n"
                            f"while not os.path.getsize({str(sleeper.log)!r}): time.sleep(0.02)\n"
                            "sys.exit(1)\n"], tmp_path / "waiter.log")

    def interrupt(job, code, seconds):
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_jobs([sleeper, waiter, Job("never", [sys.executable, "-c", ""], tmp_path / "never.log")],
                 2, on_done=interrupt)
    assert time.monotonic() - start < 30  # not the sleeper's 60 s
    with pytest.raises(ProcessLookupError):
        os.kill(int(sleeper.log.read_text()), 0)  # ended and reaped
    assert not (tmp_path / "never.log").exists()  # and nothing more was started
