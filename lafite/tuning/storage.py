"""The Optuna storage: opening it, heartbeats, and creating or loading a study in it."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from lafite.errors import UserError
from lafite.tuning.definitions import (
    ATTR_RUN_FOLDER,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    MAX_RETRIES,
    StudyDefinition,
)
from lafite.workspace import Workspace

# -- storage -----------------------------------------------------------------------------------


def default_storage(workspace: Workspace) -> str:
    return f"sqlite:///{workspace.optuna_db}"


def storage_label(storage: str) -> str:
    """The storage as shown to users and tagged in MLflow: URLs without their password."""
    if "://" in storage and "@" in storage:
        scheme, rest = storage.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return storage


def open_storage(
    storage: str | None,
    workspace: Workspace,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
) -> tuple[optuna.storages.BaseStorage, str]:
    """The Optuna storage named by ``--storage`` (default: SQLite in the workspace).

    A value with ``://`` is a database URL (RDBStorage, with heartbeats and retry of dead
    workers' trials); anything else is a journal file path. Returns (storage, its URL or path).
    An unreachable or malformed storage is one UserError; nothing is written to it.
    """
    url = storage or default_storage(workspace)
    fix = ("Give a reachable database URL (sqlite:///path/optuna.db, "
           "postgresql+psycopg2://user@host/db) or a journal file path (--storage)")
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(url).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"--storage {url!r}: the folder {path.parent} of this journal file "
                            f"does not exist. {fix}")
        try:
            backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend), str(path)
        except Exception as exc:  # any I/O or format error means "cannot use this journal"
            raise UserError(f"--storage {url!r}: cannot open the journal file: "
                            f"{_first_line(exc)}. {fix}") from None
    if url.startswith("sqlite:///"):
        db_path = Path(url[len("sqlite:///"):])
        if not db_path.parent.is_dir():
            raise UserError(f"--storage {url!r}: the folder {db_path.parent} does not exist. {fix}")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several workers and their heartbeat threads write to one file: wait for the lock
        # instead of failing with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 120}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES, inherit_intermediate_values=True),
            )
    except Exception as exc:  # driver missing, host down, bad URL, not an Optuna database
        raise UserError(f"--storage {storage_label(url)!r}: cannot open the Optuna storage: "
                        f"{_first_line(exc)}. {fix}") from None
    return rdb, url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].rstrip('.')}" if text else type(exc).__name__


def _heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage)


def _create_or_load(definition: StudyDefinition, scale: str,
                    storage: optuna.storages.BaseStorage, sampler: Any = None,
                    pruner: Any = None) -> optuna.Study:
    """Create the study on first use (recording what it searches), else load it.

    A stored study whose objectives differ from the definition's is refused: continuing it
    would mix values of different metrics in one study. Nothing is written in that case.
    """
    name = definition.study_name(scale)
    objectives = [o.metric for o in definition.objectives]
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner,
            directions=[o.direction for o in definition.objectives], load_if_exists=True,
        )
        if definition.multi_objective:
            study.set_metric_names(objectives)
        study.set_user_attr("objectives", objectives)
        # Trials train in folders of their own study: two studies of the same name in two
        # storages (a benchmark, a fresh --storage) must not resume each other's checkpoints.
        study.set_user_attr(ATTR_RUN_FOLDER, f"{name}-{uuid.uuid4().hex[:8]}")
        study.set_user_attr("spec", definition.spec_id)
        study.set_user_attr("row", definition.row)
        study.set_user_attr("scale", scale)
        return study
    stored = study.user_attrs.get("objectives")
    if stored is not None and stored != objectives:
        raise UserError(
            f"{definition._where()}: objectives {objectives} differ from those of the stored "
            f"study {name!r} ({stored}); the stored study is left as it is. Restore the "
            "objectives, or use another --storage to start a new study"
        )
    return study
