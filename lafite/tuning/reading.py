"""Reading a stored study: best trials, ``show --study``, and spec rows of trials."""

from __future__ import annotations

from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lafite.errors import UserError
from lafite.tuning.definitions import ATTR_MLFLOW, ATTR_STEPS, StudyDefinition, find_study
from lafite.tuning.storage import default_storage, open_storage, storage_label
from lafite.workspace import Workspace

# -- reading a study ---------------------------------------------------------------------------


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
