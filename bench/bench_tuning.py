"""Pruning pays: the same `xi` study with and without its pruner, side by side.

Runs the shipped ``xi`` study (median pruner fed by the periodic evaluations) and a copy with
``pruner: {name: none}``, each for ``--trials`` trials at ``--scale`` in its own Optuna storage
and MLflow store inside one workspace (so the world's CLIP, inspector and feature caches are
built once). Prints both training budgets (the sum over trials of the iterations trained), both
best xi with their FID, and the two checks of issue 6:

- the pruned study spends at most 60% of the unpruned study's iterations;
- its best FID is within the unpruned study's top 3.

Usage (minutes per trial at mini scale on a laptop CPU; hours in all)::

    python bench/bench_tuning.py --home ./lafite-workspace --trials 12 --scale mini
    python bench/bench_tuning.py --kimg 12 --eval-kimg 2      # a shorter schedule per trial
    python bench/bench_tuning.py --replay     # pruner candidates on the finished unpruned curves
    # the two arms side by side, one thread each, then the comparison (both studies complete):
    python bench/bench_tuning.py --only pruned --threads 1 & \
    python bench/bench_tuning.py --only unpruned --threads 1; wait; python bench/bench_tuning.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import optuna
import torch
import yaml

from lafite import tuning
from lafite.workspace import Workspace


def study_file(folder: Path, pruner: dict, scale: str, kimg: float | None,
               eval_kimg: float | None, seed: int) -> Path:
    """A copy of the shipped xi study with the given pruner and schedule, as ``folder/xi.yaml``."""
    shipped = tuning.study_files()["xi"]
    body = yaml.safe_load(shipped.read_text())
    body["pruner"] = pruner
    body["sampler"] = {**body.get("sampler", {}), "seed": seed}
    overrides = dict(body.get("scales", {}).get(scale, {}))
    if kimg is not None:
        overrides["train.kimg"] = kimg
        overrides["train.checkpoint_kimg"] = kimg / 4
    if eval_kimg is not None:
        overrides["train.eval_kimg"] = eval_kimg
    body.setdefault("scales", {})[scale] = overrides
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "xi.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def replay(folder: Path, scale: str, orders: int = 20) -> None:
    """Replay a finished unpruned study's evaluation curves through candidate pruners.

    Each completed trial's curve is fed, trial by trial, to a fresh in-memory study with the
    pruner the suite builds for the study file in ``folder`` (``StudyDefinition.make_pruner``)
    with the candidate's ``pruner`` section; a trial stops where the pruner says so. Prints each
    pruner's share of the evaluations (the budget) and whether its best final value is within
    the unpruned top 3, in the study's own trial order and over shuffled orders. It ignores the
    sampler's reaction to pruned trials, so it estimates a pruner's behaviour on these curves;
    the real pruned study is the check.
    """
    import dataclasses
    import random

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    definition = tuning.load_study_file(folder / "xi.yaml")
    base = definition.base_config(scale)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    source = optuna.load_study(study_name=definition.study_name(scale), storage=storage)
    curves = [dict(sorted(t.intermediate_values.items())) for t in source.trials
              if t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values]
    if len(curves) < 3:
        raise SystemExit(f"{storage}: {len(curves)} complete trials with curves; need 3 or more")
    steps = sorted(curves[0])
    top3 = sorted(c[steps[-1]] for c in curves)[:3]
    candidates = {f"median, startup {k}": {"name": "median", "startup_trials": k}
                  for k in (1, 2, 3, 4)}
    candidates.update({f"hyperband, reduction {r}": {"name": "hyperband", "reduction_factor": r}
                       for r in (2, 3, 4)})

    def run(pruner: dict, order: list[int]) -> tuple[float, bool]:
        candidate = dataclasses.replace(definition, pruner=pruner)
        # A fixed name: Hyperband assigns brackets by hashing the study name and trial number.
        study = optuna.create_study(study_name="replay", pruner=candidate.make_pruner(base))
        spent = 0
        for index in order:
            trial = study.ask()
            value = None
            for step, value in curves[index].items():
                spent += 1
                trial.report(value, step)
                if step < steps[-1] and trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, value)
        finals = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        return spent / (len(steps) * len(order)), min(finals) <= top3[-1]

    print(f"{len(curves)} complete trials, {len(steps)} evaluations each; unpruned top 3: "
          f"{', '.join(f'{v:.4g}' for v in top3)}")
    shuffles = [random.Random(k).sample(range(len(curves)), len(curves)) for k in range(orders)]
    for name, pruner in candidates.items():
        budget, within = run(pruner, list(range(len(curves))))
        shuffled = [run(pruner, order) for order in shuffles]
        mean = sum(b for b, _ in shuffled) / len(shuffled)
        print(f"{name:24s} study order: budget {budget:.2f}, best {'in' if within else 'NOT in'} "
              f"top 3 | {orders} shuffled orders: budget mean {mean:.2f}, max "
              f"{max(b for b, _ in shuffled):.2f}, best in top 3 {sum(w for _, w in shuffled)}/"
              f"{orders}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="workspace (default $LAFITE_HOME)")
    parser.add_argument("--scale", default="mini", choices=["smoke", "mini"])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--kimg", type=float, default=None, help="override train.kimg")
    parser.add_argument("--eval-kimg", type=float, default=None, help="override train.eval_kimg")
    parser.add_argument("--pruner", default=None, choices=["median", "hyperband"],
                        help="pruner of the pruned arm (default: the shipped study's own)")
    parser.add_argument("--startup-trials", type=int, default=2,
                        help="median pruner: trials that are never pruned")
    parser.add_argument("--reduction-factor", type=int, default=3, help="hyperband")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["pruned", "unpruned"], default=None,
                        help="run one arm (two processes, one per arm, share the CPU); a later "
                             "run without --only finds both studies complete and compares them")
    parser.add_argument("--replay", action="store_true",
                        help="no training: replay the finished unpruned study's curves through "
                             "candidate pruners and print their budgets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workspace = Workspace.resolve(args.home)
    bench_dir = workspace.root / "bench-tuning"
    if args.replay:
        replay(bench_dir / "unpruned", args.scale)
        return
    if args.pruner is None:
        pruned_cfg = yaml.safe_load(tuning.study_files()["xi"].read_text())["pruner"]
    elif args.pruner == "median":
        pruned_cfg = {"name": "median", "startup_trials": args.startup_trials}
    else:
        pruned_cfg = {"name": "hyperband", "reduction_factor": args.reduction_factor}
    pruned_label = "pruned-" + "-".join(str(v) for v in pruned_cfg.values())
    results = {}
    # The unpruned study lives in its own folder whatever the pruner compared: running the bench
    # again with the other pruner continues it (it is complete) instead of training it again.
    for label, pruner in (("pruned", pruned_cfg), ("unpruned", {"name": "none"})):
        if args.only and label != args.only:
            continue
        folder = bench_dir / (pruned_label if label == "pruned" else label)
        path = study_file(folder, pruner, args.scale, args.kimg, args.eval_kimg, args.seed)
        storage = f"sqlite:///{folder / 'optuna.db'}"
        started = time.perf_counter()
        summary = tuning.run_study(
            str(path), workspace, scale=args.scale, trials=args.trials, storage=storage,
            tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", quiet=True,
        )
        seconds = time.perf_counter() - started
        study = optuna.load_study(study_name=f"xi-{args.scale}", storage=storage)
        complete = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                          key=lambda t: t.value)
        results[label] = (summary, complete, seconds)
        pruned = summary.counts.get("PRUNED", 0)
        best = complete[0]
        print(f"{label:9s} budget {summary.budget_steps:7d} iterations  trials "
              f"{summary.finished} ({pruned} pruned)  best xi {best.params['perturb.xi']:.4g}  "
              f"FID-0 {best.value:.4g}  wall {seconds:.0f} s", flush=True)

    if args.only:
        return
    (p_summary, p_complete, _), (u_summary, u_complete, _) = results["pruned"], results["unpruned"]
    ratio = p_summary.budget_steps / max(1, u_summary.budget_steps)
    top3 = [t.value for t in u_complete[:3]]
    within = p_complete[0].value <= top3[-1]
    print(f"budget ratio pruned/unpruned: {ratio:.2f} (target <= 0.60: "
          f"{'met' if ratio <= 0.60 else 'NOT met'})")
    print(f"pruned best FID-0 {p_complete[0].value:.4g} vs unpruned top 3 "
          f"{', '.join(f'{v:.4g}' for v in top3)}: {'within' if within else 'NOT within'}")


if __name__ == "__main__":
    main()
