"""Experiment specs: one YAML file per paper table or figure, validated on load.

A spec says what a table of the paper measures (its metrics and which way is better), the
paper's setting shared by every row (``base``), what each row changes (``set``, dotted
RunConfig keys), the numbers the paper prints for it (``paper``) and how each scale shrinks
the setting (``scales``). :func:`plan` turns a spec, a scale and a number of seeds into the
resolved :class:`~lafite.config.RunConfig` of every run, each named by a stable hash.

The schema has to fit every table and figure of the paper, not only Table 5:

- rows of other methods that the suite does not train (AttnGAN, DALL-E, XMC-GAN ...) carry the
  paper's numbers only: ``reference: true`` and no ``set``;
- tables that report several datasets side by side (Tables 3 and 4) give each row a ``dataset``
  (a real dataset id: coco2014, cub, ln-coco, mm-celeba-hq, cc3m, ffhq). It is the row's column
  group (shown under the paper's name of the dataset), and it resolves to ``data.dataset`` at
  paper scale and to the dataset's world analogue (``world.domain``) at the world scales, so one
  row serves every scale; a dataset the world has no domain for is rejected at load;
- figures give rows an ``x`` value (Figure 7: the percentage of paired data; Figure 1: the number
  of parameters) and a ``series``, with the axis described by ``x_axis``.

Every mistake is a :class:`SpecError` that names the file, the line where YAML knows it, the row
and the field, because a spec is the one file a user edits to run an experiment.

Resolution order of a run's configuration: RunConfig defaults, then ``base``, then the scale's
overrides, then the row's ``dataset``, then the row's ``set`` (and its ``needs``), then the row's
own overrides for that scale, then the seed; then the checks across fields (the mode and its
pair fraction, the pre-trained model a zero-shot row needs). Scales change the environment (data, sizes, schedule); rows change the
method; so a row's choice survives the scale unless the row itself says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lafite.config import RunConfig
from lafite.errors import ConfigError, UserError
from lafite.launch.settings import SlurmSettings

SCALES = ("smoke", "mini", "paper")
# The label of the row a spec row's ``import:`` adds (lafite/importer.py).
AUTHORS_CHECKPOINT = "authors' checkpoint"

# Roles a row may name in ``needs`` and the RunConfig field that takes the job's name.
NEEDS_FIELDS = {"inference_model": "perturb.nn_job", "generator": "train.init_job",
                "captioner": "data.captions_job"}


class SpecError(UserError):
    """A mistake in an experiment spec file; the message names file, row and field."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    # None: a property of the run (feature-dim), shown but not ranked.
    higher_is_better: bool | None
    label: str = ""

    @property
    def ranked(self) -> bool:
        return self.higher_is_better is not None

    @property
    def arrow(self) -> str:
        """"↑", "↓", or "" for a property."""
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]


@dataclass(frozen=True)
class ScaleSpec:
    """How one scale shrinks the paper's setting: overrides and the default number of seeds."""

    name: str
    overrides: dict[str, Any]
    seeds: int = 1
    # SLURM settings a table needs at this scale (time limit, GPUs per run): lafite.launch.settings
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowSpec:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)
    needs: dict[str, str] = field(default_factory=dict)
    reference: bool = False
    group: str = ""
    series: str = ""
    x: float | None = None
    dataset: str = ""
    scale_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""
    # "file: rows[i] 'name'", for messages about this row.
    where: str = ""
    # ``import:``: an authors' checkpoint to evaluate beside this row, by scale ("*": every
    # scale); a name of `lafite-repro import` or the path of an official snapshot.
    imports: dict[str, str] = field(default_factory=dict)
    # Set on the row an import adds: the name of the row whose authors' checkpoint it is.
    authors_of: str = ""

    def import_ref(self, scale: str) -> str:
        """The authors' checkpoint this row names at ``scale`` ("" for none)."""
        return self.imports.get(scale, self.imports.get("*", ""))

    def authors_row(self) -> RowSpec:
        """The row an ``import:`` adds: the authors' checkpoint, evaluated with this row's
        settings, shown between the paper's number and this row's run."""
        return RowSpec(
            name=f"{self.name}: {AUTHORS_CHECKPOINT}", paper=dict(self.paper), group=self.group,
            series=f"{self.series}: {AUTHORS_CHECKPOINT}" if self.series else "", x=self.x,
            dataset=self.dataset, notes=f"the authors' released model, evaluated with the "
            f"settings of row {self.name!r}", where=f"{self.where} import", authors_of=self.name,
        )


@dataclass(frozen=True)
class Spec:
    id: str
    title: str
    paper: dict[str, Any]
    metrics: tuple[MetricSpec, ...]
    base: dict[str, Any]
    rows: tuple[RowSpec, ...]
    scales: dict[str, ScaleSpec]
    notes: str = ""
    x_axis: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def kind(self) -> str:
        """"table" or "figure", from the ``paper`` reference."""
        return "figure" if "figure" in self.paper else "table"

    @property
    def trainable_rows(self) -> tuple[RowSpec, ...]:
        return tuple(r for r in self.rows if not r.reference)

    def report_rows(self, scale: str) -> tuple[RowSpec, ...]:
        """The rows as the report lists them at ``scale``: each row that imports an authors'
        checkpoint there is preceded by the row of that checkpoint."""
        out: list[RowSpec] = []
        for row in self.rows:
            if row.import_ref(scale):
                out.append(row.authors_row())
            out.append(row)
        return tuple(out)

    def resolve_import(self, row: RowSpec, scale: str, extra: dict[str, Any] | None = None,
                       workspace: Any = None) -> tuple[RowSpec, RunConfig, str]:
        """The run of the authors' checkpoint that ``row`` names at ``scale``: the row's own
        settings (data, CLIP, evaluation), with the checkpoint's layout, evaluated without
        training (mode zero-shot, train.init_checkpoint). Returns (its row, its configuration,
        the sha256 of the checkpoint's source file)."""
        from lafite.importer import resolve_reference

        ref = row.import_ref(scale)
        where = f"{row.where or row.name}: import (scale {scale})"
        try:
            checkpoint, detected, sha256 = resolve_reference(ref, workspace)
        except UserError as exc:
            raise SpecError(f"{where}: {exc}") from None
        cfg = self.resolve(row, scale, 0, extra)
        if cfg.data.resolution != detected.resolution:
            raise SpecError(
                f"{where}: {ref!r} is a {detected.resolution} px model and this row runs at "
                f"{cfg.data.resolution} px at scale {scale}; name the import only for the scales "
                f"it fits (import: {{paper: {ref}}})"
            )
        layout = {k: v for k, v in detected.model_overrides().items() if k != "data.resolution"}
        try:
            cfg = cfg.override({
                **layout, "mode": "zero-shot", "train.init_checkpoint": str(checkpoint),
                "train.init_job": "", "data.paired_fraction": 1.0, "perturb.kind": "none",
                "perturb.nn_job": "", "data.captions_job": "", "data.captions_file": "",
            }, where=where).checked(where)
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        return row.authors_row(), cfg, sha256

    def row(self, name: str) -> RowSpec:
        for r in self.rows:
            if r.name == name:
                return r
        raise UserError(
            f"{self.id}: no row named {name!r}. Rows: {', '.join(r.name for r in self.trainable_rows)}"
        )

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise UserError(f"{self.id}: no metric {name!r}")

    def base_config(self, scale: str) -> RunConfig:
        """The configuration every row starts from at ``scale`` (base plus scale overrides)."""
        scale_spec = self.scale(scale)
        try:
            cfg = RunConfig().override(self.base, where=f"{_file(self)}: base")
            cfg = cfg.override({"scale": scale}, where=f"{_file(self)}: scales.{scale}")
            return cfg.override(scale_spec.overrides, where=f"{_file(self)}: scales.{scale}")
        except ConfigError as exc:
            raise SpecError(str(exc)) from None

    def resolve(
        self, row: RowSpec, scale: str, seed: int = 0, extra: dict[str, Any] | None = None
    ) -> RunConfig:
        """The complete configuration of one run of ``row`` at ``scale`` with ``seed``.

        ``extra`` (dotted keys, from ``run --set``) is applied last, before the seed: the
        user's word on this machine (a data root, a weights file) beats the spec's.
        """
        if row.reference:
            raise UserError(f"{row.where}: is a reference row (paper numbers only); it has no run")
        cfg = self.base_config(scale)
        where = row.where or f"{self.id}: row {row.name!r}"
        try:
            if row.dataset:
                from lafite.data.datasets import dataset_overrides

                try:
                    cfg = cfg.override(dataset_overrides(cfg, row.dataset), where=where)
                except UserError as exc:
                    raise SpecError(f"{where}: dataset (at scale {scale}): {exc}") from None
            cfg = cfg.override(row.overrides, where=f"{where}: set")
            cfg = cfg.override(
                {NEEDS_FIELDS[role]: job for role, job in row.needs.items()}, where=f"{where}: needs"
            )
            cfg = cfg.override(
                row.scale_overrides.get(scale, {}), where=f"{where}: scales.{scale}"
            )
            cfg = cfg.override(extra or {}, where="--set")
            cfg = cfg.override({"train.seed": seed}, where=where)
            return cfg.checked(f"{where} (scale {scale})")
        except ConfigError as exc:
            raise SpecError(str(exc)) from None

    def scale(self, name: str) -> ScaleSpec:
        if name not in self.scales:
            raise UserError(
                f"{self.id}: unknown scale {name!r}; this spec defines: "
                f"{', '.join(s for s in SCALES if s in self.scales)}"
            )
        return self.scales[name]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan: a row at a scale with a seed, its configuration and its hash."""

    spec_id: str
    row: RowSpec
    scale: str
    seed: int
    config: RunConfig
    hash: str

    @property
    def label(self) -> str:
        return f"{self.row.name} (seed {self.seed})"


# -- metric names ------------------------------------------------------------------------------


def known_metrics() -> dict[str, bool | None]:
    """Metric name -> higher_is_better (None for a property such as feature-dim), from the metrics package's registry (the one list of
    metric names the spec loader, the CLI and the report share)."""
    from lafite.metrics import METRICS

    return {name: info.higher_is_better for name, info in METRICS.items()}


# -- loading -----------------------------------------------------------------------------------

_TOP_KEYS = {
    "id": str,
    "title": str,
    "paper": dict,
    "metrics": list,
    "base": dict,
    "rows": list,
    "scales": dict,
    "notes": str,
    "x_axis": dict,
    "extends": str,
}
_REQUIRED_TOP = ("id", "title", "paper", "metrics", "rows", "scales")
_PAPER_KEYS = {"table": int, "figure": int, "section": str, "page": int}
_METRIC_KEYS = {"name": str, "higher_is_better": bool, "label": str}
_ROW_KEYS = {
    "name": str,
    "set": dict,
    "paper": dict,
    "needs": dict,
    "reference": bool,
    "group": str,
    "series": str,
    "x": (int, float),
    "dataset": str,
    "scales": dict,
    "notes": str,
    "import": (str, dict),
}
_X_AXIS_KEYS = {"label": str, "log": bool, "unit": str}


def load(path: str | Path) -> Spec:
    """Read and validate one spec file; every problem is a :class:`SpecError`."""
    path = Path(path)
    return parse(_read_yaml(path), path)


def _read_yaml(path: Path, chain: tuple[str, ...] = ()) -> Any:
    """A spec file's YAML, with the ``base`` and ``scales`` of the spec it ``extends`` merged
    under its own (dotted key by dotted key), so that tables sharing the paper's setting and
    the scales' recipes (Tables 1, 2 and 4 share Table 5's) state them once and resolve to the
    same configurations, hence the same runs."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context else problem
        raise SpecError(f"{where}: YAML syntax error: {detail}. Fix the file at that line.") from None
    if isinstance(data, dict) and "extends" in data:
        parent_id = data["extends"]
        if not isinstance(parent_id, str):
            raise SpecError(f"{path}: extends: must be the id of another spec, got {parent_id!r}")
        if parent_id in chain or parent_id == path.stem:
            raise SpecError(f"{path}: extends: {parent_id!r} extends itself (through {' -> '.join(chain)})")
        files = spec_files()
        parent_path = path.parent / f"{parent_id}.yaml"
        if not parent_path.is_file():
            parent_path = files.get(parent_id)  # type: ignore[assignment]
        if parent_path is None:
            raise SpecError(
                f"{path}: extends: no spec {parent_id!r}; specs: {', '.join(files)}"
            )
        parent = _read_yaml(Path(parent_path), (*chain, path.stem))
        if not isinstance(parent, dict):
            raise SpecError(f"{parent_path}: a spec must be a mapping")
        data = dict(data)
        data["base"] = _merged(parent.get("base") or {}, data.get("base") or {})
        scales = dict(parent.get("scales") or {})
        for name, body in (data.get("scales") or {}).items():
            scales[name] = _merged(scales.get(name) or {}, body or {})
        data["scales"] = scales
    return data


def _merged(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``parent``, as flat dotted keys (a child's ``loss.gamma`` replaces the
    parent's ``loss: {gamma}`` and keeps its siblings)."""
    from lafite.config import _flatten

    if not isinstance(parent, dict) or not isinstance(child, dict):
        return child
    return {**_flatten(parent), **_flatten(child)}


def parse(data: Any, path: Path) -> Spec:
    """Validate a spec already read from YAML (``path`` names it in messages)."""
    name = str(path)
    if not isinstance(data, dict):
        raise SpecError(f"{name}: a spec must be a mapping with keys {', '.join(_TOP_KEYS)}")
    _check_keys(data, _TOP_KEYS, name, "top level")
    for key in _REQUIRED_TOP:
        if key not in data:
            raise SpecError(f"{name}: missing required key '{key}'")
    spec_id = data["id"]
    if spec_id != path.stem:
        raise SpecError(f"{name}: id {spec_id!r} must equal the file name {path.stem!r}")

    paper = data["paper"]
    _check_keys(paper, _PAPER_KEYS, name, "paper")
    if ("table" in paper) == ("figure" in paper):
        raise SpecError(f"{name}: paper: give exactly one of 'table' or 'figure' (a number)")

    registry = known_metrics()
    metrics: list[MetricSpec] = []
    for i, entry in enumerate(data["metrics"]):
        where = f"metrics[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{name}: {where}: expected a mapping {{name, higher_is_better}}")
        _check_keys(entry, _METRIC_KEYS, name, where)
        if "name" not in entry:
            raise SpecError(f"{name}: {where}: missing 'name'")
        if entry["name"] not in registry:
            raise SpecError(
                f"{name}: {where}: unknown metric {entry['name']!r}. "
                f"Known metrics: {', '.join(sorted(registry))}"
            )
        expected = registry[entry["name"]]
        if expected is None:
            if "higher_is_better" in entry:
                raise SpecError(
                    f"{name}: {where}: {entry['name']} is a property of the run, not a score: "
                    "remove 'higher_is_better'"
                )
            metrics.append(MetricSpec(entry["name"], None, entry.get("label", "")))
            continue
        if "higher_is_better" not in entry:
            raise SpecError(f"{name}: {where}: missing 'higher_is_better'")
        if entry["higher_is_better"] != expected:
            raise SpecError(
                f"{name}: {where}: {entry['name']} has higher_is_better: {expected} "
                f"in the metric registry, the spec says {entry['higher_is_better']}"
            )
        metrics.append(MetricSpec(entry["name"], entry["higher_is_better"], entry.get("label", "")))
    metric_names = {m.name for m in metrics}
    if len(metric_names) != len(metrics):
        raise SpecError(f"{name}: metrics: a metric is listed twice")

    base = data.get("base") or {}
    try:
        RunConfig().override(base, where=f"{name}: base")
    except ConfigError as exc:
        raise SpecError(str(exc)) from None

    x_axis = data.get("x_axis") or {}
    _check_keys(x_axis, _X_AXIS_KEYS, name, "x_axis")

    scales: dict[str, ScaleSpec] = {}
    for scale_name, body in data["scales"].items():
        where = f"scales.{scale_name}"
        if scale_name not in SCALES:
            raise SpecError(
                f"{name}: {where}: unknown scale {scale_name!r}; valid: {', '.join(SCALES)}"
            )
        if body is not None and not isinstance(body, dict):
            raise SpecError(f"{name}: {where}: expected a mapping of overrides")
        body = dict(body or {})
        seeds = body.pop("seeds", 1)
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise SpecError(f"{name}: {where}.seeds: must be a positive integer, got {seeds!r}")
        if "scale" in body:
            raise SpecError(f"{name}: {where}: 'scale' is set by the scale's name; remove it")
        slurm = dict(body.pop("slurm", None) or {})
        for key in [k for k in body if k.startswith("slurm.")]:  # flattened by `extends`
            slurm[key.removeprefix("slurm.")] = body.pop(key)
        try:
            SlurmSettings().merged(slurm, f"{name}: {where}.slurm")
        except UserError as exc:
            raise SpecError(str(exc)) from None
        scales[scale_name] = ScaleSpec(scale_name, body, seeds, dict(slurm))

    rows: list[RowSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["rows"]):
        rows.append(_parse_row(entry, i, name, metric_names, scales))
        if rows[-1].name in seen:
            raise SpecError(f"{name}: rows[{i}]: duplicate row name {rows[-1].name!r}")
        seen.add(rows[-1].name)
    if not rows:
        raise SpecError(f"{name}: rows: a spec needs at least one row")

    spec = Spec(
        id=spec_id,
        title=data["title"],
        paper=dict(paper),
        metrics=tuple(metrics),
        base=base,
        rows=tuple(rows),
        scales=scales,
        notes=data.get("notes", ""),
        x_axis=dict(x_axis),
        path=path,
    )
    # Resolve every row at every scale now, so that a bad value fails at load time and names
    # its row, not hours later when that row's turn comes.
    for row in spec.trainable_rows:
        for scale_name in spec.scales:
            spec.resolve(row, scale_name)
    return spec


def _parse_row(
    entry: Any, index: int, file: str, metric_names: set[str], scales: dict[str, ScaleSpec]
) -> RowSpec:
    if not isinstance(entry, dict):
        raise SpecError(f"{file}: rows[{index}]: expected a mapping with at least 'name'")
    label = f"rows[{index}]" + (f" {entry['name']!r}" if isinstance(entry.get("name"), str) else "")
    _check_keys(entry, _ROW_KEYS, file, label)
    if "name" not in entry:
        raise SpecError(f"{file}: {label}: missing 'name'")
    where = f"{file}: {label}"
    reference = entry.get("reference", False)
    if reference and ("set" in entry or "needs" in entry or "scales" in entry):
        raise SpecError(
            f"{where}: a reference row (paper numbers only) cannot have 'set', 'needs' or 'scales'"
        )
    paper: dict[str, float] = {}
    for metric, value in (entry.get("paper") or {}).items():
        if metric not in metric_names:
            raise SpecError(
                f"{where}: paper.{metric}: not one of this spec's metrics "
                f"({', '.join(sorted(metric_names))})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise SpecError(f"{where}: paper.{metric}: must be a number, got {value!r}")
        paper[metric] = float(value)
    needs = entry.get("needs") or {}
    for role, job in needs.items():
        if role not in NEEDS_FIELDS:
            raise SpecError(
                f"{where}: needs.{role}: unknown role; valid: {', '.join(NEEDS_FIELDS)}"
            )
        if not isinstance(job, str):
            raise SpecError(f"{where}: needs.{role}: must be a job name from experiments/jobs.yaml")
    row_scales: dict[str, dict[str, Any]] = {}
    for scale_name, body in (entry.get("scales") or {}).items():
        if scale_name not in scales:
            raise SpecError(
                f"{where}: scales.{scale_name}: not a scale of this spec ({', '.join(scales)})"
            )
        if not isinstance(body, dict):
            raise SpecError(f"{where}: scales.{scale_name}: expected a mapping of overrides")
        row_scales[scale_name] = body
    imports: dict[str, str] = {}
    raw_import = entry.get("import")
    if reference and raw_import is not None:
        raise SpecError(f"{where}: a reference row (paper numbers only) cannot have 'import'")
    if isinstance(raw_import, str):
        imports["*"] = raw_import
    elif isinstance(raw_import, dict):
        for scale_name, ref in raw_import.items():
            if scale_name not in scales:
                raise SpecError(
                    f"{where}: import.{scale_name}: not a scale of this spec ({', '.join(scales)})"
                )
            if not isinstance(ref, str) or not ref:
                raise SpecError(f"{where}: import.{scale_name}: give the name of an imported "
                                "model or the path of an official snapshot")
            imports[scale_name] = ref
    x = entry.get("x")
    dataset = entry.get("dataset", "")
    group = entry.get("group", "")
    if dataset:
        from lafite.data.datasets import DATASET_NAMES, REAL_DATASETS

        if dataset not in REAL_DATASETS:
            raise SpecError(
                f"{where}: dataset: unknown dataset {dataset!r}; valid: {', '.join(REAL_DATASETS)}"
            )
        group = group or DATASET_NAMES[dataset]
    return RowSpec(
        name=entry["name"],
        overrides=dict(entry.get("set") or {}),
        paper=paper,
        needs=dict(needs),
        reference=reference,
        group=group,
        series=entry.get("series", ""),
        x=float(x) if x is not None else None,
        dataset=dataset,
        scale_overrides=row_scales,
        notes=entry.get("notes", ""),
        where=where,
        imports=imports,
    )


def _check_keys(mapping: Any, schema: dict[str, Any], file: str, where: str) -> None:
    if not isinstance(mapping, dict):
        raise SpecError(f"{file}: {where}: expected a mapping")
    for key, value in mapping.items():
        if key not in schema:
            raise SpecError(
                f"{file}: {where}: unknown key {key!r}. Valid keys: {', '.join(schema)}"
            )
        expected = schema[key]
        if isinstance(value, bool) and expected is not bool and bool not in _as_tuple(expected):
            ok = False
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise SpecError(
                f"{file}: {where}: '{key}' must be {_type_name(expected)}, got {value!r}"
            )


def _as_tuple(t: Any) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _type_name(t: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a mapping", list: "a list"}
    return " or ".join(names.get(x, x.__name__) for x in _as_tuple(t))


def _file(spec: Spec) -> str:
    return str(spec.path) if spec.path else spec.id


# -- finding specs -----------------------------------------------------------------------------


def experiments_dirs() -> list[Path]:
    """Where spec files are looked up: ./experiments, then the one next to the package."""
    here = Path.cwd() / "experiments"
    shipped = Path(__file__).resolve().parent.parent / "experiments"
    dirs = [here]
    if shipped.resolve() != here.resolve():
        dirs.append(shipped)
    return [d for d in dirs if d.is_dir()]


def spec_files() -> dict[str, Path]:
    """Spec id -> file, for every table and figure spec (jobs.yaml is not a spec)."""
    found: dict[str, Path] = {}
    for folder in reversed(experiments_dirs()):
        for path in sorted(folder.glob("*.yaml")):
            if path.stem != "jobs":
                found[path.stem] = path
    return dict(sorted(found.items(), key=lambda kv: _natural(kv[0])))


def _natural(spec_id: str) -> tuple:
    head = spec_id.rstrip("0123456789")
    tail = spec_id[len(head):]
    return (head, int(tail) if tail else 0)


def find(spec_id: str) -> Spec:
    """Load the spec named ``spec_id`` (e.g. ``table5``) or a path to a spec file."""
    candidate = Path(spec_id)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return load(candidate)
    files = spec_files()
    if spec_id not in files:
        valid = ", ".join(files) or "(none found: run from the repository or pass a file path)"
        raise UserError(f"unknown table or figure {spec_id!r}. Valid choices: {valid}")
    return load(files[spec_id])


# -- planning ----------------------------------------------------------------------------------


def plan(
    spec: Spec,
    scale: str,
    seeds: int | None = None,
    rows: list[str] | tuple[str, ...] | None = None,
    extra: dict[str, Any] | None = None,
    workspace: Any = None,
) -> list[PlannedRun]:
    """Every run of ``spec`` at ``scale``: one per trainable row and seed, in row order.

    ``seeds`` defaults to the scale's count; seeds are 0 .. seeds-1. ``rows`` selects rows by
    name. ``extra`` holds dotted overrides applied to every run (``run --set``). The hashes
    of the jobs a run names (perturb.nn_job, train.init_job) and of the world CLIP it trains
    with enter the run's hash (``jobs.run_job_hashes``), so that redefining an inference model
    under the same name, or retraining the world CLIP with a new recipe, makes new runs instead
    of silently reusing results made with the old one.
    """
    scale_spec = spec.scale(scale)
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    n_seeds = seeds or scale_spec.seeds
    selected = list(spec.trainable_rows)
    if rows:
        valid = {r.name for r in spec.trainable_rows}
        unknown = [r for r in rows if r not in valid]
        if unknown:
            raise UserError(
                f"{spec.id}: unknown row(s) {', '.join(map(repr, unknown))}. "
                f"Valid rows: {', '.join(repr(r.name) for r in spec.trainable_rows)}"
            )
        selected = [r for r in selected if r.name in set(rows)]
    from lafite import jobs

    planned: list[PlannedRun] = []
    for row in selected:
        if row.import_ref(scale):
            # The authors' checkpoint: one evaluation (no seeds to average over), whose hash
            # also names the checkpoint's source file by its sha256.
            authors, cfg, sha256 = spec.resolve_import(row, scale, extra, workspace)
            job_hashes = {**jobs.run_job_hashes(cfg), "import": sha256}
            planned.append(PlannedRun(spec.id, authors, scale, 0, cfg, run_hash(cfg, job_hashes)))
        for seed in range(n_seeds):
            cfg = spec.resolve(row, scale, seed, extra)
            job_hashes = jobs.run_job_hashes(cfg)
            planned.append(PlannedRun(spec.id, row, scale, seed, cfg, run_hash(cfg, job_hashes)))
    return planned


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["data.data_root=/data", "train.kimg=100"]`` -> dotted overrides with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.data_root=/data")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out[key.strip()] = value
    return out


def run_hash(cfg: RunConfig, job_hashes: dict[str, str]) -> str:
    """The config hash, extended by the hashes of the jobs this config names explicitly."""
    named = dict(sorted(job_hashes.items()))
    if not named:
        return cfg.hash()
    blob = json.dumps({"config": cfg.hash(), "jobs": named}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


__all__ = [
    "SCALES",
    "MetricSpec",
    "PlannedRun",
    "RowSpec",
    "ScaleSpec",
    "Spec",
    "SpecError",
    "find",
    "known_metrics",
    "load",
    "parse",
    "parse_assignments",
    "plan",
    "run_hash",
    "spec_files",
]
