"""What the MLflow store says about lafite's runs: tag names, run records, and a read-only look
into the workspace's own sqlite store that needs no MLflow.

Asking "is every run of this table finished?" through MLflow costs its import and its store's
start-up (seconds); a finished table re-runs in well under that by reading the same records
straight from the sqlite file. Anything unexpected there (another store, another schema) answers
"don't know", and the caller asks MLflow.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from lafite.workspace import Workspace

# Tag names; "lafite." keeps them apart from MLflow's own "mlflow." tags.
TAG_SPEC = "lafite.spec"
TAG_SCALE = "lafite.scale"
TAG_ROLE = "lafite.role"
TAG_ROW = "lafite.row"
TAG_SEED = "lafite.seed"
TAG_HASH = "lafite.config_hash"
TAG_GIT = "lafite.git_commit"
TAG_HARDWARE = "lafite.hardware"
TAG_CHECKPOINT = "lafite.final_checkpoint"
TAG_CHECKPOINT_SIZE = "lafite.final_checkpoint.size"
TAG_CHECKPOINT_SHA256 = "lafite.final_checkpoint.sha256"
TAG_DAMAGED = "lafite.damaged"
TAG_RUN_DIR = "lafite.run_dir"
TAG_PARENT = "mlflow.parentRunId"

# MLflow's run statuses as it stores them (mlflow.entities.RunStatus).
FINISHED, RUNNING, FAILED, KILLED = "FINISHED", "RUNNING", "FAILED", "KILLED"
SCHEDULED = "SCHEDULED"  # handed to a scheduler (SLURM) that has not started it yet


@dataclass(frozen=True)
class RunRecord:
    """What the store knows about one child run."""

    run_id: str
    status: str
    config_hash: str
    row: str
    seed: int
    final_checkpoint: str = ""
    checkpoint_size: int | None = None  # None: finished before sizes were recorded
    checkpoint_sha256: str = ""


def record_from_tags(run_id: str, status: str, tags: dict[str, str]) -> RunRecord:
    size = tags.get(TAG_CHECKPOINT_SIZE, "")
    return RunRecord(
        run_id=run_id,
        status=status,
        config_hash=tags.get(TAG_HASH, ""),
        row=tags.get(TAG_ROW, ""),
        seed=int(tags.get(TAG_SEED, "0")),
        final_checkpoint=tags.get(TAG_CHECKPOINT, ""),
        checkpoint_size=int(size) if size.isdigit() else None,
        checkpoint_sha256=tags.get(TAG_CHECKPOINT_SHA256, ""),
    )


def default_uri(workspace: Workspace, tracking_uri: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the workspace's sqlite store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace.mlflow_db}"


def finished_runs(workspace: Workspace, tracking_uri: str | None, spec_id: str,
                  config_hashes: Iterable[str]) -> dict[str, RunRecord] | None:
    """The finished, undamaged child runs of ``spec_id`` with these configuration hashes, read
    from the workspace's sqlite store without MLflow; None when that cannot be answered here
    (another store, no store yet, an unexpected schema)."""
    if default_uri(workspace, tracking_uri) != f"sqlite:///{workspace.mlflow_db}":
        return None
    if not workspace.mlflow_db.is_file():
        return None
    wanted = set(config_hashes)
    try:
        with sqlite3.connect(f"file:{workspace.mlflow_db}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r "
                "JOIN experiments e ON e.experiment_id = r.experiment_id "
                "JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE e.name = ? AND e.lifecycle_stage = 'active' "
                "AND r.lifecycle_stage = 'active' AND r.status = ? AND t.key LIKE 'lafite.%'",
                (spec_id, FINISHED),
            ).fetchall()
    except sqlite3.Error:
        return None
    tags: dict[str, dict[str, str]] = {}
    status: dict[str, str] = {}
    for run_id, run_status, key, value in rows:
        tags.setdefault(run_id, {})[key] = value
        status[run_id] = run_status
    found: dict[str, RunRecord] = {}
    for run_id, run_tags in tags.items():
        if (run_tags.get(TAG_ROLE) == "child" and run_tags.get(TAG_HASH) in wanted
                and TAG_DAMAGED not in run_tags):
            found.setdefault(run_tags[TAG_HASH], record_from_tags(run_id, status[run_id], run_tags))
    return found
