"""Generated scripts and sweep files without a cluster (`--dry-run`): what a reviewer of an H100
job script checks, the CPU-job minimum, site overrides, containers, and refusals before sbatch."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from megatron_sail.launch.cli import main
from tests.helpers import REPO, TINY

H100 = ["--nodes", "4", "--gpus-per-node", "8", "--partition", "h100", "--time", "04:00:00",
        "--account", "proj", "model.preset=sailvl2-8b", "parallel.tensor_model_parallel_size=8",
        "parallel.pipeline_model_parallel_size=2", "train.precision=bf16"]


def dry_run(capsys, *args: str, command: str = "submit") -> str:
    assert main([command, *args, "--dry-run"]) == 0, capsys.readouterr().err
    script = capsys.readouterr().out
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    return script


def directives(script: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)$", script, re.M)


def test_h100_job_4_nodes_x_8_gpus(capsys, tmp_path):
    script = dry_run(capsys, TINY, f"run.output_dir={tmp_path}/8b", *H100)
    assert directives(script) == [
        "--job-name=sail-8b", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8",
        "--mem=0", "--exclusive", "--partition=h100", "--account=proj", "--time=04:00:00",
        "--signal=B:USR1@300", "--requeue", "--open-mode=append", f"--chdir={os.getcwd()}",
        f"--output={tmp_path}/8b/slurm/logs/%x-%j.out"]
    for line in ('export CUDA_DEVICE_MAX_CONNECTIONS="1"', 'export NCCL_IB_TIMEOUT="22"',
                 'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
                 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "srun --kill-on-bad-exit=1 --label \\",
                 '-m megatron_sail.cli train "$RUN_DIR/slurm/config.yaml" &',
                 f"RUN_DIR={tmp_path}/8b; TRAIN_ITERS=300", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script, line
    assert not (tmp_path / "8b").exists()   # a dry run writes nothing


def test_cpu_job_requests_only_its_tasks(capsys, tmp_path):
    script = dry_run(capsys, TINY, f"run.output_dir={tmp_path}/cpu", "--gpus-per-node", "0",
                     "--ntasks-per-node", "2")
    flags = {d.split("=")[0] for d in directives(script)}
    assert {"--ntasks-per-node", "--nodes"} <= flags
    assert not flags & {"--gpus-per-node", "--mem", "--cpus-per-task", "--exclusive", "--time"}


def test_site_file_overrides_the_profile(capsys, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "setup": ["module load cuda/12.4"], "max_restarts": 7, "signal_seconds": 600,
        "python": "/opt/env/bin/python",
        "gpu_job": {"cpus_per_task": 16}, "sbatch": {"qos": "high", "constraint": "h100"},
        "srun_args": ["--cpu-bind=none"],
        "env": {"NCCL_IB_TIMEOUT": None, "NCCL_SOCKET_IFNAME": "=ib0", "X": 'a "q" $HOME'},
    }))
    script = dry_run(capsys, TINY, f"run.output_dir={tmp_path}/r", *H100, "--site", str(site))
    flags = directives(script)
    assert {"--cpus-per-task=16", "--qos=high", "--constraint=h100",
            "--signal=B:USR1@600"} <= set(flags)
    assert "NCCL_IB_TIMEOUT" not in script
    for line in ('export NCCL_SOCKET_IFNAME="=ib0"', 'export X="a \\"q\\" $HOME"',
                 "module load cuda/12.4", "MAX_RESTARTS=7", "--label --cpu-bind=none \\",
                 'export PATH=/opt/env/bin:"$PATH"', "/opt/env/bin/python -m megatron_sail.cli"):
        assert line in script, line
    assert main(["submit", TINY, *H100, "--max-restarts", "2", "--dry-run"]) == 0
    assert "MAX_RESTARTS=2" in capsys.readouterr().out

    site.write_text(yaml.safe_dump({"sbatch": {"nodes": 2}}))
    assert main(["submit", TINY, *H100, "--site", str(site), "--dry-run"]) == 2
    assert "'nodes' is set by sail slurm itself" in capsys.readouterr().err


def test_container_image_replaces_the_python_environment(capsys, tmp_path):
    script = dry_run(capsys, TINY, f"run.output_dir={tmp_path}/c", *H100,
                     "--container-image", "nvcr.io/nvidia/pytorch:25.01-py3")
    srun = script[script.index("srun "):script.index("&\n", script.index("srun "))]
    assert "--container-image=nvcr.io/nvidia/pytorch:25.01-py3" in srun
    assert f"--container-mounts={REPO}:{REPO}," in srun and f"{tmp_path}:{tmp_path}" in srun
    assert "python -m megatron_sail.cli train" in srun
    assert f'export PYTHONPATH={REPO}"${{PYTHONPATH:+:$PYTHONPATH}}"' in script


@pytest.mark.parametrize("args, message", [
    (["parallel.tensor_model_parallel_size=4", "--gpus-per-node", "0", "--ntasks-per-node", "2"],
     "world size 2 is not divisible by tensor x pipeline x context parallel size 4 x 1 x 1"),
    (["--gpus-per-node", "0"], "needs --ntasks-per-node"),
    (["--gpus-per-node", "4", "--ntasks-per-node", "8"], "ranks would share GPUs"),
    (["--gpus-per-node", "8", "--time", "4h"], "is not a SLURM time"),
    (["train.no_such_key=1", "--gpus-per-node", "8"], "unknown config key 'train.no_such_key'"),
])
def test_refused_before_anything_is_queued(capsys, args, message):
    assert main(["submit", TINY, *args, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_example_sweep_is_one_array_job(capsys, tmp_path):
    script = dry_run(capsys, f"{REPO}/examples/sweeps/tiny-lr.yaml", "--gpus-per-node", "0",
                     "--ntasks-per-node", "1", f"run.output_dir={tmp_path}", command="sweep")
    assert "--array=0-3%4" in directives(script)
    assert f"--output={tmp_path}/logs/%x-%A_%a.out" in directives(script)
    cases = re.findall(r"^    (\d)\) RUN_DIR=(\S+); TRAIN_ITERS=(\d+) ;;$", script, re.M)
    assert cases == [("0", f"{tmp_path}/00_lr-0.001_num_layers-2", "100"),
                     ("1", f"{tmp_path}/01_lr-0.001_num_layers-4", "100"),
                     ("2", f"{tmp_path}/02_lr-0.003_num_layers-2", "100"),
                     ("3", f"{tmp_path}/03_lr-0.003_num_layers-4", "100")]


def test_sweep_grid_times_list_and_refusals(capsys, tmp_path):
    from megatron_sail.launch.sweep import SweepError, load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "config": TINY, "grid": {"optimizer.lr": [0.001, 0.003]},
        "list": [{"model.freeze": ["vision", "llm"]}, {"train.seed": 7}]}))
    sweep = load_sweep(path)
    assert [e.name for e in sweep.elements] == [
        "00_freeze-vision+llm_lr-0.001", "01_freeze-vision+llm_lr-0.003",
        "02_seed-7_lr-0.001", "03_seed-7_lr-0.003"]
    assert sweep.elements[0].overrides == ['model.freeze=["vision", "llm"]', "optimizer.lr=0.001"]

    assert main(["sweep", str(path), "optimizer.lr=0.01", "--gpus-per-node", "0",
                 "--ntasks-per-node", "1", "--dry-run"]) == 2
    assert "'optimizer.lr' is swept" in capsys.readouterr().err
    # every element is validated; all problems are reported together
    path.write_text(yaml.safe_dump({"config": TINY, "grid": {
        "parallel.tensor_model_parallel_size": [2, 4], "train.seed": [1]}}))
    assert main(["sweep", str(path), "--gpus-per-node", "0", "--ntasks-per-node", "1",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "element 00_tensor_model_parallel_size-2_seed-1" in err and "element 01_" in err
    path.write_text(yaml.safe_dump({"grid": {"run.output_dir": ["a", "b"]}}))
    with pytest.raises(SweepError, match="run.output_dir cannot be swept"):
        load_sweep(path)


def test_saved_config_is_the_config_the_job_trains(tmp_path):
    """The job trains RUN_DIR/slurm/config.yaml: loading it must give the submitted config."""
    from megatron_sail.config import config_to_dict, load_config, save_config
    from megatron_sail.launch.resources import make_request
    from megatron_sail.launch.site import load_site
    from megatron_sail.launch.submit import resolve

    request = make_request(1, 0, 2, load_site())
    run = resolve(TINY, ["model.freeze=vision", "optimizer.lr=2e-3",
                         f"run.output_dir={tmp_path}/r"], request)
    save_config(run.cfg, tmp_path / "saved.yaml")
    assert config_to_dict(load_config(tmp_path / "saved.yaml")) == config_to_dict(run.cfg)


def test_first_host_of_a_slurm_hostlist():
    from megatron_sail.distributed.runtime import first_host

    assert first_host("gpu[003-010,12],cpu1") == "gpu003"
    assert first_host("node7,node8") == "node7"
    assert first_host("h100-a[1]") == "h100-a1"


@pytest.mark.parametrize("option", ["--job-name", "--partition", "--account", "--mem", "--time"])
def test_values_with_a_newline_and_a_command_are_refused_and_nothing_runs(tmp_path, option):
    """Not a dry run: an `sbatch` on PATH would leave a mark if it were ever called."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-called\n")
    (bindir / "sbatch").chmod(0o755)
    marker = tmp_path / "injected"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_sail.cli", "slurm", "submit", TINY,
         f"run.output_dir={tmp_path}/run", "--gpus-per-node", "0", "--ntasks-per-node", "1",
         option, f"ok\ntouch {marker}"], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"sail slurm submit: error: {option} 'ok\\ntouch ")
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "sbatch-called").exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("site, message", [
    ({"env": {"X": "$(touch /tmp/x)"}}, "may refer to variables"),
    ({"env": {"X": "a`id`"}}, "may refer to variables"),
    ({"env": {"X": "a\necho hi"}}, "newline or control character"),
    ({"sbatch": {"qos": "high\necho hi"}}, "--qos 'high\\necho hi' is not a QOS name"),
    ({"sbatch": {"constraint": "a100\necho hi"}}, "newline or control character"),
    ({"sbatch": {"bad\nname": "x"}}, "is not an option name"),
    ({"setup": ["module load cuda\necho hi"]}, "newline or control character"),
    ({"gpu_job": {"mem": "80G\necho hi"}}, "--mem '80G\\necho hi' is not a SLURM memory"),
    ({"srun_args": ["--mpi=none\necho hi"]}, "newline or control character"),
])
def test_site_values_are_checked_before_rendering(capsys, tmp_path, site, message):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    assert main(["submit", TINY, f"run.output_dir={tmp_path}/r", "--gpus-per-node", "4",
                 "--site", str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_odd_but_legitimate_values_are_quoted(capsys, tmp_path, monkeypatch):
    """Spaces and a single quote in the run directory and the working directory, a $ in an
    environment reference: the script keeps each as one word, exactly."""
    odd = tmp_path / "it's a run dir"
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"env": {"SCRATCH_DIR": "${TMPDIR:-/tmp}/sail run"},
                                    "sbatch": {"constraint": "a100 80gb"}}))
    script = dry_run(capsys, TINY, f"run.output_dir={odd}", "--gpus-per-node", "4",
                     "--job-name", "lr-3e-4_v1.2", "--mem", "0", "--time", "1-00:00",
                     "--site", str(site))
    assert f'#SBATCH --chdir="{workdir}"' in script
    assert f'#SBATCH --output="{odd}/slurm/logs/%x-%j.out"' in script
    assert '#SBATCH --constraint="a100 80gb"' in script
    assert "#SBATCH --job-name=lr-3e-4_v1.2" in script
    selection = next(line for line in script.splitlines() if line.startswith("RUN_DIR="))
    env_line = next(line for line in script.splitlines() if line.startswith("export SCRATCH_DIR="))
    shown = subprocess.run(["bash", "-c", f'{selection}\n{env_line}\nprintf "%s\\n" '
                            '"$RUN_DIR" "$TRAIN_ITERS" "$SCRATCH_DIR"'],
                           capture_output=True, text=True, env={"TMPDIR": "/scratch"})
    assert shown.stdout.splitlines() == [str(odd), "300", "/scratch/sail run"]
