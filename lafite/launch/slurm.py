"""SLURM through submitit: one job per run (or job build, or tuning worker), requeued on
preemption and at its time limit, and what the scheduler says about each.

- **Tasks.** :class:`RunTask` executes a run ticket (one SLURM task per GPU, each a DDP rank
  through submitit's torch environment mapping); :class:`BuildTask` builds a shared job;
  :class:`TuneWorkerTask` is one Optuna worker. Each has ``checkpoint()``: on USR2 (sent
  ``signal_delay_s`` before the time limit, and by a preemption) submitit calls it, requeues the
  job and exits; the requeued job resumes from the run's last checkpoint under the same MLflow
  run (the ticket names it).
- **Submission records** (``<workspace>/slurm/submitted/*.json``) say which SLURM job holds a
  run hash or builds a job hash, so that overlapping ``run`` commands never submit the same work
  twice: a record whose job is still queued or running is reused (rows depend on it), any other
  is replaced.
- **Scheduler state** comes from ``squeue`` (active jobs and those finished within MinJobAge),
  then ``sacct`` where accounting exists, then the job's own log (SLURM writes "CANCELLED ...
  DUE TO TIME LIMIT" or an oom-kill line into it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lafite.errors import UserError
from lafite.launch.settings import SlurmSettings
from lafite.locks import exclusive
from lafite.workspace import Workspace

COMMAND_TIMEOUT_S = 10.0
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                 "RESV_DEL_HOLD", "SPECIAL_EXIT"}


def slurm_dir(workspace: Workspace) -> Path:
    return workspace.root / "slurm"


# -- checking the cluster ------------------------------------------------------------------------


def _command(args: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"`{' '.join(args)}` did not answer within {COMMAND_TIMEOUT_S:g} s "
                        f"({what}); is slurmctld reachable from this machine?") from None


def check_cluster(settings: SlurmSettings) -> None:
    """Fail within seconds, before anything is submitted or recorded, on a missing sbatch, an
    unreachable controller, an unknown partition or a GPU count no node of it can give."""
    if shutil.which("sbatch") is None:
        raise UserError(
            "--launcher slurm: no `sbatch` on PATH (searched "
            f"{os.environ.get('PATH', '')}); run from a SLURM login node, or add the SLURM "
            "client's bin folder to PATH, or use --launcher local or torchrun")
    found = _command(["sinfo", "-h", "-o", "%P|%G|%c"], "listing partitions")
    if found.returncode != 0:
        raise UserError(f"--launcher slurm: `sinfo` failed: {found.stderr.strip() or found.stdout.strip()}; "
                        "is slurmctld running and SLURM_CONF right?")
    partitions: dict[str, list[str]] = {}
    default = ""
    for line in found.stdout.splitlines():
        name, _, gres = line.partition("|")
        gres = gres.rpartition("|")[0]
        if name.endswith("*"):
            name = name[:-1]
            default = default or name
        partitions.setdefault(name, []).append(gres)
    partition = settings.partition or default
    if settings.partition and settings.partition not in partitions:
        raise UserError(f"--partition {settings.partition!r}: SLURM has no such partition "
                        f"(sinfo lists {', '.join(sorted(partitions)) or 'none'}); set it with "
                        "--partition or in the cluster file (lafite-repro run --help)")
    if settings.gpus_per_run:
        most = max((_gpu_count(g) for g in partitions.get(partition, [])), default=0)
        if most < settings.gpus_per_run:
            raise UserError(
                f"--gpus-per-run {settings.gpus_per_run}: no node of partition "
                f"{partition or '(default)'} has that many GPUs (the most is {most}, from "
                f"sinfo's GRES {sorted(set(partitions.get(partition, [])))}); ask for fewer "
                "or choose another --partition")


def _gpu_count(gres: str) -> int:
    """GPUs in a sinfo GRES field such as ``gpu:4``, ``gpu:a100:8(S:0-1)`` or ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


# -- tasks ---------------------------------------------------------------------------------------


def _export_distributed(tasks: int, gpus: int) -> None:
    if tasks > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=gpus > 0, overwrite=True)


class RunTask:
    """Execute one run ticket; requeued with the same ticket on USR2."""

    def __init__(self, ticket_path: str, tasks: int = 1, gpus: int = 0) -> None:
        self.ticket_path, self.tasks, self.gpus = ticket_path, tasks, gpus

    def __call__(self) -> str:
        import submitit

        from lafite.launch.execute import (
            TAG_LAUNCHER,
            TAG_SLURM_JOB,
            TAG_SLURM_LOG,
            TAG_SLURM_RESTARTS,
            execute,
        )
        from lafite.launch.ticket import read_ticket

        _export_distributed(self.tasks, self.gpus)
        env = submitit.JobEnvironment()
        tags = {TAG_LAUNCHER: "slurm", TAG_SLURM_JOB: str(env.job_id),
                TAG_SLURM_LOG: str(env.paths.stderr).replace("%t", "0"),
                TAG_SLURM_RESTARTS: os.environ.get("SLURM_RESTART_COUNT", "0")}
        status = execute(read_ticket(Path(self.ticket_path)), tags)
        if status == "failed":
            raise RuntimeError(f"run {self.ticket_path} failed; the reason is in its MLflow run")
        return status

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RunTask(self.ticket_path, self.tasks, self.gpus))


class BuildTask:
    """Build one shared job (world CLIP, inspector, inference model, pre-trained generator).
    A build has no mid-way checkpoint: a requeued build starts again."""

    def __init__(self, job: Any, workspace_root: str) -> None:
        self.job, self.workspace_root = job, workspace_root

    def __call__(self) -> str:
        from lafite import jobs as jobs_mod

        return str(jobs_mod.ensure(self.job, Workspace.resolve(self.workspace_root),
                                   progress=False))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(BuildTask(self.job, self.workspace_root))


class TuneWorkerTask:
    """One Optuna worker of a study on a shared (PostgreSQL or journal) storage. Requeued, it
    joins the study again; the trial it was running is failed by its stale heartbeat and
    retried with the same parameters."""

    def __init__(self, worker_args: dict[str, Any]) -> None:
        self.worker_args = worker_args

    def __call__(self) -> int:
        from lafite.tuning import WorkerArgs, work

        return work(WorkerArgs(**self.worker_args))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TuneWorkerTask(self.worker_args))


# -- submitting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    job_id: str
    log: str
    name: str


def job_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "lafite-" + "-".join(parts))[:120]


def executor_parameters(settings: SlurmSettings, name: str,
                        after: list[str] | None = None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one job (sbatch options in submitit's names)."""
    params: dict[str, Any] = {
        "job_name": name, "time": settings.time, "nodes": 1,
        "ntasks_per_node": max(settings.gpus_per_run, 1),
        "cpus_per_task": settings.cpus_per_task, "signal_delay_s": settings.signal_delay_s,
        "stderr_to_stdout": False,
    }
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(settings, key):
            params[key] = getattr(settings, key)
    if settings.gpus_per_run:
        params["gpus_per_node"] = settings.gpus_per_run
    if settings.mem_gb:
        params["mem"] = f"{settings.mem_gb}G"
    extra = settings.extra_parameters()
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
        extra.setdefault("kill_on_invalid_dep", "yes")
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_line(settings: SlurmSettings, name: str, after: list[str] | None = None) -> str:
    """The sbatch options of one job, as --dry-run prints them."""
    options = {"job-name": name, **settings.sbatch_options()}
    if after:
        options["dependency"] = "afterok:" + ":".join(after)
    words = [f"--{k}={v}" for k, v in options.items()] + list(settings.sbatch)
    return "sbatch " + " ".join(words)


def submit(task: Any, settings: SlurmSettings, workspace: Workspace, name: str,
           after: list[str] | None = None) -> Submitted:
    import submitit

    folder = slurm_dir(workspace) / "logs" / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    executor.update_parameters(**executor_parameters(settings, name, after))
    try:
        job = executor.submit(task)
    except Exception as exc:  # sbatch's own message says what it refused
        raise UserError(f"sbatch refused job {name}: {str(exc).strip()[:800]}") from None
    return Submitted(str(job.job_id), str(job.paths.stderr).replace("%t", "0"), name)


# -- submission records --------------------------------------------------------------------------


def _record_path(workspace: Workspace, key: str) -> Path:
    return slurm_dir(workspace) / "submitted" / f"{key}.json"


def read_record(workspace: Workspace, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(_record_path(workspace, key).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_record(workspace: Workspace, key: str, submitted: Submitted, **extra: Any) -> None:
    path = _record_path(workspace, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"job_id": submitted.job_id, "log": submitted.log,
                               "name": submitted.name, "submitted": time.time(), **extra}))
    os.replace(tmp, path)


def submission_lock(workspace: Workspace) -> Any:
    """Held while deciding what to submit, so overlapping `run` commands submit nothing twice."""
    return exclusive(workspace.locks_dir / "slurm-submit.lock")


# -- scheduler state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # SLURM's name (PENDING, RUNNING, COMPLETED, TIMEOUT, OUT_OF_MEMORY, ...) or UNKNOWN
    reason: str = ""
    restarts: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def job_states(job_ids: list[str], logs: dict[str, str] | None = None) -> dict[str, JobState]:
    """What the scheduler says about each job (UNKNOWN where nothing says anything)."""
    ids = [str(j) for j in job_ids if j]
    states: dict[str, JobState] = {}
    if not ids or shutil.which("squeue") is None:
        return {j: _from_log(j, (logs or {}).get(j)) for j in ids}
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r"], capture_output=True,
                             text=True, timeout=COMMAND_TIMEOUT_S).stdout
    except subprocess.TimeoutExpired:
        out = ""
    for line in out.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id in ids:
            states[job_id] = JobState(job_id, state, "" if reason == "None" else reason)
    for job_id, st in list(states.items()):
        if st.active:
            states[job_id] = JobState(job_id, st.state, st.reason, _restarts(job_id))
    missing = [j for j in ids if j not in states]
    if missing and shutil.which("sacct"):
        try:
            acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o",
                                   "JobID,State"], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            acct = None
        if acct is not None and acct.returncode == 0:
            for line in acct.stdout.splitlines():
                job_id, _, state = line.partition("|")
                if job_id in missing:
                    states[job_id] = JobState(job_id, state.split()[0] if state else "UNKNOWN")
    for job_id in ids:
        if job_id not in states or states[job_id].state == "UNKNOWN":
            states[job_id] = _from_log(job_id, (logs or {}).get(job_id))
    return states


def _restarts(job_id: str) -> int:
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                             text=True, timeout=COMMAND_TIMEOUT_S).stdout
    except subprocess.TimeoutExpired:
        return 0
    match = re.search(r"\bRestarts=(\d+)", out)
    return int(match.group(1)) if match else 0


def _from_log(job_id: str, log: str | None) -> JobState:
    """Gone from squeue and no accounting: what the job's own log says."""
    if not log or not Path(log).exists():
        return JobState(job_id, "UNKNOWN", "gone from the scheduler; no log")
    try:
        tail = Path(log).read_text(errors="replace")[-20000:]
    except OSError:
        return JobState(job_id, "UNKNOWN", "log unreadable")
    if "DUE TO TIME LIMIT" in tail:
        return JobState(job_id, "TIMEOUT", "killed at its time limit")
    if re.search(r"oom[-_ ]kill|Out Of Memory|OUT_OF_MEMORY", tail, re.IGNORECASE):
        return JobState(job_id, "OUT_OF_MEMORY", "killed for memory")
    if "CANCELLED" in tail:
        return JobState(job_id, "CANCELLED", "cancelled")
    if "Traceback" in tail or "error:" in tail.lower():
        return JobState(job_id, "FAILED", "error in the log")
    return JobState(job_id, "UNKNOWN", "gone from the scheduler")


def cancel(job_ids: list[str]) -> None:
    if job_ids and shutil.which("scancel"):
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=COMMAND_TIMEOUT_S)
