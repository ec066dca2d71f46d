"""What the report reads: finished runs of a spec from the tracking store, as pandas.

Everything goes through :class:`lafite.tracking.Tracker` (the one module that imports mlflow):
child runs with their tags (``runs_frame``), metric histories against kimg for the training
curves (``metric_histories``), and the MLflow UI address of a run when the store is an http(s)
tracking server.

Sample grids are read from the run folder on disk (``lafite.run_dir`` tag, else
``<workspace>/runs/<config hash>``), else from the local MLflow artifact folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lafite.spec import Spec, plan
from lafite.tracking import FINISHED, Tracker
from lafite.workspace import Workspace

# Training-loss keys drawn as curves beside the evaluation metrics (train.py logs
# "<phase>/<term>"; these are the terms Eq. 9 adds up).
CURVE_LOSSES = ("G/total", "D/total", "G/con_g", "D/con_d")
# Histories are fetched for at most this many seeds per row: curves show the mean of these.
CURVE_SEEDS = 3


@dataclass
class SampleGrid:
    """The newest sample grid of a run, with the captions it was conditioned on."""

    path: Path
    kimg: float | None
    captions: list[str]


@dataclass
class SpecRuns:
    """All the report needs about one spec's runs (every scale, or the scale asked for)."""

    spec: Spec
    frame: pd.DataFrame  # finished child runs, with tags.* columns
    unfinished: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # scale -> row -> status -> n
    experiment_id: str | None = None

    def scales_with_runs(self) -> list[str]:
        if not len(self.frame):
            return []
        present = set(self.frame["scale"].astype(str))
        order = ["paper", "mini", "smoke"]
        return [s for s in order if s in present] + sorted(present - set(order))


# How runs made with another configuration than the spec's (an older spec, or ``run --set``)
# are counted beside a row: they are not averaged into it.
OTHER_CONFIGURATION = "with another configuration (not shown)"


def load_spec_runs(tracker: Tracker, spec: Spec, scale: str | None = None) -> SpecRuns:
    """Finished runs of ``spec`` (at ``scale``, or every scale) made with the spec's current
    configuration of their row and seed, with their tags, plus counts of the other runs (not
    finished, or made with another configuration), from one search of the store."""
    frame = tracker.runs_frame(spec.id, scale, status=None)
    unfinished: dict[str, dict[str, dict[str, int]]] = {}

    def count(run: Any, status: str) -> None:
        per_row = unfinished.setdefault(run["scale"], {}).setdefault(run["row"], {})
        per_row[status] = per_row.get(status, 0) + 1

    if len(frame):
        current = frame["config_hash"] == _current_hashes(spec, frame)
        for _, run in frame[~current].iterrows():
            count(run, OTHER_CONFIGURATION)
        frame = frame[current]
        finished = frame[frame["status"] == FINISHED]
        done = set(zip(finished["scale"], finished["row"]))
        for _, run in frame[frame["status"] != FINISHED].iterrows():
            # A row being re-run while a finished run exists is not news; anything else is.
            if (run["scale"], run["row"]) in done and run["status"] == "RUNNING":
                continue
            count(run, str(run["status"]).lower())
        frame = finished.reset_index(drop=True)
    return SpecRuns(spec, frame, unfinished, tracker.experiment_id(spec.id, create=False))


def _current_hashes(spec: Spec, frame: pd.DataFrame) -> pd.Series:
    """The hash the spec gives each run's (scale, row, seed) now ("" where it has none)."""
    wanted: dict[tuple[str, str, int], str] = {}
    for scale, runs in frame.groupby("scale"):
        if scale not in spec.scales:
            continue
        rows = sorted(set(runs["row"]) & {r.name for r in spec.trainable_rows})
        if rows:
            seeds = int(runs["seed"].max()) + 1
            for planned in plan(spec, str(scale), seeds=seeds, rows=rows):
                wanted[(str(scale), planned.row.name, planned.seed)] = planned.hash
    keys = zip(frame["scale"].astype(str), frame["row"].astype(str), frame["seed"].astype(int))
    return pd.Series([wanted.get(key, "") for key in keys], index=frame.index)


def metric_histories(tracker: Tracker, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
    """Long frame ``run_id, key, kimg, value`` (steps are images seen: kimg = step / 1000)."""
    return tracker.metric_histories(run_ids, keys)


def run_url(tracker: Tracker, experiment_id: str | None, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when the store is a tracking server."""
    if experiment_id is None or not tracker.uri.startswith(("http://", "https://")):
        return None
    return f"{tracker.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def sample_grid(workspace: Workspace, run: pd.Series, spec_id: str) -> SampleGrid | None:
    """The newest ``fakes_<kimg>kimg.png`` of a run and its captions, if any is on this machine."""
    folders = []
    run_dir = run.get("tags.lafite.run_dir")
    if isinstance(run_dir, str) and run_dir:
        folders.append(Path(run_dir) / "samples")
    config_hash = run.get("config_hash")
    if isinstance(config_hash, str) and config_hash:
        folders.append(workspace.root / "runs" / config_hash / "samples")
    run_id = str(run.get("run_id", ""))
    folders.append(workspace.root / "mlartifacts" / spec_id / run_id / "artifacts" / "samples")
    for folder in folders:
        if not folder.is_dir():
            continue
        grids = sorted(folder.glob("fakes_*kimg.png"))
        if not grids:
            continue
        newest = grids[-1]
        kimg = None
        try:
            kimg = float(newest.stem.removeprefix("fakes_").removesuffix("kimg"))
        except ValueError:
            pass
        captions: list[str] = []
        captions_file = folder / "captions.txt"
        if captions_file.is_file():
            captions = [line for line in captions_file.read_text(errors="replace").splitlines() if line]
        return SampleGrid(newest, kimg, captions)
    return None
