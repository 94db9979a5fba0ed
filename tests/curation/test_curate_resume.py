"""A 2-worker ``sail curate`` killed midway (SIGKILL to its whole process group, after some
chunks of the judging phase finished) and rerun ends with output byte-identical to an
uninterrupted run, and the rerun does not score the records of finished chunks again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from megatron_sail import cli
from megatron_sail.curation.items import read_items
from tests.curation.planted import write_planted
from tests.curation.test_curate_planted import outputs

REPO = Path(__file__).resolve().parents[2]


def _finished_chunks(work: Path) -> list[Path]:
    return sorted((work / ".curate" / "phase-02").glob("chunk-*.jsonl"))


def test_killed_two_worker_run_reruns_to_identical_output(tmp_path, monkeypatch):
    spec = write_planted(tmp_path / "data", chunk=4, copies=3)[0]
    reference = tmp_path / "reference"
    assert cli.main(["curate", str(spec), "--out", str(reference), "--quiet"]) == 0

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), CURATE_JUDGE_DELAY="0.3",
               CURATE_JUDGE_LOG=str(tmp_path / "first.log"))
    proc = subprocess.Popen([sys.executable, "-m", "megatron_sail.cli", "curate", str(spec),
                             "--out", str(out), "--workers", "2", "--quiet"],
                            env=env, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_finished_chunks(out)) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no judging chunk finished in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _finished_chunks(out)
    assert not (out / "kept.jsonl").exists(), "the run finished before it could be killed"
    assert len(finished) < 10           # 10 chunks of 4 records: killed midway
    scored = {item.record["id"] for path in finished for item in read_items(path)}

    # The rerun (2 workers again) continues: finished chunks are not judged again.
    log = tmp_path / "rerun.log"
    monkeypatch.setenv("CURATE_JUDGE_LOG", str(log))
    assert cli.main(["curate", str(spec), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    rescored = set(log.read_text().split()) if log.exists() else set()
    assert scored and not scored & rescored
    assert outputs(out) == outputs(reference)
    assert json.loads((out / "report.json").read_text())["in"] == 38
