"""MLflow bookkeeping: the only module that imports mlflow.

Layout in the store: one experiment per spec (``table5``), one parent run per (spec, scale)
(reused by every invocation, so the store holds one table per scale however often it is run),
and one child run per row and seed, tagged with the run's configuration hash. The hash is how
the runner finds a finished run again (skip) or an interrupted one (resume with the same run id).

Logging must not stall training: :class:`RunLogger` only appends metrics to an in-memory buffer
(microseconds); a background thread sends them with ``log_batch`` every few seconds, because one
synchronous ``log_metric`` costs 3-5 ms on sqlite and ~37 ms against a server
(reference/tooling-facts.md section 3). Artifacts are copied by the same thread.

Everything here goes through an explicit ``MlflowClient`` (never the fluent API's global active
run), so that several trackers can live in one process (tests, the benchmark) and nothing
depends on a process-wide tracking URI.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import math
import os
import platform
import queue
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lafite.errors import UserError
from lafite.locks import exclusive
from lafite.run_records import (  # noqa: F401  (re-exported: the tracking API)
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    TAG_CHECKPOINT,
    TAG_CHECKPOINT_SHA256,
    TAG_CHECKPOINT_SIZE,
    TAG_DAMAGED,
    TAG_GIT,
    TAG_HARDWARE,
    TAG_HASH,
    TAG_PARENT,
    TAG_ROLE,
    TAG_ROW,
    TAG_RUN_DIR,
    TAG_SCALE,
    TAG_SEED,
    TAG_SPEC,
    RunRecord,
    default_uri,
    record_from_tags,
)
from lafite.workspace import Workspace

# Authors' checkpoints read by `lafite-repro import` (lafite/importer.py): one experiment, one
# finished run per import, tagged with where the file came from.
IMPORT_EXPERIMENT = "imported"
TAG_IMPORTED = "lafite.imported"
TAG_IMPORT_NAME = "lafite.import.name"
TAG_IMPORT_SOURCE = "lafite.import.source"
TAG_IMPORT_SHA256 = "lafite.import.sha256"
MAX_PARAM_CHARS = 500  # MLflow rejects longer param values
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_VERSIONED_PACKAGES = ("lafite-repro", "torch", "torchvision", "open_clip_torch", "mlflow",
                       "torch-fidelity", "numpy", "optuna")



# MLflow's own client retries an unreachable server for minutes (backoff) before it fails, so
# a tracking server is asked once, with this timeout, before anything uses it.
SERVER_PROBE_SECONDS = 5.0
_servers_reached: set[str] = set()


def check_server(tracking_uri: str | None = None, timeout: float = SERVER_PROBE_SECONDS) -> None:
    """UserError unless the http(s) tracking server named by ``tracking_uri`` (else
    ``$MLFLOW_TRACKING_URI``) answers within ``timeout`` seconds; other stores pass."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.startswith(("http://", "https://")) or uri in _servers_reached:
        return
    source = "--tracking-uri" if tracking_uri else "$MLFLOW_TRACKING_URI"
    drop = ("drop --tracking-uri" if tracking_uri else "unset MLFLOW_TRACKING_URI")
    fix = (f"Start the MLflow server at that address (`lafite-repro ui` serves the workspace's "
           f"store), correct {source}, or {drop} to record in the workspace's own store")
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        # An answer, even 401/403 (MLflow sends credentials this probe has not), is a server.
        if exc.code == 404:
            raise UserError(f"{source} {uri!r} answers, but is not an MLflow tracking server "
                            f"({probe} gave HTTP 404). {fix}.") from None
        if exc.code >= 500:
            raise UserError(f"the MLflow tracking server {uri!r} ({source}) fails: HTTP "
                            f"{exc.code} {exc.reason}. Check its log, or {drop} to record in "
                            "the workspace's own store.") from None
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, ssl.SSLError):  # TLS settings are MLflow's to apply
            raise UserError(f"cannot reach the MLflow tracking server {uri!r} ({source}): "
                            f"{_reason(exc.reason)}. {fix}.") from None
    except http.client.HTTPException as exc:
        raise UserError(f"{source} {uri!r} answers, but not as an HTTP server "
                        f"({type(exc).__name__}). {fix}.") from None
    except (OSError, ValueError) as exc:  # a timeout while reading, a malformed address
        raise UserError(f"cannot reach the MLflow tracking server {uri!r} ({source}): "
                        f"{_reason(exc)}. {fix}.") from None
    _servers_reached.add(uri)


def _reason(exc: object) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class Tracker:
    """The MLflow store of one workspace (or the server named by ``tracking_uri``)."""

    def __init__(self, workspace: Workspace, tracking_uri: str | None = None) -> None:
        self.workspace = workspace
        check_server(tracking_uri)
        self.uri = default_uri(workspace, tracking_uri)
        # A new sqlite store announces its schema migrations at INFO on stderr: noise in every
        # first `run` of a workspace, so only warnings pass.
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._experiments: dict[str, str] = {}
        with self._serialised():  # a new sqlite store is migrated when the client opens it
            self.client = MlflowClient(tracking_uri=self.uri)
            if self.is_local:
                self.client.search_experiments(max_results=1)

    @property
    def is_local(self) -> bool:
        return self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        """One process at a time for find-or-create steps (store schema, parent run).

        Two ``run`` processes starting together on a fresh sqlite store would both run MLflow's
        schema migrations (one fails), and both could create a parent run. A file lock in the
        workspace serialises them; processes on other machines share a server, not the lock,
        and at worst create a second parent run.
        """
        with exclusive(self.workspace.locks_dir / "tracking.lock"):
            yield

    def check(self) -> None:
        """Fail early with one message if the store cannot be reached."""
        try:
            with self._serialised():
                self.client.search_experiments(max_results=1)
        except Exception as exc:  # any transport or schema error means "cannot use this store"
            raise UserError(
                f"cannot reach the MLflow tracking store {self.uri!r}: {str(exc).splitlines()[0]}. "
                "Check --tracking-uri / MLFLOW_TRACKING_URI (is the server running?)"
            ) from None

    # -- experiments and runs --------------------------------------------------------------------
    def experiment_id(self, spec_id: str, create: bool = True) -> str | None:
        """The experiment of ``spec_id``; created with its artifacts under the workspace."""
        if spec_id in self._experiments:
            return self._experiments[spec_id]
        found = self.client.get_experiment_by_name(spec_id)
        if found is None:
            if not create:
                return None
            # A local store keeps artifacts in the workspace; a server decides for itself (it
            # proxies them with --serve-artifacts), so no location is forced on it.
            location = (
                (self.workspace.mlflow_artifacts / spec_id).resolve().as_uri()
                if self.is_local
                else None
            )
            try:
                exp_id = self.client.create_experiment(spec_id, artifact_location=location)
            except MlflowException:
                # Another process created it between our lookup and create.
                found = self.client.get_experiment_by_name(spec_id)
                if found is None:
                    raise
                exp_id = found.experiment_id
        else:
            exp_id = found.experiment_id
        self._experiments[spec_id] = exp_id
        return exp_id

    def _search(self, experiment_id: str, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id],
                filter_string=filter_string,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parent_run(self, spec_id: str, scale: str) -> str:
        """The id of the parent run of (spec, scale), created on first use."""
        with self._serialised():
            return self._parent_run(spec_id, scale)

    def _parent_run(self, spec_id: str, scale: str) -> str:
        exp_id = self.experiment_id(spec_id)
        assert exp_id is not None
        existing = self._search(
            exp_id,
            f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_SCALE}` = '{scale}'",
        )
        if existing:
            run_id = existing[-1].info.run_id  # the oldest, should two ever exist
            if existing[-1].info.status != RUNNING:
                self.client.update_run(run_id, status=RUNNING)
            return run_id
        run = self.client.create_run(
            exp_id,
            run_name=f"{spec_id} ({scale})",
            tags={TAG_SPEC: spec_id, TAG_SCALE: scale, TAG_ROLE: "parent", **provenance_tags()},
        )
        return run.info.run_id

    def finish_parent(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def find_child(self, spec_id: str, config_hash: str) -> RunRecord | None:
        """The child run with this hash: a finished one if any, else the newest unfinished one."""
        exp_id = self.experiment_id(spec_id, create=False)
        if exp_id is None:
            return None
        runs = self._search(exp_id, f"tags.`{TAG_HASH}` = '{config_hash}'")
        # A run whose artefacts were found damaged has been replaced by a fresh one.
        runs = [r for r in runs if TAG_DAMAGED not in r.data.tags]
        if not runs:
            return None
        finished = [r for r in runs if r.info.status == FINISHED]
        chosen = finished[0] if finished else runs[0]
        return _record(chosen)

    def children(self, spec_id: str, scale: str | None = None) -> list[RunRecord]:
        exp_id = self.experiment_id(spec_id, create=False)
        if exp_id is None:
            return []
        query = f"tags.`{TAG_ROLE}` = 'child'"
        if scale:
            query += f" and tags.`{TAG_SCALE}` = '{scale}'"
        return [_record(r) for r in self._search(exp_id, query)]

    def start_child(self, spec_id: str, parent_id: str, *, resume_run_id: str | None = None,
                    **child: Any) -> RunLogger:
        """Open the child run of one (row, seed): a new one (``child`` holds
        :meth:`create_child`'s keywords), or ``resume_run_id`` again.

        Params, tags and the resolved configuration are written before training starts, so a
        run killed at any point is still findable by its hash and resumable.
        """
        if resume_run_id is not None:
            self.client.update_run(resume_run_id, status=RUNNING)
            return RunLogger(self.client, resume_run_id)
        return RunLogger(self.client, self.create_child(spec_id, parent_id, **child))

    def create_child(
        self,
        spec_id: str,
        parent_id: str,
        *,
        row: str,
        scale: str,
        seed: int,
        config_hash: str,
        config: Mapping[str, Any],
        flat_params: Mapping[str, Any],
        extra_tags: Mapping[str, str] | None = None,
        status: str = RUNNING,
    ) -> str:
        """Create the child run of one (row, seed) with its params, tags and configuration;
        ``status`` SCHEDULED for a run handed to a scheduler that has not started it."""
        exp_id = self.experiment_id(spec_id)
        assert exp_id is not None
        tags = {
            TAG_PARENT: parent_id,
            TAG_SPEC: spec_id,
            TAG_ROLE: "child",
            TAG_ROW: row,
            TAG_SCALE: scale,
            TAG_SEED: str(seed),
            TAG_HASH: config_hash,
            **provenance_tags(),
            **(extra_tags or {}),
        }
        run = self.client.create_run(exp_id, run_name=f"{row} s{seed}", tags=tags)
        run_id = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in flat_params.items()]
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start : start + _PARAMS_PER_BATCH])
        self.client.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
        if status != RUNNING:
            self.client.update_run(run_id, status=status)
        return run_id

    # -- reading, for report and tune -----------------------------------------------------------
    def runs_frame(
        self, spec_id: str, scale: str | None = None, status: str | None = FINISHED
    ) -> pd.DataFrame:
        """Child runs of a spec as a DataFrame, one row per run (``status=None``: every status).

        Columns: ``run_id``, ``row``, ``seed``, ``scale``, ``config_hash``, ``status``,
        ``final_checkpoint``, ``start_time``, ``end_time`` (ms since the epoch), ``metrics.<name>``
        (last values), ``nan.<name>`` (True where that last value is NaN), ``params.<key>`` and
        ``tags.<key>`` (provenance, hardware, reasons).
        """
        columns = ["run_id", "row", "seed", "scale", "config_hash", "status"]
        exp_id = self.experiment_id(spec_id, create=False)
        if exp_id is None:
            return pd.DataFrame(columns=columns)
        query = f"tags.`{TAG_ROLE}` = 'child'"
        if scale:
            query += f" and tags.`{TAG_SCALE}` = '{scale}'"
        if status:
            query += f" and attributes.status = '{status}'"
        records = []
        for run in self._search(exp_id, query):
            tags = run.data.tags
            if TAG_DAMAGED in tags:  # replaced by a retrained run: neither a result nor news
                continue
            entry: dict[str, Any] = {
                "run_id": run.info.run_id,
                "row": tags.get(TAG_ROW, ""),
                "seed": int(tags.get(TAG_SEED, "0")),
                "scale": tags.get(TAG_SCALE, ""),
                "config_hash": tags.get(TAG_HASH, ""),
                "status": run.info.status,
                "final_checkpoint": tags.get(TAG_CHECKPOINT, ""),
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
            }
            entry.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            # Logged as NaN (a failed measurement) and never logged read the same in a frame.
            entry.update({f"nan.{k}": True for k, v in run.data.metrics.items() if math.isnan(v)})
            entry.update({f"params.{k}": v for k, v in run.data.params.items()})
            entry.update({f"tags.{k}": v for k, v in tags.items()})
            records.append(entry)
        return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=columns)

    def metric_histories(self, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
        """Long frame ``run_id, key, kimg, value`` of the given metrics of the given runs."""
        records = []
        keys = list(keys)
        for run_id in run_ids:
            for key in keys:
                for m in self.client.get_metric_history(run_id, key):
                    records.append((run_id, key, m.step / 1000.0, m.value))
        return pd.DataFrame.from_records(records, columns=["run_id", "key", "kimg", "value"])

    def log_evaluation(
        self, run_id: str, kimg: float, metrics: Mapping[str, Any], result: Mapping[str, Any]
    ) -> None:
        """Add an evaluation made after training (``lafite-repro evaluate``) to a finished run.

        The values go in at step ``kimg*1000`` like the periodic evaluations, the full result
        (not-computed reasons, labels) as a JSON artifact beside theirs.
        """
        import json

        step = int(round(kimg * 1000))
        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            try:
                batch.append(Metric(key, float(value), now, step))
            except (TypeError, ValueError):
                continue
        skipped = result.get("not_computed") or {}
        tags = [RunTag(f"lafite.not_computed.{k}", str(v)[:500]) for k, v in skipped.items()]
        self.client.log_batch(run_id, metrics=batch, tags=tags)
        self.client.log_text(
            run_id, json.dumps(dict(result), indent=2, default=str),
            f"evaluation/cli_kimg_{kimg:010.3f}_{now}.json",
        )

    def mark_damaged(self, run_id: str, problem: str) -> None:
        """Retire a finished run whose artefacts are damaged: tagged with what is wrong and
        marked FAILED, so that nothing takes it for a result or for the run of its hash."""
        self.client.set_tag(run_id, TAG_DAMAGED, problem[:5000])
        self.client.update_run(run_id, status=FAILED)

    def record_import(
        self,
        name: str,
        *,
        checkpoint: Path,
        checkpoint_size: int,
        checkpoint_sha256: str,
        source: str,
        source_sha256: str,
        detected: Mapping[str, Any],
        config: Mapping[str, Any],
        flat_params: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Record an authors' checkpoint read by ``lafite-repro import`` (lafite/importer.py)
        as a finished run of the experiment ``imported``, tagged ``lafite.role = imported``,
        with the source file's sha256 and the detected layout (``import.*`` params), so that
        ``evaluate --run`` and ``generate --run`` find its checkpoint like one of ours."""
        import json

        exp_id = self.experiment_id(IMPORT_EXPERIMENT)
        assert exp_id is not None
        tags = {
            TAG_ROLE: "imported",
            TAG_IMPORTED: "true",
            TAG_IMPORT_NAME: name,
            TAG_IMPORT_SOURCE: source,
            TAG_IMPORT_SHA256: source_sha256,
            TAG_CHECKPOINT: str(checkpoint),
            TAG_CHECKPOINT_SIZE: str(checkpoint_size),
            TAG_CHECKPOINT_SHA256: checkpoint_sha256,
            TAG_RUN_DIR: str(Path(checkpoint).parent),
            **provenance_tags(),
        }
        run = self.client.create_run(exp_id, run_name=f"{name} (imported)", tags=tags)
        run_id = run.info.run_id
        values = {**{f"import.{k}": v for k, v in detected.items()},
                  **{f"import.{k}": v for k, v in (extra or {}).items()}, **flat_params}
        params = [Param(k, _param_value(v)) for k, v in values.items()]
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start : start + _PARAMS_PER_BATCH])
        self.client.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
        self.client.log_text(run_id, json.dumps(dict(detected), indent=2, default=str),
                             "import.json")
        self.client.set_terminated(run_id, status=FINISHED)
        return run_id

    def run_checkpoint(self, run_ref: str) -> Path:
        """The final checkpoint of a run named by its MLflow run id."""
        try:
            run = self.client.get_run(run_ref)
        except MlflowException:
            raise UserError(
                f"--run {run_ref!r}: no such MLflow run in {self.uri}. Give a run id "
                "(see `lafite-repro ui`) or a checkpoint file path."
            ) from None
        tags = run.data.tags
        if TAG_DAMAGED in tags:
            raise UserError(
                f"--run {run_ref!r}: this run was retired because {tags[TAG_DAMAGED]}. Give the "
                f"id of the run that replaced it (the newest run of hash {tags.get(TAG_HASH, '?')}"
                ", see `lafite-repro ui`)"
            )
        path = tags.get(TAG_CHECKPOINT)
        if not path:
            raise UserError(f"--run {run_ref!r}: this run has no final checkpoint (not finished?)")
        from lafite.checkpoint import checkpoint_problem

        size = tags.get(TAG_CHECKPOINT_SIZE, "")
        problem = checkpoint_problem(Path(path), int(size) if size.isdigit() else None)
        if problem is not None:
            raise UserError(
                f"--run {run_ref!r}: the final checkpoint {path} {problem}. Restore it from a "
                "backup, or train the run again from scratch: the command that trained it, "
                f"`lafite-repro run {tags.get(TAG_SPEC, 'TABLE')} --scale "
                f"{tags.get(TAG_SCALE, 'SCALE')}` (with the same --set and --seeds), plus "
                "--retrain-damaged"
            )
        return Path(path)


def _record(run: Any) -> RunRecord:
    return record_from_tags(run.info.run_id, run.info.status, run.data.tags)


def _param_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


class RunLogger:
    """Non-blocking logging into one MLflow run.

    ``log_metrics`` appends to a buffer and returns; a daemon thread sends the buffer with
    ``log_batch`` every ``flush_seconds`` and copies queued artifacts. :meth:`close` drains
    everything and sets the run's final status.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 2.0) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self._metrics: list[Metric] = []
        self._lock = threading.Lock()
        self._artifacts: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    # Called from the training loop: must stay cheap.
    def log_metrics(self, kimg: float, values: Mapping[str, Any], prefix: str = "") -> None:
        """Record ``values`` at step ``kimg*1000`` (images seen), skipping non-numbers."""
        step = int(round(kimg * 1000))
        now = int(time.time() * 1000)
        batch = []
        for key, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            batch.append(Metric(f"{prefix}{key}", number, now, step))
        with self._lock:
            self._metrics.extend(batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._artifacts.put((str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def flush(self) -> None:
        with self._lock:
            pending, self._metrics = self._metrics, []
        for start in range(0, len(pending), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[start : start + _METRICS_PER_BATCH])
        while True:
            try:
                path, artifact_path = self._artifacts.get_nowait()
            except queue.Empty:
                break
            if Path(path).exists():
                self.client.log_artifact(self.run_id, path, artifact_path)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception as exc:  # kept, re-raised by close(): never kill training for it
                self._error = exc

    def close(self, status: str = FINISHED) -> None:
        """Drain the buffer, then mark the run ``status`` (FINISHED, FAILED or KILLED)."""
        self._stop.set()
        self._thread.join()
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
        if self._error is not None and status == FINISHED:
            raise RuntimeError(f"MLflow logging failed for run {self.run_id}: {self._error}")

    def abandon(self) -> None:
        """Stop the thread without touching the run's status (the process is going away)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:  # best effort on the way out
            pass


# -- provenance ----------------------------------------------------------------------------------


@functools.cache
def provenance_tags() -> dict[str, str]:
    """Git commit (with a ``-dirty`` mark), package versions and hardware, tagged on every run."""
    tags = {
        TAG_GIT: git_commit(),
        "lafite.python": platform.python_version(),
        TAG_HARDWARE: hardware_description(),
    }
    for package in _VERSIONED_PACKAGES:
        try:
            tags[f"lafite.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags


def hardware_description() -> str:
    """The machine in one line: CPU model and core count, and the CUDA GPUs torch sees."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            for name in dict.fromkeys(names):
                text += f"; {names.count(name)}x {name}"
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not stop tracking
        pass
    return text


def git_commit() -> str:
    """The commit of the source tree this package runs from, or "unknown" outside git."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


# How `mlflow server` hands its options to the app's workers (mlflow/server/constants.py and
# mlflow/server/__init__.py); tests/test_tracking.py checks these names against MLflow's own.
_SERVER_BACKEND_ENV = "_MLFLOW_SERVER_FILE_STORE"
_SERVER_ARTIFACTS_DESTINATION_ENV = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"
_SERVER_SERVE_ARTIFACTS_ENV = "_MLFLOW_SERVER_SERVE_ARTIFACTS"
_SERVER_REGISTRY_ENV = "_MLFLOW_SERVER_REGISTRY_STORE"
_SERVER_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"


def serve_command(workspace: Workspace, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that serve the MLflow UI on the workspace's store.

    This is what ``mlflow server`` runs, started directly: ``mlflow server`` first imports the
    whole server to parse its options and then starts uvicorn, which imports it again, and it
    starts a job runner that browsing runs never uses (measured: 25 s to the first page on a
    loaded 2-core machine, against about half that here).
    """
    import uuid

    store = f"sqlite:///{workspace.mlflow_db}"
    env = {
        _SERVER_BACKEND_ENV: store,
        _SERVER_REGISTRY_ENV: store,
        # Runs record their artifacts through the server, which keeps them here.
        _SERVER_ARTIFACT_ROOT_ENV: "mlflow-artifacts:/",
        _SERVER_ARTIFACTS_DESTINATION_ENV: str(workspace.mlflow_artifacts),
        _SERVER_SERVE_ARTIFACTS_ENV: "true",
        "MLFLOW_ENABLE_WORKSPACES": "false",
        "PYTHONWARNINGS": "ignore",
        "_MLFLOW_SGI_NAME": "uvicorn",
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port),
               "--workers", "1", "--log-level", "warning", "mlflow.server.fastapi_app:app"]
    return command, env


def wait_until_serving(url: str, process: Any, timeout: float = 300.0) -> float | None:
    """Seconds until ``url``/health answers OK, or None if ``process`` exits or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.read().strip() == b"OK":
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    return None


__all__ = [
    "FAILED",
    "FINISHED",
    "KILLED",
    "RUNNING",
    "RunLogger",
    "RunRecord",
    "Tracker",
    "check_server",
    "default_uri",
    "git_commit",
    "provenance_tags",
    "serve_command",
    "wait_until_serving",
]
