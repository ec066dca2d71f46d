"""MLflow bookkeeping against a real sqlite store: layout, lookup by hash, resume, read API.

The tests share one store (creating a sqlite store runs MLflow's migrations, seconds each) and
keep apart by using one spec id (experiment) each.
"""

from __future__ import annotations

import os
import time

import pytest
from mlflow.tracking import MlflowClient

from lafite.config import RunConfig
from lafite.tracking import (
    FINISHED,
    KILLED,
    MAX_PARAM_CHARS,
    RUNNING,
    TAG_CHECKPOINT,
    TAG_HASH,
    TAG_PARENT,
    Tracker,
    provenance_tags,
)
from lafite.workspace import Workspace


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    return Tracker(Workspace.resolve(tmp_path_factory.mktemp("tracking") / "ws"))


def _child(tracker: Tracker, parent: str, cfg: RunConfig, row: str = "row a", spec="tabletest", **kw):
    return tracker.start_child(
        spec, parent, row=row, scale="smoke", seed=cfg.train.seed, config_hash=cfg.hash(),
        config=cfg.to_dict(), flat_params=cfg.flat(), **kw,
    )


def test_layout_params_tags_metrics_and_artifacts(tracker):
    workspace = tracker.workspace
    assert tracker.uri == f"sqlite:///{workspace.root / 'mlflow.db'}"
    parent = tracker.parent_run("tabletest", "smoke")
    assert tracker.parent_run("tabletest", "smoke") == parent  # one parent per (spec, scale)
    cfg = RunConfig().override({"eval.inception_weights": "x" * 900})
    logger = _child(tracker, parent, cfg)
    logger.log_metrics(0.5, {"G/loss": 1.5, "not a number": "text"})
    logger.log_metrics(1.0, {"G/loss": 1.25, "FID-0": 30.0})
    logger.set_tags({TAG_CHECKPOINT: "/somewhere/checkpoint.pt"})
    logger.close(FINISHED)

    client = MlflowClient(tracker.uri)
    exp = client.get_experiment_by_name("tabletest")
    assert exp.artifact_location.startswith((workspace.root / "mlartifacts").as_uri())
    run = client.get_run(logger.run_id)
    assert run.info.status == FINISHED
    tags = run.data.tags
    assert tags[TAG_PARENT] == parent and tags[TAG_HASH] == cfg.hash()
    assert tags["lafite.row"] == "row a" and tags["lafite.scale"] == "smoke"
    assert tags["lafite.git_commit"] and tags["lafite.version.torch"]
    assert f"{os.cpu_count()} cores" in tags["lafite.hardware"]
    params = run.data.params
    assert params["loss.lambda"] == "10.0" and params["loss.tau"] == "0.5"
    assert len(params["eval.inception_weights"]) == MAX_PARAM_CHARS  # truncated, not rejected
    history = client.get_metric_history(logger.run_id, "G/loss")
    assert [(m.step, m.value) for m in history] == [(500, 1.5), (1000, 1.25)]
    artifacts = {a.path for a in client.list_artifacts(logger.run_id)}
    assert "config.yaml" in artifacts

    frame = tracker.runs_frame("tabletest")
    assert list(frame["row"]) == ["row a"]
    assert frame.loc[0, "metrics.FID-0"] == 30.0
    assert frame.loc[0, "final_checkpoint"] == "/somewhere/checkpoint.pt"
    assert frame.loc[0, "tags.lafite.hardware"] == tags["lafite.hardware"]
    assert frame.loc[0, "end_time"] >= frame.loc[0, "start_time"] > 0
    history = tracker.metric_histories(frame["run_id"], ["G/loss"])
    assert list(history["kimg"]) == [0.5, 1.0] and list(history["value"]) == [1.5, 1.25]
    # status=None: every child run, whatever its state.
    unfinished = _child(tracker, parent, cfg.override({"loss.tau": 0.25}))
    unfinished.abandon()
    assert list(tracker.runs_frame("tabletest")["row"]) == ["row a"]
    assert sorted(tracker.runs_frame("tabletest", status=None)["status"]) == [FINISHED, "RUNNING"]


def test_find_child_prefers_finished_and_resumes_same_run(tracker):
    spec = "tableresume"
    parent = tracker.parent_run(spec, "smoke")
    cfg = RunConfig()
    assert tracker.find_child(spec, cfg.hash()) is None
    first = _child(tracker, parent, cfg, spec=spec)
    first.abandon()  # as if the process was killed: the run stays RUNNING
    found = tracker.find_child(spec, cfg.hash())
    assert found.run_id == first.run_id and found.status == RUNNING
    resumed = _child(tracker, parent, cfg, spec=spec, resume_run_id=found.run_id)
    assert resumed.run_id == first.run_id
    resumed.close(KILLED)
    assert tracker.find_child(spec, cfg.hash()).status == KILLED
    again = _child(tracker, parent, cfg, spec=spec, resume_run_id=first.run_id)
    again.close(FINISHED)
    assert tracker.find_child(spec, cfg.hash()).status == FINISHED
    assert len(tracker.children(spec, "smoke")) == 1
    assert tracker.runs_frame(spec, scale="mini").empty


def test_logging_does_not_block(tracker):
    """log_metrics only buffers: a thousand calls cost far less than one synchronous write."""
    spec = "tablespeed"
    parent = tracker.parent_run(spec, "smoke")
    logger = _child(tracker, parent, RunConfig(), spec=spec)
    started = time.perf_counter()
    for i in range(1000):
        logger.log_metrics(i / 1000, {"G/loss": float(i), "D/loss": 1.0})
    per_call = (time.perf_counter() - started) / 1000
    logger.close(FINISHED)
    assert per_call < 1e-3  # a synchronous sqlite log_metric costs 3-5 ms
    history = MlflowClient(tracker.uri).get_metric_history(logger.run_id, "G/loss")
    assert len(history) == 1000


def test_provenance_has_commit_and_versions():
    tags = provenance_tags()
    assert tags["lafite.git_commit"] != ""
    assert "lafite.version.mlflow" in tags
