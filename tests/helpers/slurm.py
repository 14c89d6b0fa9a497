"""A real single-node Slurm cluster on loopback, started and stopped by the test.

Debian bookworm's ``slurm-wlm`` 22.05 and ``munge`` (scripts/bootstrap.sh installs them),
configured the way DESIGN.md §4 measured: no cgroups (``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``), everything as root (CI runs as root: ``SlurmUser``/``SlurmdUser``
root), the node named ``localhost`` and ``slurmd -N localhost`` whatever this machine is
called, credentials that expire after 5 s (``AuthInfo=cred_expire=5``: a requeued job runs
again ~6 s later instead of ~2 min), and a fresh ``StateSaveLocation``, munge key and
socket in the test's own folder, so nothing of the machine's Slurm or munge is used or
touched.  ``SchedulerParameters=sched_interval=1`` lets the scheduler look every second
(default 60 s) so the requeued job starts as soon as it is eligible; ``KillWait=5`` is how
long Slurm waits between SIGTERM and SIGKILL when it stops a job.

Clients (``sbatch``, ``scontrol``, ``squeue``) find the cluster through ``SLURM_CONF``;
the remediator under test gets the same variable.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from helpers.common import free_port, wait_for

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")


def require() -> None:
    """Every Slurm and munge binary the tests use; a missing one is a failure, not a skip."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and
               not Path("/usr/sbin", d).exists()]
    if missing:
        raise AssertionError(f"not installed: {', '.join(missing)} (scripts/bootstrap.sh "
                             "installs slurm-wlm and munge)")


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


SLURM_CONF = """\
ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """munged + slurmctld + slurmd as children of the test, all state under ``root``."""

    def __init__(self, root: Path, cluster: str = "tgtest") -> None:
        self.root = root
        self.cluster = cluster
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "socket"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_seconds: dict[str, float] = {}

    @property
    def env(self) -> dict[str, str]:
        """Our environment plus SLURM_CONF: what every Slurm client needs."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - closed by stop()
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env)
        out.close()

    def start(self) -> None:
        require()
        t0 = time.monotonic()
        munge = self.root / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        self._spawn("munged", [_bin("munged"), "--foreground", "--force",
                               f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={munge / 'munged.log'}",
                               f"--seed-file={munge / 'munged.seed'}"])
        wait_for(self.munge_socket.exists, timeout=20, what="munged's socket")
        self.startup_seconds["munged"] = time.monotonic() - t0
        (self.root / "state").mkdir()
        (self.root / "spool").mkdir()
        self.conf.write_text(SLURM_CONF.format(
            cluster=self.cluster, host=socket.gethostname().split(".")[0],
            ctld_port=free_port(), d_port=free_port(), munge_socket=self.munge_socket,
            root=self.root, cpus=max(2, os.cpu_count() or 2)))
        t1 = time.monotonic()
        self._spawn("slurmctld", [_bin("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_bin("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        wait_for(self.node_idle, timeout=60, interval=0.1,
                 what=f"the Slurm node to be idle (logs in {self.root})")
        self.startup_seconds["slurmctld+slurmd"] = time.monotonic() - t1
        self.startup_seconds["total"] = time.monotonic() - t0

    def node_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}: "
                                     f"{self.log_tail(name)}")
        res = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=self.env,
                             capture_output=True, text=True, check=False)
        return res.returncode == 0 and res.stdout.strip() == "idle"

    def log_tail(self, name: str) -> str:
        texts = []
        for path in (self.root / f"{name}.out", self.root / f"{name}.log",
                     self.root / "munge" / "munged.log"):
            if path.exists():
                texts.append(f"{path}:\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(texts)

    def run(self, *argv: str, cwd: Path | None = None,
            env: Mapping[str, str] | None = None) -> str:
        res = subprocess.run(list(argv), env=dict(env) if env is not None else self.env,
                             cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {res.returncode}: "
                                 f"{res.stdout}{res.stderr}")
        return res.stdout

    def sbatch(self, script: Path, *options: str, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> str:
        out = self.run("sbatch", "--parsable", *options, str(script), cwd=cwd, env=env)
        m = re.match(r"^(\d+)", out.strip())
        assert m, out
        return m.group(1)

    def show(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a mapping (the remediator's own parser)."""
        from remediator.slurm import parse_show

        return parse_show(self.run("scontrol", "-o", "show", "job", job_id))

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # This cluster's jobs only (SLURM_CONF): their slurmstepd outlive slurmd.
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["scancel", f"--user={os.getuid()}"], env=self.env,
                               timeout=10, capture_output=True, check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and subprocess.run(
                        ["squeue", "--noheader"], env=self.env, timeout=10,
                        capture_output=True, text=True, check=False).stdout.strip():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A fresh cluster in a short /tmp folder (munge's socket path must stay short)."""
    root = Path(tempfile.mkdtemp(prefix="tg-slurm-"))
    root.chmod(0o755)
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
