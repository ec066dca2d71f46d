"""Study files: their constants, validation and loading (``experiments/studies/<id>.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from lafite.config import RunConfig
from lafite.errors import ConfigError, UserError

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

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


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

