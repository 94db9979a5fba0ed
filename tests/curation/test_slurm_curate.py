"""``sail slurm curate`` renders a curation as one array job (checked with --dry-run, without a
cluster): element i runs ``sail curate SPEC --out DIR --shard array``, which reads its shard
from SLURM's array variables; bad specs and options are refused before anything is queued."""

from __future__ import annotations

import pytest

from megatron_sail.curation.runner import parse_shard
from megatron_sail.errors import UsageError
from megatron_sail.cli import main as sail_main
from tests.curation.planted import write_planted


def main(args: list[str]) -> int:
    return sail_main(["slurm", *args])


def test_dry_run_script(tmp_path, capsys):
    spec = write_planted(tmp_path / "data")[0]
    out = tmp_path / "curated"
    assert main(["curate", str(spec), "--out", str(out), "--array", "3", "--gpus-per-node", "1",
                 "--workers", "2", "--time", "2:00:00", "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-2\n" in script and "#SBATCH --gpus-per-node=1\n" in script
    assert "--exclusive" not in script and "--mem" not in script    # elements share nodes
    assert (f"-m megatron_sail.cli curate {spec} --out {out} --shard array --workers 2"
            in script)
    assert not out.exists()     # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    (["--array", "0"], "--array must be >= 1"),
    (["--array", "2", "--workers", "0"], "--workers must be >= 1"),
    (["--array", "2", "extra"], "a curation takes no overrides"),
])
def test_refusals(tmp_path, capsys, args, message):
    spec = write_planted(tmp_path / "data")[0]
    assert main(["curate", str(spec), "--out", str(tmp_path / "o"), "--gpus-per-node", "0",
                 *args, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_bad_spec_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [missing.jsonl]\nstages: []\n")
    assert main(["curate", str(bad), "--out", str(tmp_path / "o"), "--array", "2",
                 "--gpus-per-node", "0", "--dry-run"]) == 2
    assert "missing.jsonl: neither a file nor a shard directory" in capsys.readouterr().err


def test_shard_from_the_array_environment(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("array") == (2, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_COUNT"):
        parse_shard("array")
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(UsageError):
            parse_shard(bad)
