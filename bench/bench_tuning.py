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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="workspace (default $LAFITE_HOME)")
    parser.add_argument("--scale", default="mini", choices=["smoke", "mini"])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--kimg", type=float, default=None, help="override train.kimg")
    parser.add_argument("--eval-kimg", type=float, default=None, help="override train.eval_kimg")
    parser.add_argument("--pruner", default="hyperband", choices=["median", "hyperband"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workspace = Workspace.resolve(args.home)
    bench_dir = workspace.root / "bench-tuning"
    pruned_cfg = {"name": args.pruner, "startup_trials": 3} if args.pruner == "median" else {
        "name": "hyperband", "reduction_factor": 3}
    results = {}
    # The unpruned study lives in its own folder whatever the pruner compared: running the bench
    # again with the other pruner continues it (it is complete) instead of training it again.
    for label, pruner in (("pruned", pruned_cfg), ("unpruned", {"name": "none"})):
        folder = bench_dir / (f"pruned-{args.pruner}" if label == "pruned" else label)
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
