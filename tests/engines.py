"""Real engines for the cluster tests: a single-node SLURM and a PostgreSQL server.

Both are Debian's packages (`.ci/run` installs them: slurm-wlm, postgresql), started here in a
temporary folder and stopped afterwards; nothing is mocked. Facts and quirks of this setup are
in ../shared/reference/tooling-facts.md section 5.1: no systemd (the daemons are started
directly and fork), no accounting database (so no sacct), and a requeued job waits
``cred_expire + 1`` seconds before it may start again (5 s here instead of 120).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
POSTGRES_BIN = Path("/usr/lib/postgresql")


def slurm_missing() -> str | None:
    """Why a real SLURM cannot be started here (None: it can)."""
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"slurm-wlm is not installed (missing {', '.join(missing)}; see .ci/run)"
    if os.geteuid() != 0:
        return "the single-node SLURM of the tests runs its daemons as root"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Slurm:
    """A running single-node SLURM: ``env`` points sbatch/squeue/scontrol at it."""

    root: Path
    conf: Path
    node: str
    env: dict[str, str]
    processes: list[int]

    def stop(self) -> None:
        subprocess.run(["scancel", "--quiet", "--user", "root"], env=self.env, check=False,
                       capture_output=True, timeout=20)
        for name in ("slurmd", "slurmctld"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                (self.root / f"{n}.pid").exists() and _alive(self.root / f"{n}.pid")
                for n in ("slurmd", "slurmctld")):
            time.sleep(0.2)


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
        return True
    except (ProcessLookupError, ValueError, FileNotFoundError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_slurm(root: Path, cpus: int | None = None, partition: str = "debug") -> Slurm:
    """Write a one-node configuration under ``root`` and start slurmctld and slurmd."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=lafite-test",
        f"SlurmctldHost={node}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/none",
        "CredType=cred/none",
        "AuthInfo=cred_expire=5",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "JobRequeue=1",
        "MinJobAge=300",
        "KillWait=5",
        "MailProg=/bin/true",
        "SchedulerParameters=sched_interval=2,bf_interval=1",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"SlurmctldPort={free_port()}",  # free ports: two test SLURMs may run side by side
        f"SlurmdPort={free_port()}",
        f"NodeName={node} CPUs={cpus} RealMemory={max(total_mb - 1024, 512)} State=UNKNOWN",
        f"PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run([_which("slurmctld"), "-c", "-i"], env=env, check=True, timeout=30)
    subprocess.run([_which("slurmd")], env=env, check=True, timeout=30)
    slurm = Slurm(root, conf, node, env, [])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        if state.startswith("idle"):
            return slurm
        time.sleep(0.2)
    slurm.stop()
    raise RuntimeError(f"the test SLURM did not come up (sinfo says {state!r}); logs in {root / 'log'}")


# -- PostgreSQL ----------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    versions = sorted(POSTGRES_BIN.glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def postgres_missing() -> str | None:
    if _postgres_bin() is None:
        return "postgresql is not installed (see .ci/run)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[cluster]')"
    return None


@dataclass
class Postgres:
    """A running PostgreSQL cluster in a temporary folder, reachable on localhost:``port``."""

    root: Path
    port: int
    bin: Path
    as_user: list[str]

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://lafite:lafite@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run([*self.as_user, str(self.bin / "createdb"), "-h", "127.0.0.1", "-p",
                        str(self.port), "-U", "lafite", name], check=True, capture_output=True,
                       env={**os.environ, "PGPASSWORD": "lafite"}, timeout=30)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
                        "-m", "immediate", "stop"], check=False, capture_output=True, timeout=30)


def start_postgres(root: Path) -> Postgres:
    """initdb + pg_ctl start (as user postgres when run as root: initdb refuses root)."""
    bin_dir = _postgres_bin()
    assert bin_dir is not None
    root.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        # The data folder's parents must be traversable by the postgres user.
        for parent in [root, *root.parents]:
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
        shutil.chown(root, "postgres")
    data = root / "data"
    password = root / "pw"
    password.write_text("lafite\n")
    os.chmod(password, 0o644)
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "lafite",
                    "--auth=md5", f"--pwfile={password}", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    sockets = root / "sock"
    sockets.mkdir()
    if as_user:
        shutil.chown(sockets, "postgres")
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(root / "postgres.log"), "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True, timeout=120)
    return Postgres(root, port, bin_dir, as_user)
