"""Hyper-parameter studies: Optuna searches over xi, tau, lambda and gamma, recorded in MLflow.

The official code's authors say that the loss weights and the R1 weight "might be sensitive" to
each dataset and suggest searching them (reference/official-lafite.md sections 1.3 and 9). A study
is declared in ``experiments/studies/<id>.yaml``: a base row of an experiment spec, what the study
changes in it (``set``), the search space (dotted RunConfig keys with a range or choices), the
objectives (metric names; their direction comes from the metric registry), the number of trials,
the sampler and the pruner, and per-scale overrides (how often a trial is evaluated, which is
what the pruner sees).

This is the only module that imports optuna. Design choices, each for a reason:

- **Storage.** SQLite in the workspace by default; any SQLAlchemy URL Optuna's ``RDBStorage``
  accepts; or a journal file path (``JournalStorage``) for file systems where SQLite's locking is
  unsafe (NFS). RDB storages get heartbeats, so a trial whose worker died is marked FAIL once its
  heartbeat is older than the grace period and re-queued (``RetryHeartbeatStaleTrialCallback``)
  with the same parameters; the retry resumes the dead trial's checkpoint. Journal storages have
  no heartbeats (an Optuna limitation): a dead worker's trial stays RUNNING there.
- **Exactly N trials.** A study runs until ``trials`` trials are COMPLETE or PRUNED; failed ones do
  not count and are re-queued once per invocation. Workers on one machine take a file lock around
  "count, then ask for a trial", so K workers never overshoot N (workers on several machines share
  no lock and may overshoot by at most one trial each).
- **Pruning.** Training's periodic evaluation reports the objective with ``trial.report(value,
  step=images seen)``; when the pruner says so, the evaluation callback raises
  ``optuna.TrialPruned``, which ``train_run`` propagates (it does not catch callback exceptions),
  so training stops at once with its last checkpoint intact. Optuna cannot prune
  multi-objective studies, so a study with two objectives must say ``pruner: {name: none}``.
- **Run folders.** A trial trains in ``<workspace>/runs/tune/<study name>-<random id>/trial-N``;
  the id is stored in the Optuna study, so two same-named studies in two storages never resume
  each other's checkpoints, while a retry of a dead trial resumes its own.
- **MLflow.** One experiment ``tune-<id>`` per study, a parent run per scale (reused by every
  invocation, like the runner's), one child run per trial with the trial's full configuration,
  its evaluation curve and its state (``lafite.trial.state``: COMPLETE, PRUNED or FAIL). The
  summary (best trials, parameter importances, optimisation history, slice plots, evaluation
  curves, the trials table) goes to the parent run's ``study/`` artifacts and to
  ``<workspace>/tuning/<study name>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lafite.config import RunConfig
from lafite.errors import ConfigError, UserError
from lafite.locks import exclusive
from lafite.workspace import Workspace

STUDIES_FOLDER = "studies"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
# Heartbeats: a dead worker's trial is declared failed this long after its last heartbeat.
HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 60
MAX_RETRIES = 2
# Trial user attributes (kept across retries: the retry copies them).
ATTR_RUN_DIR = "run_dir"
ATTR_MLFLOW = "mlflow_run_id"
ATTR_STEPS = "train_steps"
ATTR_KIMG = "train_kimg"
ATTR_RETRY_OF = "retry_of"
ATTR_RETRIES = "retries"
ATTR_WORKER = "worker"
ATTR_RUN_FOLDER = "run_folder"  # a study attribute
TAG_STATE = "lafite.trial.state"
TAG_STUDY = "lafite.study"
TAG_OPTUNA_STUDY = "lafite.optuna.study"
TAG_TRIAL = "lafite.optuna.trial"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyError(UserError):
    """A mistake in a study file; the message names the file and the field."""


# -- definitions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchParam:
    """One searched RunConfig key: a float range (optionally log-scaled) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        scale = "log" if self.log else "linear"
        return f"{self.key} in [{self.low:g}, {self.high:g}] ({scale})"


@dataclass(frozen=True)
class Objective:
    metric: str
    higher_is_better: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"


@dataclass(frozen=True)
class StudyDefinition:
    """One ``experiments/studies/<id>.yaml``, validated."""

    id: str
    title: str
    spec_id: str
    row: str
    set: dict[str, Any]
    search: tuple[SearchParam, ...]
    objectives: tuple[Objective, ...]
    trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    scales: dict[str, dict[str, Any]]
    notes: str = ""
    path: Path | None = None

    @property
    def experiment(self) -> str:
        """The MLflow experiment of this study's runs (apart from the tables' experiments)."""
        return f"tune-{self.id}"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def study_name(self, scale: str) -> str:
        return f"{self.id}-{scale}"

    def _where(self) -> str:
        return str(self.path) if self.path else f"study {self.id}"

    def spec(self) -> Any:
        return _load_spec(self.spec_id)

    def base_config(self, scale: str) -> RunConfig:
        """The row at ``scale`` with the study's changes: what every trial starts from."""
        spec = self.spec()
        cfg = spec.resolve(spec.row(self.row), scale)
        where = self._where()
        try:
            cfg = cfg.override(self.set, where=f"{where}: set")
            overrides = dict(self.scales.get(scale, {}))
            cfg = cfg.override(overrides, where=f"{where}: scales.{scale}")
            if "eval.metrics" not in overrides:
                # Only what the objectives need: every evaluation costs training time.
                cfg = cfg.override({"eval.metrics": [o.metric for o in self.objectives]},
                                   where=where)
        except ConfigError as exc:
            raise StudyError(str(exc)) from None
        missing = [o.metric for o in self.objectives if o.metric not in cfg.eval.metrics]
        if missing:
            raise StudyError(f"{where}: scales.{scale}: eval.metrics must include the objective "
                             f"metric(s) {', '.join(missing)}")
        return cfg

    def trial_config(self, scale: str, params: dict[str, Any],
                     base: RunConfig | None = None) -> RunConfig:
        base = base if base is not None else self.base_config(scale)
        try:
            return base.override(params, where=f"{self._where()}: search")
        except ConfigError as exc:
            raise StudyError(str(exc)) from None

    def row_set(self, params: dict[str, Any]) -> dict[str, Any]:
        """The ``set`` of a spec row that reproduces ``params`` (row, study changes, params)."""
        spec = self.spec()
        return {**spec.row(self.row).overrides, **self.set, **params}

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        seed = int(self.sampler.get("seed", 0)) + seed_offset
        if self.sampler["name"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = int(self.sampler.get("startup_trials", 10))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    def make_pruner(self, cfg: RunConfig) -> optuna.pruners.BasePruner:
        name = self.pruner["name"]
        eval_step = max(1, report_step(cfg.train.eval_kimg))
        if name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=int(self.pruner.get("startup_trials", 3)),
                n_warmup_steps=int(self.pruner.get("warmup_evaluations", 0)) * eval_step,
            )
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=eval_step,
                max_resource=max(eval_step, report_step(cfg.train.kimg)),
                reduction_factor=int(self.pruner.get("reduction_factor", 3)),
            )
        return optuna.pruners.NopPruner()


_SPECS: dict[tuple[str, int], Any] = {}


def _load_spec(spec_id: str) -> Any:
    """The spec ``spec_id``, parsed once per file version: parsing resolves every row at every
    scale, which takes seconds, and every study names a spec."""
    from lafite import spec as spec_mod

    path = spec_mod.spec_files().get(spec_id)
    if path is None:
        return spec_mod.find(spec_id)  # raises the UserError listing the valid specs
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _SPECS:
        _SPECS[key] = spec_mod.load(path)
    return _SPECS[key]


def report_step(kimg: float) -> int:
    """Optuna's integer step for a point of training: images seen."""
    return int(round(kimg * 1000))


_STUDY_KEYS = {"id": str, "title": str, "notes": str, "spec": str, "row": str, "set": dict,
               "search": dict, "objectives": list, "trials": int, "sampler": dict,
               "pruner": dict, "scales": dict}
_REQUIRED = ("id", "title", "spec", "row", "search", "objectives", "trials")
_RANGE_KEYS = {"low", "high", "log", "choices"}
_SAMPLER_KEYS = {"name", "seed", "startup_trials"}
_PRUNER_KEYS = {"name", "startup_trials", "warmup_evaluations", "reduction_factor"}


def study_dirs() -> list[Path]:
    """Where study files are looked up: ``studies/`` of each experiments folder."""
    from lafite.spec import experiments_dirs

    return [d / STUDIES_FOLDER for d in experiments_dirs() if (d / STUDIES_FOLDER).is_dir()]


def study_files() -> dict[str, Path]:
    """Study id -> file (./experiments first, then the one shipped next to the package)."""
    found: dict[str, Path] = {}
    for folder in reversed(study_dirs()):
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def load_studies() -> dict[str, StudyDefinition]:
    """Every study definition, validated (the first bad file raises its StudyError)."""
    return {sid: load_study_file(path) for sid, path in study_files().items()}


def find_study(study: str) -> StudyDefinition:
    """The study named ``study`` (e.g. ``xi``) or a path to a study file."""
    candidate = Path(study)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return load_study_file(candidate)
    files = study_files()
    if study not in files:
        valid = ", ".join(files) or "(none found: run from the repository or pass a file path)"
        raise UserError(f"--study: unknown study {study!r}. Valid studies: {valid}")
    return load_study_file(files[study])


def load_study_file(path: str | Path) -> StudyDefinition:
    """Read and validate one study file; every problem is a StudyError naming file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{path}: no such study file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise StudyError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    return parse_study(data, path)


def parse_study(data: Any, path: Path) -> StudyDefinition:
    name = str(path)
    if not isinstance(data, dict):
        raise StudyError(f"{name}: a study must be a mapping with keys {', '.join(_STUDY_KEYS)}")
    for key, value in data.items():
        if key not in _STUDY_KEYS:
            raise StudyError(f"{name}: unknown key {key!r}. Valid keys: {', '.join(_STUDY_KEYS)}")
        expected = _STUDY_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise StudyError(f"{name}: {key!r} must be a {expected.__name__}, got {value!r}")
    for key in _REQUIRED:
        if key not in data:
            raise StudyError(f"{name}: missing required key {key!r}")
    if data["id"] != path.stem:
        raise StudyError(f"{name}: id {data['id']!r} must equal the file name {path.stem!r}")
    if data["trials"] < 1:
        raise StudyError(f"{name}: trials: must be at least 1, got {data['trials']}")

    search = tuple(_parse_param(key, body, name) for key, body in data["search"].items())
    if not search:
        raise StudyError(f"{name}: search: give at least one RunConfig key with a range")

    from lafite.spec import known_metrics

    registry = known_metrics()
    objectives: list[Objective] = []
    for i, metric in enumerate(data["objectives"]):
        if not isinstance(metric, str) or metric not in registry:
            raise StudyError(f"{name}: objectives[{i}]: unknown metric {metric!r}. "
                             f"Known metrics: {', '.join(sorted(registry))}")
        if registry[metric] is None:
            raise StudyError(f"{name}: objectives[{i}]: {metric} is a property of the run, "
                             "not a score; name a metric to optimise (e.g. FID-0)")
        objectives.append(Objective(metric, registry[metric]))
    if not 1 <= len(objectives) <= 2 or len({o.metric for o in objectives}) != len(objectives):
        raise StudyError(f"{name}: objectives: give one metric, or two distinct ones "
                         "(e.g. [FID-0, IS]) for a multi-objective study")

    sampler = {"name": "tpe", "seed": 0, **(data.get("sampler") or {})}
    _check_section(sampler, _SAMPLER_KEYS, name, "sampler")
    if sampler["name"] not in SAMPLERS:
        raise StudyError(f"{name}: sampler.name: {sampler['name']!r} is not one of "
                         f"{', '.join(SAMPLERS)}")
    pruner = {"name": "median", **(data.get("pruner") or {})}
    _check_section(pruner, _PRUNER_KEYS, name, "pruner")
    if pruner["name"] not in PRUNERS:
        raise StudyError(f"{name}: pruner.name: {pruner['name']!r} is not one of "
                         f"{', '.join(PRUNERS)}")
    if len(objectives) > 1 and pruner["name"] != "none":
        raise StudyError(f"{name}: pruner: Optuna cannot prune a multi-objective study; "
                         "set pruner: {name: none} or keep one objective")

    from lafite.spec import SCALES

    scales: dict[str, dict[str, Any]] = {}
    for scale, body in (data.get("scales") or {}).items():
        if scale not in SCALES:
            raise StudyError(f"{name}: scales.{scale}: unknown scale; valid: {', '.join(SCALES)}")
        if not isinstance(body, dict):
            raise StudyError(f"{name}: scales.{scale}: expected a mapping of RunConfig overrides")
        scales[scale] = dict(body)

    definition = StudyDefinition(
        id=data["id"], title=data["title"], spec_id=data["spec"], row=data["row"],
        set=dict(data.get("set") or {}), search=search, objectives=tuple(objectives),
        trials=data["trials"], sampler=sampler, pruner=pruner, scales=scales,
        notes=data.get("notes", ""), path=path,
    )
    # Resolve now, at every scale the spec defines, so that a bad key, row or value fails here
    # and names this file, not hours later in a worker.
    spec = definition.spec()
    spec.row(definition.row)
    for scale in spec.scales:
        base = definition.base_config(scale)
        for param in search:
            probe = param.choices[0] if param.choices else param.low
            definition.trial_config(scale, {param.key: probe}, base)
    return definition


def _parse_param(key: Any, body: Any, file: str) -> SearchParam:
    from lafite.config import valid_keys

    where = f"{file}: search.{key}"
    if key not in valid_keys():
        raise StudyError(f"{where}: not a RunConfig key. Valid keys: {', '.join(valid_keys())}")
    if not isinstance(body, dict):
        raise StudyError(f"{where}: expected {{low: L, high: H, log: true|false}} or "
                         "{choices: [...]}")
    unknown = set(body) - _RANGE_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(sorted(_RANGE_KEYS))}")
    if "choices" in body:
        choices = body["choices"]
        if set(body) != {"choices"}:
            raise StudyError(f"{where}: give either choices or low/high, not both")
        if not isinstance(choices, list) or not choices:
            raise StudyError(f"{where}.choices: must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise StudyError(f"{where}.choices: a value is listed twice")
        return SearchParam(key, choices=tuple(choices))
    for bound in ("low", "high"):
        if bound not in body:
            raise StudyError(f"{where}: missing '{bound}'")
        value = body[bound]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise StudyError(f"{where}.{bound}: must be a finite number, got {value!r}")
    low, high = float(body["low"]), float(body["high"])
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise StudyError(f"{where}.log: must be true or false, got {log!r}")
    if low > high:
        raise StudyError(f"{where}: inverted range: low {low:g} is above high {high:g}; "
                         "swap them")
    if low == high:
        raise StudyError(f"{where}: empty range: low and high are both {low:g}; widen it or "
                         "set the value in 'set' instead of searching it")
    if log and low <= 0:
        raise StudyError(f"{where}: a log-scale range needs low > 0, got {low:g}")
    return SearchParam(key, low, high, log)


def _check_section(section: dict[str, Any], keys: set[str], file: str, where: str) -> None:
    unknown = set(section) - keys
    if unknown:
        raise StudyError(f"{file}: {where}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(sorted(keys))}")
    for key, value in section.items():
        if key != "name" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise StudyError(f"{file}: {where}.{key}: must be a non-negative integer, "
                             f"got {value!r}")


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


# -- running -----------------------------------------------------------------------------------

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class WorkerArgs:
    """Everything a worker process needs (JSON-serialisable: it crosses a process boundary)."""

    study_path: str
    scale: str
    workspace: str
    storage: str
    target: int
    parent_run_id: str
    tracking_uri: str | None
    quiet: bool
    heartbeat_interval: int
    grace_period: int
    seed_offset: int
    poll_seconds: float = 2.0


@dataclass
class StudySummary:
    """What ``run_study`` did and where the study stands."""

    study_id: str
    study_name: str
    scale: str
    storage: str
    target: int
    directions: list[str]
    objectives: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)
    budget_steps: int = 0
    parent_run_id: str = ""
    artifacts_dir: str = ""
    dry_run: bool = False
    worker_exit_codes: list[int] = field(default_factory=list)
    worker_job_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)

    def line(self) -> str:
        states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(self.counts.items()) if v)
        best = ""
        if self.best:
            b = self.best[0]
            values = ", ".join(f"{m}={v:.4g}" for m, v in zip(self.objectives, b["values"]))
            best = f"; best: trial {b['number']} ({values})"
        return (f"study {self.study_name}: {self.finished}/{self.target} trials done "
                f"({states or 'none'}); {self.budget_steps} training iterations{best}")


def run_study(
    study_id: str,
    workspace: Workspace,
    scale: str = "mini",
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    tracking_uri: str | None = None,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    console: Any = None,
    slurm: Any = None,
    wait: bool = False,
) -> StudySummary:
    """Run (or continue) a study until ``trials`` trials are COMPLETE or PRUNED.

    ``workers`` processes share the study (this one and ``workers - 1`` started with
    ``python -m lafite.tuning``). Running the same call again continues the study: failed
    trials are re-queued with their parameters, and a trial whose worker died is failed and
    retried once its heartbeat is older than ``grace_period`` seconds.

    With ``slurm`` (SlurmSettings) the ``workers`` are SLURM jobs instead, sharing a storage
    every node reaches (PostgreSQL, or a journal file on a shared file system); the command
    returns once they are submitted, or with ``wait`` when they have left the queue.
    """
    from rich.console import Console

    console = console or Console(stderr=True, quiet=quiet)
    definition = find_study(study_id)
    target = trials if trials is not None else definition.trials
    if target < 1:
        raise UserError(f"--trials must be at least 1, got {target}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    base = definition.base_config(scale)
    summary = StudySummary(
        definition.id, definition.study_name(scale), scale,
        storage_label(storage or default_storage(workspace)), target,
        [o.direction for o in definition.objectives], [o.metric for o in definition.objectives],
        dry_run=dry_run,
    )
    if dry_run:
        _print_plan(definition, scale, base, summary, workspace, storage, workers, console)
        return summary

    from lafite import jobs as jobs_mod
    from lafite.tracking import FAILED, FINISHED, KILLED, Tracker

    if slurm is not None:
        from lafite.launch import slurm as slurm_mod

        if storage is None or storage.startswith("sqlite"):
            raise UserError(
                "tune --launcher slurm: the workers run on other nodes and share the study "
                "through its storage; SQLite is not safe there. Give --storage "
                "postgresql+psycopg2://USER:PASSWORD@HOST/DB (see README, 'On a SLURM "
                "cluster') or a journal file on a shared file system (--storage /shared/x.log)")
        slurm_mod.check_cluster(slurm)
    store, url = open_storage(storage, workspace, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period)
    # Both stores must be usable before the study is created or changed in any way.
    tracker = Tracker(workspace, tracking_uri)
    tracker.check()
    study = _create_or_load(definition, scale, store)
    for job in jobs_mod.needed_jobs(base):
        if jobs_mod.artifact_path(job, workspace) is None:
            console.print(f"building job {job.label} [{job.hash}] ...")
            jobs_mod.ensure(job, workspace, progress=not quiet)
    parent_id = tracker.parent_run(definition.experiment, scale)
    summary.parent_run_id = parent_id
    tracker.client.set_tag(parent_id, TAG_OPTUNA_STUDY, summary.study_name)
    tracker.client.set_tag(parent_id, "lafite.optuna.storage", summary.storage)
    tracker.client.set_tag(parent_id, TAG_STUDY, definition.id)

    with exclusive(_lock_path(workspace, summary.study_name)):
        _fail_stale(study)
        _close_dead_children(study, tracker, FAILED)
        requeued = _requeue_failed(study)
    if requeued:
        console.print(f"re-queued failed trial(s) {', '.join(map(str, requeued))}")

    args = WorkerArgs(
        study_path=str(definition.path), scale=scale, workspace=str(workspace.root),
        storage=url, target=target, parent_run_id=parent_id, tracking_uri=tracking_uri,
        quiet=quiet, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
        seed_offset=len(study.get_trials(deepcopy=False)),
    )
    children: list[subprocess.Popen] = []
    status: str | None = FAILED
    try:
        if slurm is not None:
            summary.worker_job_ids = _submit_workers(args, workers, slurm, workspace,
                                                     summary.study_name)
            if not wait:
                status = None  # the workers finish the study; the parent run stays RUNNING
                return summary
            summary.worker_exit_codes = _wait_for_workers(summary.worker_job_ids)
            status = FINISHED
            return summary
        for index in range(1, workers):
            worker_args = {**asdict(args), "seed_offset": args.seed_offset + 1000 * index}
            children.append(subprocess.Popen(
                [sys.executable, "-m", "lafite.tuning", "worker", json.dumps(worker_args)],
            ))
        work(args, console=console)
        summary.worker_exit_codes = [child.wait() for child in children]
        status = FINISHED
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT if status == KILLED else signal.SIGTERM)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        _fill_summary(summary, study, definition)
        if summary.finished < target and status == FINISHED:
            status = FAILED
        if status is not None:  # None: submitted to SLURM, whose workers record the rest
            try:
                out = workspace.root / "tuning" / summary.study_name
                write_study_artifacts(study, definition, scale, out)
                summary.artifacts_dir = str(out)
                tracker.client.log_artifacts(parent_id, str(out), "study")
                tracker.client.log_metric(parent_id, "study/finished_trials", summary.finished)
                tracker.client.log_metric(parent_id, "study/training_iterations",
                                          summary.budget_steps)
                if summary.best:
                    for metric, value in zip(summary.objectives, summary.best[0]["values"]):
                        tracker.client.log_metric(parent_id, f"study/best/{metric}", value)
            finally:
                tracker.finish_parent(parent_id, status)
    failed_workers = [code for code in summary.worker_exit_codes if code != 0]
    if failed_workers:
        console.print(f"[red]{len(failed_workers)} worker process(es) exited with an error "
                      f"(codes {failed_workers})[/red]")
    return summary


def _submit_workers(args: WorkerArgs, workers: int, settings: Any, workspace: Workspace,
                    study_name: str) -> list[str]:
    """One SLURM job per worker, each with its own sampler seed."""
    from lafite.launch import slurm as slurm_mod

    ids = []
    for index in range(workers):
        worker_args = {**asdict(args), "seed_offset": args.seed_offset + 1000 * index,
                       "quiet": True}
        submitted = slurm_mod.submit(slurm_mod.TuneWorkerTask(worker_args), settings, workspace,
                                     slurm_mod.job_name("tune", study_name, f"w{index}"))
        ids.append(submitted.job_id)
    return ids


def _wait_for_workers(job_ids: list[str], poll_seconds: float = 2.0) -> list[int]:
    """Until every worker job has left the queue; 0 for a COMPLETED job, 1 otherwise."""
    from lafite.launch import slurm as slurm_mod

    while True:
        states = slurm_mod.job_states(job_ids)
        if not any(st.active for st in states.values()):
            return [0 if states[j].state == "COMPLETED" else 1 for j in job_ids]
        time.sleep(poll_seconds)


def _lock_path(workspace: Workspace, study_name: str) -> Path:
    return workspace.locks_dir / f"tune-{study_name}.lock"


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _close_dead_children(study: optuna.Study, tracker: Any, failed: str) -> None:
    """MLflow runs of trials that Optuna failed (dead workers) are still RUNNING: close them."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(ATTR_MLFLOW)
        if not run_id:
            continue
        try:
            run = tracker.client.get_run(run_id)
        except Exception:  # deleted or in another store: nothing to close
            continue
        if run.info.status == "RUNNING":
            tracker.client.set_tag(run_id, TAG_STATE, "FAIL")
            tracker.client.set_terminated(run_id, status=failed)


def _origins(trial: FrozenTrial) -> set[int]:
    """The trials this one retries (by the heartbeat callback or by a re-run)."""
    found = set(trial.system_attrs.get("retry_history", []))
    if ATTR_RETRY_OF in trial.user_attrs:
        found.add(int(trial.user_attrs[ATTR_RETRY_OF]))
    return found


def _requeue_failed(study: optuna.Study) -> list[int]:
    """Queue each failed trial's parameters again, once, up to MAX_RETRIES per original.

    A failed trial already retried (by the heartbeat callback or by an earlier invocation) is
    not queued twice; the retry copies its user attributes, so it resumes the same run folder.
    """
    trials = study.get_trials(deepcopy=False)
    retried: set[int] = set()
    for trial in trials:
        retried |= _origins(trial)
    requeued: list[int] = []
    for trial in trials:
        if trial.state != TrialState.FAIL or trial.number in retried or not trial.params:
            continue
        depth = max(int(trial.user_attrs.get(ATTR_RETRIES, 0)),
                    len(trial.system_attrs.get("retry_history", [])))
        if depth >= MAX_RETRIES:
            continue
        attrs = {k: v for k, v in trial.user_attrs.items() if k != ATTR_MLFLOW}
        attrs.update({ATTR_RETRY_OF: trial.number, ATTR_RETRIES: depth + 1})
        study.enqueue_trial(trial.params, user_attrs=attrs)
        requeued.append(trial.number)
    return requeued


def work(args: WorkerArgs, console: Any = None) -> int:
    """One worker: take trials of the study and train them until the target is reached.

    Returns the number of trials this worker ran. Under the study's file lock it fails stale
    trials, counts, and (when more are needed) asks Optuna for a trial; the objective releases
    the lock as soon as its trial exists, so other workers see it as RUNNING when they count.
    """
    from rich.console import Console

    from lafite.tracking import Tracker

    console = console or Console(stderr=True, quiet=args.quiet)
    definition = load_study_file(args.study_path)
    workspace = Workspace.resolve(args.workspace)
    store, _ = open_storage(args.storage, workspace, heartbeat_interval=args.heartbeat_interval,
                            grace_period=args.grace_period)
    base = definition.base_config(args.scale)
    study = _create_or_load(definition, args.scale, store,
                            sampler=definition.make_sampler(args.seed_offset),
                            pruner=definition.make_pruner(base))
    tracker = Tracker(workspace, args.tracking_uri)
    lock_path = _lock_path(workspace, definition.study_name(args.scale))
    ran = 0
    consecutive_failures = 0
    while True:
        with exclusive(lock_path) as release:
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in COUNTED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done >= args.target:
                return ran
            if done + running >= args.target:
                if not _heartbeats(store):
                    return ran  # no heartbeats: cannot tell a dead worker's trial from a live one
                release()
                time.sleep(args.poll_seconds)  # another worker's last trials; retry if it dies
                continue
            objective = TrialObjective(definition, args.scale, workspace, tracker,
                                       args.parent_run_id, base, release, console,
                                       run_folder(study, args.storage))
            try:
                study.optimize(objective, n_trials=1, gc_after_trial=False)
                consecutive_failures = 0
            except UserError:
                raise
            except Exception as exc:  # recorded as a FAIL trial; the study goes on
                consecutive_failures += 1
                console.print(f"[red]trial failed:[/red] {type(exc).__name__}: {exc}")
                if consecutive_failures >= 3:
                    raise UserError(
                        f"study {definition.study_name(args.scale)}: three trials in a row "
                        f"failed (last: {type(exc).__name__}: {exc}); see the failed MLflow runs "
                        f"of experiment {definition.experiment!r}"
                    ) from exc
            ran += 1


def run_folder(study: optuna.Study, storage: str) -> str:
    """The folder (under ``<workspace>/runs/tune/``) where this study's trials train."""
    stored = study.user_attrs.get(ATTR_RUN_FOLDER)
    if stored:
        return str(stored)
    digest = hashlib.sha256(storage.encode()).hexdigest()[:8]  # studies made before the attr
    return f"{study.study_name}-{digest}"


class TrialObjective:
    """Train one trial's configuration; report its evaluations; return its objective(s)."""

    def __init__(self, definition: StudyDefinition, scale: str, workspace: Workspace,
                 tracker: Any, parent_id: str, base: RunConfig,
                 release_lock: Callable[[], None], console: Any, folder: str) -> None:
        self.definition, self.scale, self.workspace = definition, scale, workspace
        self.folder = folder
        self.tracker, self.parent_id, self.base = tracker, parent_id, base
        self.release_lock, self.console = release_lock, console

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.release_lock()
        definition = self.definition
        params = {p.key: p.suggest(trial) for p in definition.search}
        cfg = definition.trial_config(self.scale, params, self.base)
        # A retry (same parameters) resumes the dead trial's checkpoint from its folder.
        run_dir = trial.user_attrs.get(ATTR_RUN_DIR) or str(
            self.workspace.runs_dir / "tune" / self.folder / f"trial-{trial.number:04d}")
        trial.set_user_attr(ATTR_RUN_DIR, run_dir)
        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        logger = self.tracker.start_child(
            definition.experiment, self.parent_id, row=f"trial {trial.number}",
            scale=self.scale, seed=cfg.train.seed, config_hash=cfg.hash(),
            config=cfg.to_dict(), flat_params=cfg.flat(),
            extra_tags={TAG_STUDY: definition.id, TAG_OPTUNA_STUDY: definition.study_name(self.scale),
                        TAG_TRIAL: str(trial.number), TAG_STATE: "RUNNING",
                        "lafite.run_dir": run_dir,
                        **{f"lafite.trial.param.{k}": str(v) for k, v in params.items()},
                        **({"lafite.trial.retry_of": str(trial.user_attrs[ATTR_RETRY_OF])}
                           if ATTR_RETRY_OF in trial.user_attrs else {})},
        )
        trial.set_user_attr(ATTR_MLFLOW, logger.run_id)
        self.console.print(f"trial {trial.number}: "
                           + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in params.items()))
        from lafite.tracking import FAILED, FINISHED, KILLED

        try:
            values = self._train(trial, cfg, Path(run_dir), logger)
        except optuna.TrialPruned:
            logger.set_tags({TAG_STATE: "PRUNED"})
            logger.close(FINISHED)
            raise
        except KeyboardInterrupt:
            logger.set_tags({TAG_STATE: "FAIL"})
            logger.close(KILLED)
            raise
        except BaseException:
            logger.set_tags({TAG_STATE: "FAIL"})
            logger.close(FAILED)
            raise
        logger.set_tags({TAG_STATE: "COMPLETE"})
        logger.log_metrics(cfg.train.kimg, {f"objective/{m}": v for m, v in
                                            zip([o.metric for o in definition.objectives], values)})
        logger.close(FINISHED)
        return values[0] if len(values) == 1 else tuple(values)

    def _train(self, trial: optuna.Trial, cfg: RunConfig, run_dir: Path,
               logger: Any) -> list[float]:
        from lafite import jobs as jobs_mod
        from lafite.launch.execute import EVALUATION_KEY, make_evaluator
        from lafite.train import TrainCallbacks, load_generator, train_run

        definition = self.definition
        metrics = [o.metric for o in definition.objectives]
        single = not definition.multi_objective
        evaluate_full = make_evaluator(cfg, self.workspace)
        last: dict[str, Any] = {}

        def evaluate(g_ema: Any, kimg: float) -> dict[str, Any] | None:
            # The untrained generator scores alike in every trial: not worth an evaluation.
            if kimg <= 0:
                return None
            return evaluate_full(g_ema, kimg)

        def on_evaluate(kimg: float, values: dict[str, Any]) -> None:
            values = dict(values)
            full = values.pop(EVALUATION_KEY, None)
            logger.log_metrics(kimg, values)
            if full is not None and full.get("not_computed"):
                logger.set_tags({f"lafite.not_computed.{k}": str(v)[:500]
                                 for k, v in full["not_computed"].items()})
            steps = int(round(kimg * 1000 / cfg.train.batch))
            trial.set_user_attr(ATTR_STEPS, steps)
            trial.set_user_attr(ATTR_KIMG, kimg)
            last.clear()
            last.update(values)
            last["_kimg"] = kimg
            if single and metrics[0] in values and math.isfinite(float(values[metrics[0]])):
                step = report_step(kimg)
                trial.report(float(values[metrics[0]]), step)
                if kimg < cfg.train.kimg and trial.should_prune():
                    logger.set_tags({"lafite.trial.pruned_at_kimg": f"{kimg:g}"})
                    raise optuna.TrialPruned(f"pruned at {kimg:g} kimg "
                                             f"({metrics[0]}={values[metrics[0]]:.4g})")

        extra: dict[str, Any] = {}
        for job in jobs_mod.needed_jobs(cfg):
            path = jobs_mod.ensure(job, self.workspace, progress=False)
            if job.name == cfg.perturb.nn_job and job.kind == "inference-model":
                from lafite.perturb import load_inference_model

                extra["inference_model"] = load_inference_model(path)
            elif job.name == cfg.train.init_job and job.kind == "generator":
                extra["init_checkpoint"] = path
            elif job.name == cfg.data.captions_job and job.kind == "captioner":
                extra["captions"] = path

        callbacks = TrainCallbacks(
            on_metrics=lambda kimg, values: logger.log_metrics(kimg, values),
            on_evaluate=on_evaluate,
            on_artifact=lambda path: logger.log_artifact(path, "samples"),
            evaluate=evaluate,
        )
        result = train_run(cfg, run_dir, self.workspace, callbacks, **extra)
        if last.get("_kimg") != result.kimg:
            # Resumed a run that had finished training but not its final evaluation.
            g_ema, _ = load_generator(result.final_checkpoint)
            on_evaluate(result.kimg, evaluate_full(g_ema, result.kimg))
        missing = [m for m in metrics if m not in last or not math.isfinite(float(last[m]))]
        if missing:
            raise RuntimeError(f"the final evaluation produced no finite {', '.join(missing)} "
                               "(see the run's lafite.not_computed tags)")
        return [float(last[m]) for m in metrics]


# -- reading a study ---------------------------------------------------------------------------


def _fill_summary(summary: StudySummary, study: optuna.Study,
                  definition: StudyDefinition) -> None:
    trials = study.get_trials(deepcopy=False)
    summary.counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    summary.budget_steps = sum(int(t.user_attrs.get(ATTR_STEPS, 0)) for t in trials)
    summary.best = [_trial_entry(t) for t in best_trials(study, definition)]


def _trial_entry(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "values": list(trial.values or []),
            "params": dict(trial.params), "mlflow_run_id": trial.user_attrs.get(ATTR_MLFLOW, ""),
            "train_steps": int(trial.user_attrs.get(ATTR_STEPS, 0))}


def best_trials(study: optuna.Study, definition: StudyDefinition,
                top: int | None = None) -> list[FrozenTrial]:
    """Single objective: COMPLETE trials best first. Two: the Pareto front by first objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if definition.multi_objective:
        ranked = sorted(study.best_trials, key=lambda t: _sort_key(t, definition))
    else:
        ranked = sorted(complete, key=lambda t: _sort_key(t, definition))
    return ranked[:top] if top else ranked


def _sort_key(trial: FrozenTrial, definition: StudyDefinition) -> float:
    value = trial.values[0]
    return -value if definition.objectives[0].higher_is_better else value


def load_existing_study(definition: StudyDefinition, scale: str, workspace: Workspace,
                        storage: str | None = None) -> optuna.Study:
    """The stored study, or one UserError saying how to create it. Never creates anything."""
    url = storage or default_storage(workspace)
    if storage is None and not workspace.optuna_db.exists():
        raise UserError(f"no study {definition.study_name(scale)!r} yet (no {workspace.optuna_db}); "
                        f"run `lafite-repro tune --study {definition.id} --scale {scale}` first")
    store, _ = open_storage(url, workspace)
    try:
        return optuna.load_study(study_name=definition.study_name(scale), storage=store)
    except KeyError:
        raise UserError(f"no study {definition.study_name(scale)!r} in {storage_label(url)}; run "
                        f"`lafite-repro tune --study {definition.id} --scale {scale}` first"
                        ) from None


def describe_study(study_id: str, workspace: Workspace, scale: str = "mini",
                   storage: str | None = None, top: int = 5) -> str:
    """The text of ``lafite-repro show --study``: state, best trials, and how to re-run the best
    configuration as a row of its spec (``run`` takes rows from spec files, so the row to paste
    is printed with the command that runs it)."""
    definition = find_study(study_id)
    study = load_existing_study(definition, scale, workspace, storage)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    metrics = [o.metric for o in definition.objectives]
    lines = [
        f"study {definition.study_name(scale)}: {definition.title}",
        f"  base: {definition.spec_id} row {definition.row!r}"
        + (f" with {_inline(definition.set)}" if definition.set else ""),
        "  search: " + "; ".join(p.describe() for p in definition.search),
        "  objectives: " + ", ".join(f"{o.metric} ({o.direction})" for o in definition.objectives),
        "  trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
        + f"; {sum(int(t.user_attrs.get(ATTR_STEPS, 0)) for t in trials)} training iterations",
    ]
    best = best_trials(study, definition, top)
    if not best:
        lines.append("  no COMPLETE trial yet")
        return "\n".join(lines)
    title = "Pareto front" if definition.multi_objective else f"best {len(best)} trial(s)"
    lines.append(f"{title}:")
    keys = [p.key for p in definition.search]
    header = ["trial", *metrics, *keys, "iterations"]
    rows = [[str(t.number), *[f"{v:.4g}" for v in t.values],
             *[_fmt(t.params.get(k)) for k in keys], str(t.user_attrs.get(ATTR_STEPS, ""))]
            for t in best]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    winner = best[0]
    row_name, snippet = row_snippet(definition, winner)
    spec_file = definition.spec().path or definition.spec_id
    lines += [
        "",
        f"To re-run trial {winner.number} as a row of {definition.spec_id}, add this under "
        f"'rows:' in {spec_file}:",
        snippet,
        "then run:",
        f"  lafite-repro run {definition.spec_id} --scale {scale} --rows {_shell_quote(row_name)}",
    ]
    return "\n".join(lines)


def row_entry(definition: StudyDefinition, trial: FrozenTrial) -> dict[str, Any]:
    """A spec row (name and ``set``) that trains ``trial``'s configuration."""
    short = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in trial.params.items())
    name = f"{definition.row}, tuned {short} ({definition.id} trial {trial.number})"
    values = {k: _round(v) for k, v in definition.row_set(dict(trial.params)).items()}
    return {"name": name, "set": values}


def row_snippet(definition: StudyDefinition, trial: FrozenTrial) -> tuple[str, str]:
    """(row name, YAML text of that row, indented to paste under ``rows:``)."""
    entry = row_entry(definition, trial)
    body = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=100)
    return entry["name"], "\n".join("  " + line for line in body.rstrip().splitlines())


def _round(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# -- summary artifacts -------------------------------------------------------------------------


def write_study_artifacts(study: optuna.Study, definition: StudyDefinition, scale: str,
                          out: Path) -> list[Path]:
    """Best trials, importances, history/slice/curve plots and the trials table, in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    trials = study.get_trials(deepcopy=False)
    metrics = [o.metric for o in definition.objectives]
    keys = [p.key for p in definition.search]

    frame = study.trials_dataframe()
    path = out / "trials.csv"
    frame.to_csv(path, index=False)
    written.append(path)

    best = best_trials(study, definition)
    best_doc: dict[str, Any] = {
        "study": definition.study_name(scale), "objectives": metrics,
        "directions": [o.direction for o in definition.objectives],
        "best": [_trial_entry(t) for t in best[:10]],
    }
    if best:
        best_doc["row"] = row_entry(definition, best[0])
    path = out / "best.yaml"
    path.write_text(yaml.safe_dump(best_doc, sort_keys=False))
    written.append(path)

    importances: dict[str, Any] = {}
    for i, metric in enumerate(metrics):
        if len(keys) == 1:
            # One searched parameter explains everything there is to explain.
            importances[metric] = {keys[0]: 1.0}
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(
                    study, target=(lambda t, i=i: t.values[i]) if len(metrics) > 1 else None)
            importances[metric] = {k: float(v) for k, v in values.items()}
        except (RuntimeError, ValueError) as exc:
            importances[metric] = {"not_computed": str(exc).splitlines()[0]}
    path = out / "importances.json"
    path.write_text(json.dumps(importances, indent=2))
    written.append(path)

    finished = [t for t in trials if t.state in COUNTED and (t.values or t.intermediate_values)]

    def value_of(t: FrozenTrial, i: int) -> float | None:
        if t.values:
            return t.values[i]
        if i == 0 and t.intermediate_values:
            return t.intermediate_values[max(t.intermediate_values)]
        return None

    # Optimisation history: each trial's value and the running best, per objective.
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for i, objective in enumerate(definition.objectives):
        ax = axes[0][i]
        for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
            points = [(t.number, value_of(t, i)) for t in finished if t.state == state]
            points = [p for p in points if p[1] is not None]
            if points:
                ax.scatter(*zip(*points), marker=marker, label=state.name.lower())
        complete = sorted((t for t in finished if t.state == TrialState.COMPLETE),
                          key=lambda t: t.number)
        if complete:
            pick = max if objective.higher_is_better else min
            running, xs, ys = None, [], []
            for t in complete:
                running = t.values[i] if running is None else pick(running, t.values[i])
                xs.append(t.number)
                ys.append(running)
            ax.step(xs, ys, where="post", color="black", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(objective.metric)
        ax.set_title(f"{objective.metric} ({objective.direction})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "history.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    # Slice plots: objective against each parameter (pruned trials at their last value).
    fig, axes = plt.subplots(len(metrics), len(keys), figsize=(4 * len(keys), 3.4 * len(metrics)),
                             squeeze=False)
    for i, objective in enumerate(definition.objectives):
        for j, param in enumerate(definition.search):
            ax = axes[i][j]
            for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
                points = [(t.params[param.key], value_of(t, i)) for t in finished
                          if t.state == state and param.key in t.params]
                points = [p for p in points if p[1] is not None]
                if points:
                    ax.scatter(*zip(*points), marker=marker, label=state.name.lower())
            if param.log:
                ax.set_xscale("log")
            if not param.choices:
                ax.set_xlim(param.low, param.high)
            ax.set_xlabel(param.key)
            ax.set_ylabel(objective.metric)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "slice.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    # Evaluation curves: what the pruner saw.
    if not definition.multi_objective:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for t in trials:
            if t.intermediate_values:
                steps = sorted(t.intermediate_values)
                ax.plot([s / 1000 for s in steps], [t.intermediate_values[s] for s in steps],
                        marker="o", linestyle="-" if t.state == TrialState.COMPLETE else ":",
                        label=f"{t.number} ({t.state.name.lower()})")
        ax.set_xlabel("kimg")
        ax.set_ylabel(metrics[0])
        ax.set_title("evaluations reported to the pruner")
        if len(trials) <= 20:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / "curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# -- dry run -----------------------------------------------------------------------------------


def _print_plan(definition: StudyDefinition, scale: str, base: RunConfig, summary: StudySummary,
                workspace: Workspace, storage: str | None, workers: int, console: Any) -> None:
    spec = definition.spec()
    row_cfg = spec.resolve(spec.row(definition.row), scale).flat()
    changed = {k: v for k, v in base.flat().items() if row_cfg.get(k) != v}
    console.print(f"[bold]study {summary.study_name}[/bold]: {definition.title}", markup=True, soft_wrap=True)
    console.print(f"  base row: {definition.spec_id} / {definition.row!r} at scale {scale}",
                  markup=False, soft_wrap=True)
    console.print("  study changes: " + (_inline(changed) or "-"), markup=False, soft_wrap=True)
    for param in definition.search:
        console.print(f"  search: {param.describe()}", markup=False, soft_wrap=True)
    console.print("  objectives: " + ", ".join(f"{o.metric} ({o.direction})"
                                               for o in definition.objectives), markup=False, soft_wrap=True)
    console.print(f"  sampler: {_inline(definition.sampler)}; pruner: {_inline(definition.pruner)}"
                  f" (evaluations every {base.train.eval_kimg:g} of {base.train.kimg:g} kimg)",
                  markup=False, soft_wrap=True)
    existing = "unknown"
    if storage is None and not workspace.optuna_db.exists():
        existing = "0 (the storage does not exist yet)"
    elif storage is None:
        with contextlib.suppress(UserError):
            study = load_existing_study(definition, scale, workspace, None)
            existing = str(sum(t.state in COUNTED for t in study.get_trials(deepcopy=False)))
    console.print(f"  storage: {summary.storage}; trials: {summary.target} "
                  f"(done so far: {existing}); workers: {workers}", markup=False, soft_wrap=True)
    console.print(f"  MLflow: experiment {definition.experiment!r}, one child run per trial",
                  markup=False, soft_wrap=True)


# -- worker entry point ------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM from the parent (it was interrupted): leave like Ctrl-C, so the trial's MLflow
    run is closed as KILLED and Optuna records the trial as failed (to be retried)."""
    raise KeyboardInterrupt


def _worker_main(argv: list[str]) -> int:
    """``python -m lafite.tuning worker '<json WorkerArgs>'``: one extra worker process."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m lafite.tuning worker '<json>' (started by lafite-repro tune)",
              file=sys.stderr)
        return 2
    args = WorkerArgs(**json.loads(argv[1]))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        work(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))


__all__ = [
    "Objective",
    "SearchParam",
    "StudyDefinition",
    "StudyError",
    "StudySummary",
    "WorkerArgs",
    "best_trials",
    "default_storage",
    "describe_study",
    "find_study",
    "load_existing_study",
    "load_studies",
    "load_study_file",
    "open_storage",
    "parse_study",
    "row_entry",
    "row_snippet",
    "run_study",
    "study_files",
    "work",
    "write_study_artifacts",
]
