"""End to end against a real SLURM (munged + slurmctld + slurmd on localhost): `sail slurm submit`
of a 2-task CPU job, pre-emption warning -> checkpoint -> requeue -> resume, a sweep as an array
job, and the cases that must not be requeued."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.helpers import TINY
from tests.slurm.conftest import attempts, metrics, wait_for_iterations


def test_submit_runs_two_tasks_to_completion(slurm, tmp_path):
    run = tmp_path / "run"
    job = slurm.submit(run, "train.train_iters=3")
    info = slurm.wait(job)[job]

    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert [r["iteration"] for r in metrics(run)] == [1, 2, 3]
    saved = yaml.safe_load((run / "slurm/config.yaml").read_text())
    assert saved["run"]["output_dir"] == str(run) and saved["train"]["train_iters"] == 3
    log = (run / f"slurm/logs/sail-run-{job}.out").read_text()
    assert "layout: world 2 = TP 1 x PP 1 x DP 2" in log     # both srun tasks joined one world
    assert "[sail] finished: checkpoint at iteration 3 of 3" in log
    (record,) = attempts(run)
    assert record["outcome"] == "finished" and record["job_id"] == job and record["restart"] == 0
    status = slurm.status(run)
    assert (status["state"], status["iteration"], status["train_iters"], status["restarts"]) == \
        ("COMPLETED", 3, 3, 0)


def test_preemption_warning_checkpoints_requeues_and_resumes(slurm, tmp_path):
    run, total = tmp_path / "run", 30
    job = slurm.submit(run, f"train.train_iters={total}")
    wait_for_iterations(run, 3)
    # What --signal=B:USR1@N does before the time limit: USR1 to the batch shell only.
    slurm.client("scancel", "--batch", "--signal=USR1", job)

    again = slurm.sail("submit", str(run / "slurm/config.yaml"), "--gpus-per-node", "0",
                       "--ntasks-per-node", "2", check=False)
    assert again.returncode == 2 and f"job {job} is still queued or running" in again.stderr

    info = slurm.wait(job)[job]
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1"
    first, second = attempts(run)
    stopped_at = first["iteration_end"]
    assert first["outcome"] == "requeued" and first["restart"] == 0 and 3 <= stopped_at < total
    assert second["job_id"] == first["job_id"] == job        # requeued, not resubmitted
    assert (second["restart"], second["iteration_start"], second["iteration_end"],
            second["outcome"]) == (1, stopped_at, total, "finished")
    assert (run / f"checkpoints/iter_{stopped_at:07d}/sail_checkpoint.json").is_file()
    assert [r["iteration"] for r in metrics(run)] == list(range(1, total + 1))
    log = (run / f"slurm/logs/sail-run-{job}.out").read_text()
    assert f"stopping at iteration {stopped_at} (signal 10)" in log
    assert f"resumed from {run}/checkpoints/iter_{stopped_at:07d} at iteration {stopped_at}" in log
    status = slurm.status(run)
    assert (status["state"], status["restarts"], status["iteration"]) == ("COMPLETED", 1, total)


def test_sweep_runs_as_one_array_job(slurm, tmp_path):
    root = tmp_path / "sweep"
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(yaml.safe_dump({
        "config": TINY,
        "overrides": {"train.train_iters": 3, "train.eval_interval": None,
                      "run.tensorboard": False, "run.output_dir": str(root)},
        "grid": {"optimizer.lr": [1.0e-3, 3.0e-3]},
    }))
    proc = slurm.sail("sweep", str(sweep), "--gpus-per-node", "0", "--ntasks-per-node", "1")
    job = proc.stdout.split("\n")[0].removeprefix("Submitted batch job ")
    assert job.isdigit(), proc.stdout
    jobs = slurm.wait(f"{job}_0", f"{job}_1")

    for index, lr in enumerate((1.0e-3, 3.0e-3)):
        info = jobs[f"{job}_{index}"]
        assert info["JobState"] == "COMPLETED" and info["ArrayJobId"] == job
        run = root / f"{index:02d}_lr-{lr}"
        assert yaml.safe_load((run / "slurm/config.yaml").read_text())["optimizer"]["lr"] == lr
        assert [r["iteration"] for r in metrics(run)] == [1, 2, 3]
        assert (root / f"logs/sail-sweep-lr-{job}_{index}.out").is_file()
        assert attempts(run)[-1]["job_id"] == f"{job}_{index}"
    status = slurm.status(root)
    assert [(e["job"], e["state"], e["iteration"]) for e in status["elements"]] == \
        [(f"{job}_0", "COMPLETED", 3), (f"{job}_1", "COMPLETED", 3)]


def test_failures_and_the_restart_limit_are_not_requeued(slurm, tmp_path):
    broken, limited = tmp_path / "broken", tmp_path / "limited"
    # A real error at start-up (exit 2); and a run allowed no restarts that gets the warning.
    failing = slurm.submit(broken, "train.train_iters=3", "checkpoint.load=/nonexistent", tasks=1)
    capped = slurm.submit(limited, "train.train_iters=40", tasks=1, extra=("--max-restarts", "0"))
    wait_for_iterations(limited, 2)
    slurm.client("scancel", "--batch", "--signal=USR1", capped)
    jobs = slurm.wait(failing, capped)

    assert (jobs[failing]["JobState"], jobs[failing]["ExitCode"], jobs[failing]["Restarts"]) == \
        ("FAILED", "2:0", "0")
    (record,) = attempts(broken)
    assert record["outcome"] == "failed" and record["exit_code"] == 2
    assert "/nonexistent: checkpoint path does not exist" in \
        (broken / f"slurm/logs/sail-broken-{failing}.out").read_text()

    assert (jobs[capped]["JobState"], jobs[capped]["ExitCode"], jobs[capped]["Restarts"]) == \
        ("FAILED", "75:0", "0")
    (record,) = attempts(limited)
    assert record["outcome"] == "restart-limit"
    assert (limited / f"checkpoints/iter_{record['iteration_end']:07d}/sail_checkpoint.json").is_file()


def test_srun_task_count_that_does_not_fit_the_layout_is_a_clear_error(slurm, tmp_path):
    """`sail train` under srun takes its world from SLURM_NTASKS and refuses a layout that
    does not fit it, on every rank (srun's exit code 2) before any process group exists; rank 0
    alone reports it, so the log holds one report, not one per rank."""
    proc = subprocess.run(
        ["srun", "--ntasks=2", "--label", sys.executable, "-m", "megatron_sail.cli", "train", TINY,
         "parallel.pipeline_model_parallel_size=4", f"run.output_dir={tmp_path}"],
        capture_output=True, text=True, env=slurm.env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert ("0: sail train: error: invalid configuration:\n0:   - world size 2 is "
            "not divisible by tensor x pipeline x context parallel size 1 x 4 x 1 = 4") in output
    assert "1: sail train: error" not in output


def test_odd_but_legitimate_paths_and_names_reach_sbatch_intact(slurm, tmp_path):
    """A run directory with a space and a quote lands in double-quoted #SBATCH lines and a
    shlex-quoted RUN_DIR: sbatch and the batch shell must both read it back exactly."""
    run = tmp_path / "it's a run"
    job = slurm.submit(run, "train.train_iters=2", extra=("--job-name", "lr-3e-4_v1.2@a:b"))
    info = slurm.wait(job)[job]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert info["JobName"] == "lr-3e-4_v1.2@a:b"
    assert [r["iteration"] for r in metrics(run)] == [1, 2]
    assert "[sail] finished" in (run / f"slurm/logs/lr-3e-4_v1.2@a:b-{job}.out").read_text()
