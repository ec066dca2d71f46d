"""Every table and figure spec beyond Table 5 at smoke scale, through the CLI, in one workspace:
pre-training jobs built once and shared across tables, zero-shot, fine-tuning and
semi-supervised rows trained and recorded in MLflow, and the report of each."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The order matters: Table 2 builds the CC3M model, Table 4 and Figure 1 reuse it.
SPECS = ("table2", "table4", "figure7", "figure1", "table3")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAFITE_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "lafite.cli", *args], env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def tables(tmp_path_factory, tiny_models):
    home = tmp_path_factory.mktemp("tables") / "ws"
    shutil.copytree(tiny_models, home / "models")
    results = {spec: _cli(home, "run", spec, "--scale", "smoke", "--quiet") for spec in SPECS}
    return home, results


def _children(home: Path, spec_id: str):
    from mlflow.tracking import MlflowClient

    from lafite.tracking import Tracker
    from lafite.workspace import Workspace

    client = MlflowClient(Tracker(Workspace.resolve(home)).uri)
    experiment = client.get_experiment_by_name(spec_id)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("lafite.role") == "child"]


@pytest.mark.parametrize("spec_id", SPECS)
def test_every_trainable_row_finishes_and_is_recorded(tables, spec_id):
    from lafite.spec import find

    home, results = tables
    assert results[spec_id].returncode == 0, results[spec_id].stderr[-3000:]
    spec = find(spec_id)
    children = _children(home, spec_id)
    assert sorted(r.data.tags["lafite.row"] for r in children) == sorted(
        r.name for r in spec.trainable_rows)
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags["lafite.row"]
        assert {"IS", "FID-0"} <= set(run.data.metrics), run.data.tags["lafite.row"]
        assert Path(run.data.tags["lafite.final_checkpoint"]).is_file()
        assert run.data.params["mode"] == spec.resolve(
            spec.row(run.data.tags["lafite.row"]), "smoke").mode


def test_supervised_faces_are_scored_on_the_attributes_their_captions_name(tables):
    home, _ = tables
    (faces,) = [r for r in _children(home, "table3")
                if r.data.tags["lafite.row"] == "LAFITE (MM-CelebA-HQ)"]
    face_metrics = {"face-hair-accuracy", "face-eyes-accuracy", "face-expression-accuracy",
                    "face-accessory-accuracy", "caption-accuracy"}
    assert face_metrics <= set(faces.data.metrics)
    assert all(0.0 <= faces.data.metrics[m] <= 1.0 for m in face_metrics)
    (scenes,) = [r for r in _children(home, "table3")
                 if r.data.tags["lafite.row"] == "LAFITE (MS-COCO)"]
    assert "face-hair-accuracy" not in scenes.data.metrics


def test_pretraining_jobs_are_built_once_and_shared(tables):
    home, results = tables
    jobs = sorted(p.name.rsplit("-", 1)[0] for p in (home / "models" / "jobs").iterdir())
    assert jobs.count("pretrain-cc3m") == 1
    assert jobs.count("pretrain-ffhq") == 1 and jobs.count("pretrain-coco-language-free") == 1
    # Every run that used the CC3M model names the same build (hash and artifact).
    used = {r.data.tags["lafite.job.pretrain-cc3m"] for spec_id in ("table2", "table4", "figure1")
            for r in _children(home, spec_id) if "lafite.job.pretrain-cc3m" in r.data.tags}
    assert len(used) == 1
    # Table 4's fine-tuned rows record the job they started from.
    tuned = [r for r in _children(home, "table4") if r.data.tags["lafite.row"].startswith("fine")]
    assert tuned and all(r.data.params["train.init_job"].startswith("pretrain-") for r in tuned)


def test_zero_shot_trains_nothing_and_figure1_reuses_table2s_run(tables):
    import torch

    home, _ = tables
    (table2,) = _children(home, "table2")
    (figure1,) = _children(home, "figure1")
    assert table2.data.tags["lafite.config_hash"] == figure1.data.tags["lafite.config_hash"]
    saved = torch.load(table2.data.tags["lafite.final_checkpoint"], weights_only=True,
                       map_location="cpu")
    assert (saved["step"], saved["finished"]) == (0, True)
    job_hash, artifact = table2.data.tags["lafite.job.pretrain-cc3m"].split(" ", 1)
    assert saved["pretrained_from"] == artifact
    assert not any(k.startswith("G/") for k in table2.data.metrics)  # no training step logged


def test_reports_show_reference_rows_groups_and_curves(tables):
    home, results = tables
    out = home / "report"
    made = _cli(home, "report", *SPECS, "--scale", "smoke", "--out", str(out))
    assert made.returncode == 0, made.stderr[-3000:]
    page = html.unescape((out / "table3.html").read_text())
    assert "XMC-GAN (MS-COCO)" in page and "9.33" in page and "paper only" in page
    assert "MM-CelebA-HQ" in page
    figure7 = (out / "figure7.html").read_text()
    assert figure7.count("data:image/png;base64") >= 1
    listing = _cli(home, "list")
    assert listing.returncode == 0
    for spec_id in SPECS:
        line = next(text for text in listing.stdout.splitlines()
                    if text.strip("│ ").startswith(spec_id))
        finished_smoke = re.findall(r"(\d+)/(\d+)", line)[0]
        assert finished_smoke[0] == finished_smoke[1], line
