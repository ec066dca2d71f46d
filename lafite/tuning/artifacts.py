"""The summary artifacts of a study: best trials, importances, plots, the trials table."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lafite.tuning.definitions import COUNTED, StudyDefinition
from lafite.tuning.reading import _trial_entry, best_trials, row_entry

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
