"""``lafite-repro report``: paper versus reproduced, one page per table or figure.

Reads finished runs through :mod:`lafite.tracking`, the paper's numbers from the specs (the only
place they live), and writes ``<out>/<spec>.html`` per spec plus ``<out>/index.html`` (or the
same as Markdown). Pages are self-contained: CSS inline, figures as PNG data URIs, no scripts,
so they open offline and can be mailed or attached to a paper's supplement as they are.

Templates are rendered by jinja2 with autoescaping on for every template: captions, row names
and notes come from files a user (or a generator) wrote and are shown as text, never as markup.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import jinja2
import pandas as pd

from lafite import spec as spec_mod
from lafite.errors import UserError
from lafite.metrics import CLIP_SCORED, DIAGNOSTIC_LABEL
from lafite.report import figures, tables
from lafite.report.data import (
    CURVE_LOSSES,
    CURVE_SEEDS,
    SpecRuns,
    load_spec_runs,
    metric_histories,
    run_url,
    sample_grid,
)
from lafite.spec import Spec
from lafite.workspace import Workspace

TEMPLATES = Path(__file__).resolve().parent / "templates"
FORMATS = ("html", "markdown")


@dataclass
class Study:
    """One tuning study to show: its trials in Optuna's ``trials_dataframe()`` layout."""

    name: str
    trials: pd.DataFrame
    objective: str = "objective"
    direction: str = "maximize"
    spec_id: str | None = None


@dataclass
class _ScaleSection:
    table: tables.TableResult
    urls: dict[str, str] = field(default_factory=dict)  # run id -> MLflow UI address
    curves: str | None = None
    x_figure: str | None = None
    size_figure: str | None = None  # Figure 1's left panel
    grids: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # reproducibility rows
    versions: list[tuple[str, str]] = field(default_factory=list)
    commits: list[tuple[str, int]] = field(default_factory=list)
    hardware: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_report(
    workspace: Workspace,
    scale: str | None = None,
    out_dir: Path | str = Path("reports"),
    fmt: Literal["html", "markdown"] = "html",
    tracking_uri: str | None = None,
    specs: Sequence[str | Spec] | None = None,
    studies: Sequence[Study] | None = None,
) -> list[Path]:
    """Write the report and return the paths written (the index first).

    ``scale`` shows only that scale (rows without a run there say "not run" and give the
    command); by default every scale that has finished runs is shown, and a spec without any
    run shows its paper numbers with the commands for the mini scale. ``specs`` (ids, files or
    :class:`Spec` objects) defaults to every spec found; ``studies`` defaults to the studies
    that :mod:`lafite.tuning` lists, when it offers them.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if scale is not None and scale not in spec_mod.SCALES:
        raise UserError(f"--scale {scale!r}: choose one of {', '.join(spec_mod.SCALES)}")
    chosen = _specs(specs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror}); choose another") from None

    tracker = _tracker(workspace, tracking_uri)
    all_studies = list(studies) if studies is not None else _discover_studies(workspace, scale)
    pages = []
    for spec in chosen:
        runs = (load_spec_runs(tracker, spec, scale) if tracker is not None
                else SpecRuns(spec, pd.DataFrame(columns=["run_id", "row", "seed", "scale"])))
        shown = [scale] if scale else (runs.scales_with_runs() or [_default_scale(spec)])
        shown = [s for s in shown if s in spec.scales] or shown
        sections = []
        for s in shown:
            table = tables.summarise(spec, runs.frame, s, runs.unfinished.get(s, {}))
            section = _ScaleSection(table)
            if fmt == "html":
                _fill_section(section, runs, tracker, workspace)
            sections.append(section)
        spec_studies = [st for st in all_studies if st.spec_id in (None, spec.id)]
        pages.append((spec, sections, [st for st in spec_studies if st.spec_id == spec.id]))
    unassigned = [st for st in all_studies if st.spec_id is None]

    context = _site_context(workspace, tracker)
    written: list[Path] = []
    if fmt == "markdown":
        index = out / "index.md"
        written.append(index)
        lines = ["# LAFITE reproduction report", "", context["generated_line"], ""]
        for spec, sections, _ in pages:
            path = out / f"{spec.id}.md"
            path.write_text(_markdown_page(spec, sections))
            written.append(path)
            lines.append(f"- [{_heading(spec)}]({spec.id}.md): "
                         + "; ".join(_section_summary(s.table) for s in sections))
        index.write_text("\n".join(lines) + "\n")
        return written

    env = _environment()
    index_path = out / "index.html"
    written.append(index_path)
    for spec, sections, spec_studies in pages:
        study_views = [_study_view(st) for st in spec_studies]
        html = env.get_template("spec.html").render(
            spec=spec, heading=_heading(spec), sections=sections, studies=study_views,
            world_scales=tables.WORLD_SCALES, diagnostic_label=DIAGNOSTIC_LABEL,
            fmt=tables.fmt, fmt_signed=tables.fmt_signed, fmt_reproduced=tables.fmt_reproduced,
            metric_heading=tables.metric_heading, metric_caveat=tables.metric_caveat,
            caveat_label=tables.caveat_label, by_dataset=tables.by_dataset, **context,
        )
        path = out / f"{spec.id}.html"
        path.write_text(html)
        written.append(path)
    index_html = env.get_template("index.html").render(
        pages=[{"spec": spec, "heading": _heading(spec), "file": f"{spec.id}.html",
                "sections": sections} for spec, sections, _ in pages],
        studies=[_study_view(st) for st in unassigned], summary=_section_summary, **context,
    )
    index_path.write_text(index_html)
    return written


# -- pieces ------------------------------------------------------------------------------------


def _specs(specs: Sequence[str | Spec] | None) -> list[Spec]:
    if specs is None:
        ids: Iterable[str | Spec] = spec_mod.spec_files().keys()
    else:
        ids = specs
    chosen = [s if isinstance(s, Spec) else spec_mod.find(s) for s in ids]
    if not chosen:
        raise UserError("no experiment specs found: run from the repository (experiments/*.yaml) "
                        "or name spec files")
    return chosen


def _tracker(workspace: Workspace, tracking_uri: str | None) -> Any:
    """The tracker, or None when the default local store does not exist (nothing has run):
    opening it would create an empty database just to read nothing from it."""
    from lafite.tracking import Tracker, default_uri

    uri = default_uri(workspace, tracking_uri)
    if uri == f"sqlite:///{workspace.root / 'mlflow.db'}" and not (workspace.root / "mlflow.db").exists():
        return None
    tracker = Tracker(workspace, tracking_uri)
    tracker.check()
    return tracker


def _default_scale(spec: Spec) -> str:
    return "mini" if "mini" in spec.scales else next(iter(spec.scales))


def _heading(spec: Spec) -> str:
    kind = spec.kind
    number = spec.paper.get(kind)
    return f"{kind.capitalize()} {number}" if number is not None else spec.id


def _section_summary(table: tables.TableResult) -> str:
    text = f"{table.scale}: {table.rows_run}/{table.trainable} rows run"
    if table.agreements:
        n = len(table.agreements)
        holding = sum(1 for a in table.agreements if a.holds)
        same_best = sum(1 for a in table.agreements if a.best_agrees)
        text += (f"; paper's ordering holds for {holding} of {n} metrics, "
                 f"same best row for {same_best} of {n}")
    return text


def _fill_section(section: _ScaleSection, runs: SpecRuns, tracker: Any, workspace: Workspace) -> None:
    """Figures, links and provenance of one (spec, scale)."""
    table = section.table
    spec = table.spec
    frame = runs.frame
    scale_runs = frame[frame["scale"] == table.scale] if len(frame) else frame
    if tracker is not None:
        for run_id in scale_runs.get("run_id", []):
            url = run_url(tracker, runs.experiment_id, str(run_id))
            if url:
                section.urls[str(run_id)] = url

    if table.world:
        section.notes.append(
            f"Measured at {table.scale} scale on the built-in world: IS, FID and SOA here are "
            "analogues scored by the world's inspector (not Inception, not the SOA detector), on "
            "small synthetic images. Compare how the rows order, not the values with the paper's."
        )
    if any(c.diagnostic for c in table.columns):
        section.notes.append(
            f"Columns marked {DIAGNOSTIC_LABEL} are scored by the CLIP the generator was trained "
            "against: they show that the training signal was learned, not that images are good."
        )
    elif any(c.name in CLIP_SCORED and c.has_ours for c in table.columns) and table.world:
        section.notes.append("CLIP-scored columns use a CLIP other than the training one.")

    if table.has_x:
        our_x = _measured_model_sizes(table) if _x_is_model_size(spec) else None
        if our_x is not None:
            section.size_figure = figures.model_size_figure(
                table, _measured_model_sizes(table, with_runs_only=False))
        section.x_figure = figures.x_axis_figure(table, our_x)

    if len(scale_runs) and tracker is not None:
        picked = (scale_runs.sort_values("seed").groupby("row", sort=False).head(CURVE_SEEDS))
        keys = []
        panels = []
        evaluated_once = _evaluated_only_at_end(scale_runs)
        for col in ([] if evaluated_once else table.columns):
            for key in tables.tracking_names(col.name):
                if f"metrics.{key}" in scale_runs.columns:
                    keys.append(key)
                    title = col.label + (" (fraction)" if col.percent else "")
                    if key != col.name:
                        title += f" ({DIAGNOSTIC_LABEL})"
                    elif table.world:
                        title += " (world analogue)"
                    panels.append((key, title))
        for key in CURVE_LOSSES:
            if f"metrics.{key}" in scale_runs.columns:
                keys.append(key)
                panels.append((key, f"training loss {key}"))
        histories = metric_histories(tracker, picked["run_id"].astype(str), keys)
        row_of_run = dict(zip(scale_runs["run_id"].astype(str), scale_runs["row"].astype(str)))
        section.curves = figures.training_curves(
            histories, row_of_run, [r.name for r in table.rows], panels)

    for r in table.rows:
        if not r.run_ids:
            continue
        seed, run_id = r.run_ids[0]
        run = scale_runs[scale_runs["run_id"] == run_id].iloc[0]
        grid = sample_grid(workspace, run, spec.id)
        if grid is None:
            continue
        section.grids.append({
            "row": r.name, "seed": seed, "kimg": grid.kimg, "captions": grid.captions,
            "src": figures.file_data_uri(grid.path), "run_id": run_id,
        })

    _provenance(section, scale_runs)


def _evaluated_only_at_end(runs: pd.DataFrame) -> bool:
    """True when every run's periodic evaluation interval is at least its length: evaluation
    metrics then have one point each and fetching their histories (one query per run and
    metric) would draw no curve."""
    try:
        every = pd.to_numeric(runs["params.train.eval_kimg"])
        length = pd.to_numeric(runs["params.train.kimg"])
    except (KeyError, ValueError, TypeError):
        return False
    return bool((every >= length).all())


def _x_is_model_size(spec: Spec) -> bool:
    text = f"{spec.x_axis.get('label', '')} {spec.x_axis.get('unit', '')}".lower()
    return "param" in text or "model size" in text


_UNIT_DIVISORS = {"": 1.0, "m": 1e6, "million": 1e6, "millions": 1e6, "b": 1e9, "billion": 1e9,
                  "billions": 1e9, "k": 1e3, "thousand": 1e3}


def _measured_model_sizes(table: tables.TableResult, with_runs_only: bool = True
                          ) -> dict[str, float]:
    """Trainable parameters (G + D; CLIP is frozen) of each run row, in the x axis's unit.

    Counted on the networks as this suite builds them at paper scale (PyTorch's meta device: no
    memory, no weights), whatever scale the table ran at: Figure 1 compares the sizes of models
    at their real size, and the reproduced point sits at our count, not at the paper's number.
    """
    unit = str(table.spec.x_axis.get("unit", "")).lower().split(" ")[0]
    divisor = _UNIT_DIVISORS.get(unit.rstrip("s") if unit not in _UNIT_DIVISORS else unit, 1.0)
    scale = "paper" if "paper" in table.spec.scales else table.scale
    sizes = {}
    for r in table.rows:
        if r.row.reference or (with_runs_only and not r.run_ids):
            continue
        count = trainable_parameters(table.spec, r.row, scale)
        if count is not None:
            sizes[r.name] = count / divisor
    return sizes


def trainable_parameters(spec: Spec, row: spec_mod.RowSpec, scale: str) -> int | None:
    """G + D parameters of ``row`` resolved at ``scale`` (None when the size cannot be derived,
    e.g. a CLIP whose feature dimension is unknown)."""
    try:
        import json

        import torch

        from lafite.model import Discriminator, Generator, count_parameters

        cfg = spec.resolve(row, scale, 0)
        cond = cfg.model.cond_features
        if not cond:
            if cfg.clip.name == "world":
                config = Path(__file__).resolve().parent.parent / "clip_configs" / \
                    f"world-clip-{cfg.data.resolution}.json"
                cond = int(json.loads(config.read_text())["embed_dim"])
            elif cfg.clip.name in ("ViT-B-32", "ViT-B-16"):
                cond = 512
            else:
                return None
        with torch.device("meta"):
            generator = Generator(cfg.model, cfg.data.resolution, cond)
            discriminator = Discriminator(cfg.model, cfg.data.resolution, cond)
        return count_parameters(generator) + count_parameters(discriminator)
    except Exception:  # a size we cannot derive leaves the point at the spec's x
        return None


_HARDWARE_TAGS = ("lafite.hardware", "lafite.device", "lafite.gpu", "lafite.cpu", "lafite.host")


def _provenance(section: _ScaleSection, runs: pd.DataFrame) -> None:
    if not len(runs):
        return
    versions: dict[str, set[str]] = {}
    for column in runs.columns:
        if column.startswith("tags.lafite.version.") or column == "tags.lafite.python":
            name = column.removeprefix("tags.lafite.version.").removeprefix("tags.lafite.")
            versions[name] = set(runs[column].dropna().astype(str))
    section.versions = [(k, ", ".join(sorted(v))) for k, v in sorted(versions.items()) if v]
    if "tags.lafite.git_commit" in runs.columns:
        counts = runs["tags.lafite.git_commit"].fillna("unknown").astype(str).value_counts()
        section.commits = list(counts.items())
    hardware = pd.Series(["" for _ in range(len(runs))], index=runs.index)
    for tag in _HARDWARE_TAGS:
        column = f"tags.{tag}"
        if column in runs.columns:
            hardware = hardware.str.cat(runs[column].fillna("").astype(str), sep=" ").str.strip()
    if (hardware == "").all() and "params.train.device" in runs.columns:
        hardware = "device " + runs["params.train.device"].fillna("?").astype(str)
    section.hardware = list(hardware.replace("", "not recorded").value_counts().items())
    for _, run in runs.sort_values(["row", "seed"]).iterrows():
        section.runs.append({
            "row": run.get("row"), "seed": run.get("seed"), "run_id": run.get("run_id"),
            "config_hash": run.get("config_hash"),
            "commit": str(run.get("tags.lafite.git_commit", "") or "")[:12],
            "kimg": run.get("params.train.kimg", ""),
            "finished": _time(run.get("end_time")),
        })


def _time(ms: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(ms) / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _study_view(study: Study) -> dict[str, Any]:
    figs = figures.tuning_figures(study.trials, study.objective, study.direction)
    trials = study.trials
    values = pd.to_numeric(trials.get("value", pd.Series(dtype=float)), errors="coerce").dropna()
    best = None
    if len(values):
        best_index = values.idxmax() if study.direction.startswith("max") else values.idxmin()
        best = {"value": float(values[best_index]),
                "params": {c.removeprefix("params_"): trials.loc[best_index, c]
                           for c in trials.columns if c.startswith("params_")}}
    return {"name": study.name, "objective": study.objective, "direction": study.direction,
            "n_trials": len(trials), "n_complete": len(values), "figures": figs, "best": best}


def _discover_studies(workspace: Workspace, scale: str | None) -> list[Study]:
    """Studies that ``lafite-repro tune`` summarised: ``<workspace>/tuning/<id>-<scale>/`` holds
    ``trials.csv`` (Optuna's ``trials_dataframe()``) and ``best.yaml`` (objectives, directions).
    Read from those files so that building a report never imports optuna; the study's spec comes
    from its definition ``experiments/studies/<id>.yaml`` (key ``spec``)."""
    import yaml

    root = workspace.root / "tuning"
    if not root.is_dir():
        return []
    definitions: dict[str, Path] = {}
    for folder in reversed(spec_mod.experiments_dirs()):
        for path in sorted((folder / "studies").glob("*.yaml")):
            definitions[path.stem] = path
    found = []
    for trials_file in sorted(root.glob("*/trials.csv")):
        name = trials_file.parent.name
        study_id, _, study_scale = name.rpartition("-")
        if study_scale not in spec_mod.SCALES or (scale and study_scale != scale):
            continue
        try:
            trials = pd.read_csv(trials_file)
            best = yaml.safe_load((trials_file.parent / "best.yaml").read_text()) \
                if (trials_file.parent / "best.yaml").is_file() else {}
            spec_id = None
            if study_id in definitions:
                spec_id = (yaml.safe_load(definitions[study_id].read_text()) or {}).get("spec")
        except (OSError, ValueError, yaml.YAMLError, pd.errors.ParserError):
            continue  # a summary being rewritten, or not one of ours: leave it out
        objectives = list((best or {}).get("objectives") or ["objective"])
        directions = list((best or {}).get("directions") or ["minimize"])
        if "value" not in trials.columns and "values_0" in trials.columns:
            trials = trials.rename(columns={"values_0": "value"})
        found.append(Study(f"{name} ({study_scale} scale)", trials, str(objectives[0]),
                           str(directions[0]), spec_id))
    return found


def _site_context(workspace: Workspace, tracker: Any) -> dict[str, Any]:
    from lafite.tracking import git_commit

    try:
        version = metadata.version("lafite-repro")
    except metadata.PackageNotFoundError:
        version = "unknown"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    store = tracker.uri if tracker is not None else "(no tracking store yet: nothing has run)"
    return {
        "generated": now,
        "version": version,
        "report_commit": git_commit(),
        "store": store,
        "python": platform.python_version(),
        "generated_line": f"Generated {now} by lafite-repro {version} from {store}.",
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def _markdown_page(spec: Spec, sections: Sequence[_ScaleSection]) -> str:
    parts = [f"# {_heading(spec)}: {spec.title}", ""]
    if spec.notes:
        parts += [spec.notes.strip(), ""]
    for section in sections:
        table = section.table
        where = " (built-in world)" if table.world else ""
        parts += [f"## {table.scale} scale{where}", "",
                  f"{table.rows_run} of {table.trainable} rows run ({table.n_runs} runs). "
                  f"Run the rest with `{table.command}`.", ""]
        parts.append(tables.to_markdown(table))
    return "\n".join(parts)

