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
    logger.log_metrics(1.0, {"G/loss": 1.25, "FID-0": 30.0, "IS": float("nan")})
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
    # A logged NaN (a failed measurement) is flagged, unlike a metric never logged.
    assert frame.loc[0, "nan.IS"] == True  # noqa: E712
    assert "nan.FID-0" not in frame.columns
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


# -- the tracking server probe -------------------------------------------------------------------


@pytest.fixture
def http_server():
    """A local HTTP server answering every GET with the status in ``server.status``."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.server.paths.append(self.path)
            self.send_response(self.server.status)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.paths = 200, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _uri(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_tracking_server_that_answers_passes_and_is_asked_once(http_server, monkeypatch):
    from lafite import tracking

    monkeypatch.setattr(tracking, "_servers_reached", set())
    for status in (200, 401):  # 401: MLflow has credentials this probe does not send
        http_server.status, http_server.paths = status, []
        tracking._servers_reached.clear()
        tracking.check_server(_uri(http_server))
        tracking.check_server(_uri(http_server) + "/")
        assert http_server.paths == ["/api/2.0/mlflow/experiments/search?max_results=1"] * 2
        tracking.check_server(_uri(http_server))
        assert len(http_server.paths) == 2  # a reached server is not asked again
    tracking.check_server("sqlite:////nowhere/mlflow.db")  # not a server: nothing to ask


@pytest.mark.parametrize(("status", "message"), [
    (404, "answers, but is not an MLflow tracking server"),
    (503, "fails: HTTP 503"),
])
def test_a_server_that_is_not_a_working_mlflow_is_named(http_server, monkeypatch, status, message):
    from lafite import tracking
    from lafite.errors import UserError

    monkeypatch.setattr(tracking, "_servers_reached", set())
    http_server.status = status
    with pytest.raises(UserError, match=message) as err:
        tracking.check_server(_uri(http_server))
    assert _uri(http_server) in str(err.value) and "drop --tracking-uri" in str(err.value)


def test_a_server_that_never_answers_fails_after_the_timeout(monkeypatch):
    import socket

    from lafite import tracking
    from lafite.errors import UserError

    monkeypatch.setattr(tracking, "_servers_reached", set())
    with socket.socket() as listener:  # accepts connections (the backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        started = time.monotonic()
        with pytest.raises(UserError) as err:
            tracking.check_server(timeout=0.5)
        assert time.monotonic() - started < 5
    assert f"cannot reach the MLflow tracking server '{uri}' ($MLFLOW_TRACKING_URI)" in str(err.value)
    assert "unset MLFLOW_TRACKING_URI" in str(err.value)


def test_tracker_asks_the_server_before_mlflow_does(tmp_path, monkeypatch):
    import socket

    from lafite.errors import UserError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UserError, match=f"'http://127.0.0.1:{port}' \\(--tracking-uri\\)"):
        Tracker(Workspace.resolve(tmp_path / "ws"), f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "ws").exists()


def test_the_ui_server_settings_are_mlflows_own():
    from mlflow.server import constants

    from lafite import tracking

    assert tracking._SERVER_BACKEND_ENV == constants.BACKEND_STORE_URI_ENV_VAR
    assert tracking._SERVER_REGISTRY_ENV == constants.REGISTRY_STORE_URI_ENV_VAR
    assert tracking._SERVER_ARTIFACT_ROOT_ENV == constants.ARTIFACT_ROOT_ENV_VAR
    assert tracking._SERVER_ARTIFACTS_DESTINATION_ENV == constants.ARTIFACTS_DESTINATION_ENV_VAR
    assert tracking._SERVER_SERVE_ARTIFACTS_ENV == constants.SERVE_ARTIFACTS_ENV_VAR


def test_ui_serves_the_workspace_store_and_says_when_it_answers(tracker):
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    parent = tracker.parent_run("tabletest", "smoke")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LAFITE_HOME": str(tracker.workspace.root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    ui = subprocess.Popen([sys.executable, "-m", "lafite.cli", "ui", "--port", str(port)], env=env,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        lines = []
        while time.monotonic() < deadline:
            line = ui.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "answered after" in line:
                break
        assert f"MLflow UI at http://127.0.0.1:{port}" in lines[-1]
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={parent}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert parent in response.read().decode()
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(timeout=60)
