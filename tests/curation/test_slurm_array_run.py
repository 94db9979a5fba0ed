"""``sail slurm curate`` on a real local SLURM cluster: two array elements, each
``sail curate --shard array``, meet at dedup and finish with the output of a one-process run."""

from __future__ import annotations

import re

import pytest

from megatron_sail import cli
from tests.curation.planted import write_planted
from tests.curation.test_curate_planted import outputs


@pytest.mark.slow
def test_array_job_equals_one_process(slurm, tmp_path):
    spec = write_planted(tmp_path / "data")[0]
    reference = tmp_path / "reference"
    assert cli.main(["curate", str(spec), "--out", str(reference), "--quiet"]) == 0
    out = tmp_path / "array"
    proc = slurm.sail("curate", str(spec), "--out", str(out), "--array", "2",
                      "--gpus-per-node", "0", "--cpus-per-task", "1")
    job = re.match(r"Submitted batch job (\d+)\n", proc.stdout).group(1)
    jobs = slurm.wait(f"{job}_0", f"{job}_1", timeout=400)
    logs = "\n".join(p.read_text() for p in sorted((out / "slurm/logs").glob("*.out")))
    assert all(j["JobState"] == "COMPLETED" for j in jobs.values()), logs
    assert outputs(out) == outputs(reference)
    assert logs.count("sail curate: 22 records: kept 8, dropped 14") == 2, logs   # both elements
