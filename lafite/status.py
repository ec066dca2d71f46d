"""Where each run of a table stands, from MLflow and from the scheduler together.

MLflow knows what a run said about itself (running at kimg X with these metrics, finished,
failed with a reason); the scheduler knows what the run could not say (still queued, requeued
after a preemption, killed for memory or time). ``lafite-repro status TABLE`` shows both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lafite.runner import FullPlan, RunLock
from lafite.workspace import Workspace


@dataclass
class RunState:
    label: str
    state: str  # not started, pending, running, requeued, finished, failed, interrupted
    detail: str = ""
    kimg: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    job_id: str = ""
    log: str = ""
    run_id: str = ""


def table_status(full: FullPlan, workspace: Workspace, tracker: Any) -> list[RunState]:
    from lafite.launch import slurm as slurm_mod
    from lafite.launch.execute import TAG_FAILURE, TAG_SLURM_LOG
    from lafite.run_records import FAILED, FINISHED, KILLED

    records = {run.hash: tracker.find_child(full.spec.id, run.hash) for run in full.runs}
    submissions = {run.hash: slurm_mod.read_record(workspace, f"run-{run.hash}")
                   for run in full.runs}
    job_ids = [s["job_id"] for s in submissions.values() if s]
    logs = {s["job_id"]: s.get("log", "") for s in submissions.values() if s}
    states = slurm_mod.job_states(job_ids, logs) if job_ids else {}
    metric_names = [m.name for m in full.spec.metrics]
    out: list[RunState] = []
    for run in full.runs:
        record, submission = records[run.hash], submissions[run.hash]
        row = RunState(run.label, "not started")
        mlflow_run = tracker.client.get_run(record.run_id) if record else None
        if mlflow_run is not None:
            row.run_id = record.run_id
            row.metrics = {k: v for k, v in mlflow_run.data.metrics.items() if k in metric_names}
            row.kimg = _latest_kimg(tracker, record.run_id)
        job = states.get(submission["job_id"]) if submission else None
        if submission:
            row.job_id = submission["job_id"]
            row.log = (mlflow_run.data.tags.get(TAG_SLURM_LOG) if mlflow_run else "") \
                or submission.get("log", "")
        status = mlflow_run.info.status if mlflow_run else ""
        if status == FINISHED:
            row.state = "finished"
        elif job is not None and job.active:
            if job.state == "PENDING":
                row.state = "requeued" if job.restarts else "pending"
                row.detail = job.reason + (f", requeued {job.restarts}x" if job.restarts else "")
            else:
                row.state = "running" if not job.restarts else "running (requeued)"
                row.detail = job.state.lower() + (f", requeued {job.restarts}x" if job.restarts else "")
        elif status == FAILED or job is not None:
            row.state = "failed"
            reason = mlflow_run.data.tags.get(TAG_FAILURE, "") if mlflow_run else ""
            if job is not None and job.state not in ("COMPLETED", "UNKNOWN") and not reason:
                reason = f"SLURM {job.state}" + (f" ({job.reason})" if job.reason else "")
            row.detail = reason or (f"SLURM job ended {job.state}" if job else "")
        elif status == KILLED:
            row.state, row.detail = "interrupted", "stopped by the user; run again to resume"
        elif mlflow_run is not None:
            lock = RunLock(workspace.locks_dir / f"run-{run.hash}.lock")
            holder = lock.holder()
            if holder and not lock.is_stale(holder):
                row.state, row.detail = "running", f"pid {holder.get('pid')} on {holder.get('host')}"
            else:
                row.state, row.detail = "interrupted", "no process holds it; run again to resume"
        out.append(row)
    return out


def _latest_kimg(tracker: Any, run_id: str) -> float | None:
    history = tracker.client.get_metric_history(run_id, "timing/img_per_s")
    return max(m.step for m in history) / 1000 if history else None
