"""Studies: definitions, bad input, and real smoke-scale studies on a real SQLite storage.

The trials train for real (a few steps of the smoke configuration) and are scored for real (FID
through the world's inspector). What is shrunk is the world's CLIP and inspector: the real ones
take minutes to train, so a template workspace gets tiny ones, trained for a few steps and put
where ``load_clip``/``load_inspector`` look, once per test module. Worker subprocesses find
them there like any run would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from lafite import tuning
from lafite.errors import UserError
from lafite.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent

# A study over xi whose smoke trials take a few steps: 4 images per step, 4 steps per trial,
# an evaluation every 2 steps (what the pruner sees) and at the end.
FAST_STUDY = {
    "id": "xi",
    "title": "xi, shrunk for tests",
    "spec": "table5",
    "row": "LAFITE_G +L_ConG +L_ConD",
    "set": {"perturb.kind": "gaussian"},
    "search": {"perturb.xi": {"low": 0.1, "high": 10.0, "log": True}},
    "objectives": ["FID-0"],
    "trials": 4,
    "sampler": {"name": "tpe", "seed": 0, "startup_trials": 2},
    "pruner": {"name": "median", "startup_trials": 2},
    "scales": {"smoke": {
        "world.n_train": 64, "world.n_test": 32, "train.batch": 4, "train.kimg": 0.016,
        "train.checkpoint_kimg": 0.008, "train.eval_kimg": 0.008, "train.log_every": 2,
        "eval.n_samples": 64, "eval.batch": 64,
    }},
}


def write_study(folder: Path, **changes) -> Path:
    body = {**FAST_STUDY, **changes}
    path = folder / f"{body['id']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# -- definitions and bad input (no training) -----------------------------------------------------


def test_shipped_studies_load_with_the_papers_ranges():
    studies = tuning.load_studies()
    assert {"xi", "tau", "lambda", "gamma", "all"} <= set(studies)
    xi = studies["xi"].search[0]
    assert (xi.key, xi.low, xi.high, xi.log) == ("perturb.xi", 0.1, 10.0, True)
    assert studies["xi"].base_config("mini").perturb.kind == "gaussian"
    assert {p.key for p in studies["all"].search} == {
        "perturb.xi", "loss.tau", "loss.lambda", "loss.gamma"}
    assert [o.direction for o in studies["all"].objectives] == ["minimize", "maximize"]
    assert studies["gamma"].search[0].key == "loss.gamma"  # L_ConD weight, not the R1 weight
    # Evaluations only compute the objectives, and often enough for the pruner.
    cfg = studies["tau"].base_config("mini")
    assert cfg.eval.metrics == ("FID-0",)
    assert cfg.train.eval_kimg < cfg.train.kimg


def test_unknown_study_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        tuning.find_study("beta")
    message = str(err.value)
    assert "'beta'" in message and "xi" in message and "gamma" in message


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [({"low": 2.0, "high": 0.1}, "inverted range"),
     ({"low": 0.5, "high": 0.5}, "empty range"),
     ({"low": 0.0, "high": 1.0, "log": True}, "log-scale range needs low > 0")],
)
def test_bad_ranges_name_the_file_and_the_field(tmp_path, bounds, expected):
    path = write_study(tmp_path, search={"loss.tau": bounds})
    with pytest.raises(tuning.StudyError) as err:
        tuning.find_study(str(path))
    assert str(path) in str(err.value)
    assert "search.loss.tau" in str(err.value) and expected in str(err.value)


def test_other_bad_definitions(tmp_path):
    bad = {
        "search": {"loss.taux": {"low": 0.1, "high": 1.0}},
        "objectives": ["FID-9000"],
        "pruner": {"name": "median"},
    }
    with pytest.raises(tuning.StudyError, match="not a RunConfig key"):
        tuning.find_study(str(write_study(tmp_path, search=bad["search"])))
    with pytest.raises(tuning.StudyError, match="unknown metric"):
        tuning.find_study(str(write_study(tmp_path, objectives=bad["objectives"])))
    with pytest.raises(tuning.StudyError, match="cannot prune a multi-objective"):
        tuning.find_study(str(write_study(tmp_path, objectives=["FID-0", "IS"])))
    with pytest.raises(UserError, match="no row named"):
        tuning.find_study(str(write_study(tmp_path, row="LAFITE_X")))


def test_unreachable_storage_is_one_clear_error(tmp_path, workspace):
    path = write_study(tmp_path)
    for url in ("postgresql+psycopg2://lafite@127.0.0.1:9/none",
                f"sqlite:///{tmp_path}/no/such/folder/optuna.db",
                str(tmp_path / "no-such-folder" / "journal.log")):
        with pytest.raises(UserError) as err:
            tuning.run_study(str(path), workspace, scale="smoke", storage=url, quiet=True)
        assert "--storage" in str(err.value)
        assert "Traceback" not in str(err.value)


def test_an_existing_study_is_never_damaged(tmp_path, workspace):
    """A stored study meets a changed definition: refused, and its trials are left as they were."""
    storage = tuning.default_storage(workspace)
    study = optuna.create_study(study_name="xi-smoke", storage=storage, direction="minimize")
    study.set_user_attr("objectives", ["FID-0"])
    for xi, fid in ((0.5, 30.0), (2.0, 20.0)):
        study.add_trial(optuna.trial.create_trial(
            params={"perturb.xi": xi}, value=fid,
            distributions={"perturb.xi": optuna.distributions.FloatDistribution(0.1, 10, log=True)}))
    before = [(t.number, t.state, t.values, t.params) for t in study.get_trials()]

    inverted = write_study(tmp_path, search={"perturb.xi": {"low": 10.0, "high": 0.1}})
    with pytest.raises(tuning.StudyError, match="inverted range"):
        tuning.run_study(str(inverted), workspace, scale="smoke", quiet=True)
    other_metric = tmp_path / "other"
    other_metric.mkdir()
    changed = write_study(other_metric, objectives=["KID"])
    with pytest.raises(UserError, match="differ from those of the stored study"):
        tuning.run_study(str(changed), workspace, scale="smoke", quiet=True)
    with pytest.raises(UserError, match="unknown study"):
        tuning.run_study("no-such-study", workspace, scale="smoke", quiet=True)

    after = optuna.load_study(study_name="xi-smoke", storage=storage).get_trials()
    assert [(t.number, t.state, t.values, t.params) for t in after] == before
    # describe_study reads it without writing, and prints the row to paste into the spec.
    text = tuning.describe_study(str(write_study(tmp_path)), workspace, scale="smoke")
    assert "perturb.xi: 2.0" in text
    assert "lafite-repro run table5 --scale smoke --rows" in text


def test_describe_before_any_trial_says_how_to_start(workspace):
    with pytest.raises(UserError, match="lafite-repro tune --study xi --scale mini"):
        tuning.describe_study("xi", workspace, scale="mini")


def test_dry_run_touches_no_storage(tmp_path, workspace, capsys):
    summary = tuning.run_study(str(write_study(tmp_path)), workspace, scale="smoke",
                               dry_run=True, trials=7)
    assert summary.dry_run and summary.target == 7
    assert not workspace.optuna_db.exists()
    assert not workspace.mlflow_db.exists()


def _float(low, high):
    return optuna.distributions.FloatDistribution(low, high, log=True)


def test_summary_artifacts_and_one_requeue_per_failed_trial(tmp_path):
    definition = tuning.find_study(str(write_study(tmp_path)))
    study = optuna.create_study(study_name="xi-smoke", storage=f"sqlite:///{tmp_path}/o.db")
    dist = {"perturb.xi": _float(0.1, 10)}
    for xi, fid in ((0.5, 30.0), (2.0, 20.0), (4.0, 25.0)):
        study.add_trial(optuna.trial.create_trial(params={"perturb.xi": xi}, value=fid,
                                                  distributions=dist,
                                                  user_attrs={"train_steps": 4}))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"perturb.xi": 9.0}, distributions=dist,
        intermediate_values={8: 40.0}, user_attrs={"train_steps": 2}))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"perturb.xi": 0.2}, distributions=dist,
        user_attrs={"run_dir": "/runs/trial-0004", "mlflow_run_id": "dead"}))

    assert tuning._requeue_failed(study) == [4]
    assert tuning._requeue_failed(study) == []  # queued once, not on every call
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert waiting[0].user_attrs["run_dir"] == "/runs/trial-0004"  # resumes the same folder
    assert "mlflow_run_id" not in waiting[0].user_attrs

    written = tuning.write_study_artifacts(study, definition, "smoke", tmp_path / "out")
    assert {p.name for p in written} == {"trials.csv", "best.yaml", "importances.json",
                                         "history.png", "slice.png", "curves.png"}
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert [b["number"] for b in best["best"]] == [1, 2, 0]
    assert best["row"]["set"]["perturb.xi"] == 2.0
    assert best["row"]["set"]["perturb.kind"] == "gaussian"


def test_two_objectives_give_a_pareto_front():
    definition = tuning.find_study("all")
    study = optuna.create_study(directions=["minimize", "maximize"])
    dist = {p.key: _float(p.low, p.high) for p in definition.search}
    params = {p.key: 1.0 for p in definition.search}
    for fid, inception in ((20.0, 5.0), (25.0, 9.0), (30.0, 4.0)):
        study.add_trial(optuna.trial.create_trial(params=params, values=[fid, inception],
                                                  distributions=dist))
    front = tuning.best_trials(study, definition)
    assert [t.values for t in front] == [[20.0, 5.0], [25.0, 9.0]]


# -- real studies ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A tiny world CLIP folder and a tiny inspector file, trained once per module."""
    import torch

    from lafite import clip as clip_mod
    from lafite.data import inspector as inspector_mod

    torch.set_num_threads(1)
    ws = Workspace.resolve(tmp_path_factory.mktemp("template"))
    tiny = {"embed_dim": 32,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16,
                           "patch_size": 4},
            "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 32, "heads": 2,
                         "layers": 1}}
    training = clip_mod.WorldClipTraining(n_train=128, steps=5, batch=32, warmup_steps=1,
                                          eval_groups=1)
    built = clip_mod.pretrain_world_clip(ws, 16, progress=False, model_cfg=tiny,
                                         training=training)
    config = inspector_mod.InspectorConfig(width=8, feature_dim=32, steps=40, batch=32, lr=1e-2,
                                           eval_images=32)
    trained = inspector_mod.train_inspector(ws, 16, progress=False, config=config)
    return built, trained


@pytest.fixture
def ready(template, workspace):
    """This test's workspace, with the template's CLIP and inspector where runs look for them
    (the paths are computed now: they hash the world's code, which may have changed)."""
    from lafite import clip as clip_mod
    from lafite.data import inspector as inspector_mod

    built, trained = template
    target = clip_mod.world_clip_dir(workspace, 16)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(built / clip_mod.WORLD_CLIP_WEIGHTS, target / clip_mod.WORLD_CLIP_WEIGHTS)
    shutil.copy(built / "meta.json", target / "meta.json")
    shutil.copy(built / f"{clip_mod._model_name(built)}.json",
                target / f"{clip_mod._model_name(target)}.json")
    shutil.copy(trained, inspector_mod.inspector_path(workspace, 16))
    return workspace


def _mlflow_trials(workspace: Workspace, experiment: str) -> list:
    from lafite.tracking import Tracker

    tracker = Tracker(workspace)
    exp = tracker.client.get_experiment_by_name(experiment)
    runs = tracker.client.search_runs([exp.experiment_id])
    return [r for r in runs if r.data.tags.get("lafite.role") == "child"]


@pytest.mark.slow
def test_smoke_study_of_four_trials_then_continue(tmp_path, ready):
    path = write_study(tmp_path)
    summary = tuning.run_study(str(path), ready, scale="smoke", trials=4, quiet=True)
    assert summary.finished == 4
    children = _mlflow_trials(ready, "tune-xi")
    assert len(children) == 4
    assert {r.data.tags["lafite.trial.state"] for r in children} <= {"COMPLETE", "PRUNED"}
    for run in children:
        assert "perturb.xi" in run.data.params and "FID-0" in run.data.metrics
        assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
    artifacts = {Path(p).name for p in os.listdir(summary.artifacts_dir)}
    assert {"best.yaml", "importances.json", "history.png", "slice.png", "trials.csv"} <= artifacts
    # Budget: every trial is accounted for in training iterations (4 per full trial).
    assert 4 <= summary.budget_steps <= 16
    assert "lafite-repro run table5 --scale smoke --rows" in tuning.describe_study(
        str(path), ready, scale="smoke")

    again = tuning.run_study(str(path), ready, scale="smoke", trials=4, quiet=True)
    assert again.finished == 4 and len(_mlflow_trials(ready, "tune-xi")) == 4
    more = tuning.run_study(str(path), ready, scale="smoke", trials=5, quiet=True)
    assert more.finished == 5 and len(_mlflow_trials(ready, "tune-xi")) == 5


@pytest.mark.slow
def test_two_workers_make_the_planned_trials_without_duplicates(tmp_path, ready):
    path = write_study(tmp_path, pruner={"name": "none"})
    summary = tuning.run_study(str(path), ready, scale="smoke", trials=4, workers=2, quiet=True)
    assert summary.worker_exit_codes == [0]
    study = optuna.load_study(study_name="xi-smoke", storage=tuning.default_storage(ready))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.number for t in trials}) == 4
    assert len({t.params["perturb.xi"] for t in trials}) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert len(_mlflow_trials(ready, "tune-xi")) == 4


@pytest.mark.slow
def test_a_killed_worker_leaves_a_failed_trial_that_the_next_run_retries(tmp_path, ready):
    # Longer trials (16 steps, a checkpoint every 4) so that the kill lands mid-trial.
    fast = FAST_STUDY["scales"]["smoke"]
    path = write_study(tmp_path, pruner={"name": "none"}, scales={"smoke": {
        **fast, "train.kimg": 0.064, "train.checkpoint_kimg": 0.016, "train.eval_kimg": 0.032}})
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from lafite import tuning
        from lafite.workspace import Workspace
        tuning.run_study({str(path)!r}, Workspace.resolve({str(ready.root)!r}), scale="smoke",
                         trials=2, quiet=True, heartbeat_interval=1, grace_period=2)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    storage = tuning.default_storage(ready)
    deadline = time.monotonic() + 240
    killed_trial = None
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.3)
            try:
                study = optuna.load_study(study_name="xi-smoke", storage=storage)
            except KeyError:
                continue
            running = study.get_trials(states=(TrialState.RUNNING,))
            if running and "run_dir" in running[0].user_attrs:
                if (Path(running[0].user_attrs["run_dir"]) / "checkpoint.pt").exists():
                    killed_trial = running[0]
                    os.kill(worker.pid, signal.SIGKILL)
                    break
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    assert killed_trial is not None, "the worker finished before it could be killed mid-trial"

    time.sleep(3)  # past the grace period: its heartbeat is now stale
    summary = tuning.run_study(str(path), ready, scale="smoke", trials=2, quiet=True,
                               heartbeat_interval=1, grace_period=2)
    assert summary.finished == 2
    study = optuna.load_study(study_name="xi-smoke", storage=storage)
    dead = study.trials[killed_trial.number]
    assert dead.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert retries[0].user_attrs["run_dir"] == dead.user_attrs["run_dir"]  # resumed its checkpoint
    states = {r.info.run_id: r.info.status for r in _mlflow_trials(ready, "tune-xi")}
    assert states[dead.user_attrs["mlflow_run_id"]] == "FAILED"
    assert states[retries[0].user_attrs["mlflow_run_id"]] == "FINISHED"
    assert json.loads(json.dumps(summary.counts))["FAIL"] == 1
