"""A real single-node SLURM cluster (munged + slurmctld + slurmd) in a temporary directory.

Everything it needs lives under ``root``: munge key and socket, slurm.conf, state, spool, logs.
Clients reach it through ``SLURM_CONF``; the daemons are stopped by their PIDs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


class SlurmUnavailable(RuntimeError):
    """slurm-wlm/munge are missing and could not be installed (the reason is the message)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def ensure_installed(timeout: int = 600) -> None:
    """Install slurm-wlm + munge with apt-get when any binary is missing (CI runs as root)."""
    if all(_which(b) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm/munge not installed and no root apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0:
                raise SlurmUnavailable(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"apt-get did not finish in {timeout} s") from None
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        raise SlurmUnavailable(f"installed slurm-wlm/munge but {missing} are still missing")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SLURM_CONF = """\
ClusterName=sailtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s)
AuthInfo=socket={munge_socket},cred_expire=10
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=30
MinJobAge=600
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 60) -> None:
        munge_dir = self.root / "munge"
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge(munge_dir)
        self.conf.write_text(SLURM_CONF.format(
            root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(), cpus=self.cpus,
            munge_socket=munge_dir / "munge.socket"))
        log = open(self.root / "log" / "daemons.out", "ab")
        # -D: foreground, so the PID we hold is the daemon's; -i: ignore stale state.
        self.procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)],
                                           stdout=log, stderr=log, env=self.env))
        self.procs.append(subprocess.Popen([_which("slurmd"), "-D", "-N", "localhost",
                                            "-f", str(self.conf)],
                                           stdout=log, stderr=log, env=self.env))
        self._wait_idle(timeout)

    def _start_munge(self, munge_dir: Path) -> None:
        import pwd

        # munged insists: the socket directory traversable by all, the key private to munge.
        key_dir = munge_dir / "key"
        key_dir.mkdir(parents=True, exist_ok=True)
        munge_dir.chmod(0o755)
        key_dir.chmod(0o700)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        user = pwd.getpwnam("munge")
        for path in (munge_dir, key_dir, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        socket_path = munge_dir / "munge.socket"
        self.procs.append(subprocess.Popen(
            [_which("munged"), "-F", f"--key-file={key}", f"--socket={socket_path}",
             f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
             f"--seed-file={key_dir / 'munged.seed'}"],
            user="munge", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                err = self.procs[-1].stderr.read().decode() if self.procs[-1].stderr else ""
                self.stop()
                raise SlurmUnavailable(f"munged did not start: {err.strip()}")
            time.sleep(0.1)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                break
            proc = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"],
                                  capture_output=True, text=True, env=self.env)
            state = proc.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.3)
        logs = "".join((self.root / "log" / f).read_text()[-2000:]
                       for f in ("slurmctld.log", "slurmd.log") if (self.root / "log" / f).exists())
        self.stop()
        raise SlurmUnavailable(f"the local SLURM node did not become idle (state {state!r}); "
                               f"logs:\n{logs}")

    def stop(self) -> None:
        """Daemons in reverse start order: slurmd (ends its job steps), slurmctld, munged."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


if __name__ == "__main__":  # manual experiments: python -m tests.slurm.cluster DIR; stop: kill PID
    import signal
    import sys

    ensure_installed()
    cluster = LocalSlurm(Path(sys.argv[1]))
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}   # kill {os.getpid()} to stop", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        cluster.stop()
