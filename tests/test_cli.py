"""The command line: errors, dry runs, and (slow) whole smoke tables recorded in MLflow.

The training tests run whole smoke tables through ``lafite-repro`` subprocesses, with tiny
stand-ins for the world's CLIP and inspector (see ``tiny_models``); the MLflow store, runs and
locks are fresh in every test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from lafite.cli import main

REPO = Path(__file__).resolve().parent.parent
TABLE5_ROWS = 8


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- fast: no training -------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_records_nothing(workspace):
    result = invoke("run", "table5", "--scale", "smoke", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("LAFITE_") >= TABLE5_ROWS
    assert "nn-web" in result.output and "resolved configuration" in result.output
    assert "loss.con_g=False" in result.output
    assert not (workspace.root / "mlflow.db").exists()
    assert not (workspace.root / "runs").exists()


@pytest.mark.parametrize("table", ["table1", "table6"])
def test_the_encoder_and_captioner_tables_plan_at_paper_scale(workspace, table):
    result = invoke("run", table, "--scale", "paper", "--dry-run")
    assert result.exit_code == 0, result.output
    if table == "table6":
        assert "encoder.name=roberta-large" in result.output
        assert "clip.name=ViT-B-16, loss.con_g=False" in result.output
    else:
        assert "data.captions_file=vinvl-large.jsonl" in result.output
        assert "captioner-base" not in result.output  # no captioner is trained at paper scale
    assert not (workspace.root / "mlflow.db").exists()


def test_show_and_list(workspace):
    shown = invoke("show", "table5", "--scale", "mini")
    assert shown.exit_code == 0, shown.output
    assert "26.48" in shown.output and "18.40" in shown.output  # as printed
    assert "perturb.kind=nn" in shown.output and "data:" in shown.output
    listed = invoke("list")
    assert listed.exit_code == 0 and "table5" in listed.output and "0/8" in listed.output


def _bad_yaml(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "tablebad.yaml"
    path.write_text("id: tablebad\ntitle: x\nrows: [\n  - name: a\n")
    return ["run", str(path), "--scale", "smoke"], r"tablebad.yaml:\d+:\d+: YAML syntax error"


def _unknown_key(tmp_path: Path) -> tuple[list[str], str]:
    text = (REPO / "experiments" / "table5.yaml").read_text().replace("id: table5", "id: tablekey")
    text = text.replace("set: {loss.con_g: false, loss.con_d: false}",
                        "set: {loss.con_g: false, loss.cond: false}", 1)
    path = tmp_path / "tablekey.yaml"
    path.write_text(text)
    return ["run", str(path)], r"rows\[0\] 'LAFITE_G': set: unknown key 'loss.cond'"


@pytest.mark.parametrize(
    "case",
    [
        lambda tmp: (["run", "table99"], r"unknown table or figure 'table99'. Valid choices: .*table5"),
        lambda tmp: (["run", "table5", "--scale", "huge"], r"'huge' is not one of 'smoke', 'mini', 'paper'"),
        lambda tmp: (["run", "table5", "--rows", "LAFITE_X"], r"unknown row\(s\) 'LAFITE_X'. Valid rows"),
        lambda tmp: (["run", "table5", "--seeds", "0"], r"Invalid value for '--seeds'"),
        lambda tmp: (["run", "table5", "--set", "train.kimg=fast"], r"--set: 'train.kimg' must be a number"),
        lambda tmp: (["generate", "--run", "x"], r"give at least one --caption TEXT or an --image PATH"),
        lambda tmp: (["evaluate", "--run", "x", "--metric", "FID-3"],
                     r"--metric: unknown metric 'FID-3'. Known metrics: IS, FID"),
        _bad_yaml,
        _unknown_key,
        lambda tmp: (
            ["run", "table5", "--scale", "paper", "--rows", "LAFITE_G"],
            r"dataset 'coco2014' needs data.data_root",
        ),
        lambda tmp: (
            ["run", "table5", "--scale", "smoke", "--rows", "LAFITE_G", "--set",
             f"train.init_checkpoint={tmp / 'gone.pt'}"],
            r"pre-trained checkpoint .*gone\.pt does not exist \(train\.init_checkpoint\)",
        ),
        lambda tmp: (
            ["run", "figure7", "--scale", "smoke", "--set", "data.paired_fraction=1.5"],
            r"'data\.paired_fraction' must be in \[0, 1\]",
        ),
    ],
    ids=["unknown-table", "bad-scale", "unknown-row", "bad-seeds", "bad-set", "generate-nothing",
         "unknown-metric",
         "yaml-syntax", "unknown-key", "missing-dataset", "missing-init-checkpoint",
         "pair-fraction"],
)
def test_bad_input_exits_2_with_one_message_and_records_nothing(workspace, tmp_path, case):
    import re

    args, pattern = case(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert re.search(pattern, result.output), result.output
    assert "Traceback" not in result.output
    assert not (workspace.root / "mlflow.db").exists()  # nothing recorded half-way
    assert not (workspace.root / "runs").exists()


def test_evaluate_and_generate_name_a_missing_run_or_checkpoint(workspace):
    from lafite.tracking import Tracker

    missing = CliRunner().invoke(main, ["evaluate", "--run", "0123456789abcdef"])
    assert missing.exit_code == 2, missing.output
    assert "--run '0123456789abcdef': no such MLflow run" in missing.output

    tracker = Tracker(workspace)
    unfinished = tracker.client.create_run(tracker.experiment_id("table5")).info.run_id
    for command in (["evaluate"], ["generate", "--caption", "a red circle"]):
        result = CliRunner().invoke(main, [*command, "--run", unfinished])
        assert result.exit_code == 2, result.output
        assert "this run has no final checkpoint" in result.output
        assert "Traceback" not in result.output


def test_console_script_error_is_one_line_without_traceback(workspace):
    proc = subprocess.run(
        [sys.executable, "-m", "lafite.cli", "run", "table99"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown table or figure 'table99'")


def _negative_kimg(tmp_path: Path) -> Path:
    text = (REPO / "experiments" / "table5.yaml").read_text().replace("id: table5", "id: tablekimg")
    assert text.count("train: {batch: 8, kimg: 0.08,") == 1  # the smoke scale's schedule
    text = text.replace("train: {batch: 8, kimg: 0.08,", "train: {batch: 8, kimg: -1,")
    path = tmp_path / "tablekimg.yaml"
    path.write_text(text)
    return path


def test_an_out_of_range_number_fails_the_dry_run_naming_file_field_and_range(workspace, tmp_path):
    path = _negative_kimg(tmp_path)
    result = CliRunner().invoke(main, ["run", str(path), "--scale", "smoke", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert re.search(r"tablekimg\.yaml: scales\.smoke: 'train\.kimg' must be greater than 0, got -1",
                     result.output), result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    for assignment, message in (("train.batch=0", "--set: 'train.batch' must be at least 1, got 0"),
                                ("loss.tau=-0.5", "--set: 'loss.tau' must be greater than 0, got -0.5")):
        result = CliRunner().invoke(main, ["run", "table5", "--scale", "smoke", "--dry-run",
                                           "--set", assignment])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not workspace.root.exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TRACKING_COMMANDS = {
    "run": ["run", "table5", "--scale", "smoke", "--rows", "LAFITE_G"],
    "list": ["list"],
    "report": ["report", "table5"],
    "tune": ["tune", "--study", "tau", "--scale", "smoke"],
    "evaluate": ["evaluate", "--run", "0123456789abcdef"],
    "generate": ["generate", "--run", "0123456789abcdef", "--caption", "a red circle"],
}


@pytest.mark.parametrize("via", ["flag", "env"])
@pytest.mark.parametrize("command", sorted(TRACKING_COMMANDS))
def test_an_unreachable_tracking_server_fails_at_once(workspace, tmp_path, monkeypatch, command, via):
    uri = f"http://127.0.0.1:{_closed_port()}"
    args = TRACKING_COMMANDS[command]
    if via == "flag":
        args = [*args, "--tracking-uri", uri]
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # report writes ./reports
    started = time.monotonic()
    result = CliRunner().invoke(main, args)
    assert time.monotonic() - started < 30  # MLflow's own retries take minutes
    assert result.exit_code == 2, result.output
    source = "--tracking-uri" if via == "flag" else "$MLFLOW_TRACKING_URI"
    assert f"cannot reach the MLflow tracking server '{uri}' ({source})" in result.output
    assert "Start the MLflow server" in result.output
    assert ("drop --tracking-uri" if via == "flag" else "unset MLFLOW_TRACKING_URI") in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert not (workspace.root / "mlflow.db").exists() and not (workspace.root / "runs").exists()


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only: really, or (as root, whom permissions do not stop) as the
    operating system would report it."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_access, real_mkdir = os.access, Path.mkdir

    def access(path, mode, **kw):
        inside = Path(path) == folder or folder in Path(path).parents
        return False if inside and mode & os.W_OK else real_access(path, mode, **kw)

    def mkdir(self, *args, **kw):
        if folder in self.parents and not self.exists():
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("file", r"cannot create the workspace folder {home}: {home} is a file, not a folder"),
        ("under-file", r"cannot create the workspace folder {home}: {top} is a file, not a folder"),
        ("read-only", r"cannot write to the workspace folder {home}: permission denied on {home}\. "
                      r"Make it writable \(chmod u\+w {home}\)"),
        ("under-read-only", r"cannot write to the workspace folder {home}: permission denied on "
                            r"{top}\."),
    ],
)
@pytest.mark.parametrize("via", ["--home", "LAFITE_HOME"])
def test_an_unusable_workspace_folder_is_one_message(tmp_path, monkeypatch, layout, message, via):
    top = tmp_path / "top"
    home = top if layout in ("file", "read-only") else top / "ws"
    if layout.endswith("file"):
        top.write_text("not a folder")
    else:
        _read_only(monkeypatch, top)
    args = ["run", "table5", "--scale", "smoke", "--rows", "LAFITE_G"]
    if via == "--home":
        args = ["--home", str(home), *args]
    else:
        monkeypatch.setenv("LAFITE_HOME", str(home))
    try:
        result = CliRunner().invoke(main, args)
    finally:
        if top.is_dir():
            top.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert re.search(message.format(home=re.escape(str(home)), top=re.escape(str(top))),
                     result.output), result.output
    assert "--home DIR or LAFITE_HOME=DIR" in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1


def test_a_workspace_on_a_read_only_file_system_and_a_read_only_subfolder(tmp_path, monkeypatch):
    import errno

    home = tmp_path / "ws"
    real_mkdir = Path.mkdir

    def read_only_fs(self, *args, **kw):
        if self == home or home in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only_fs)
    result = CliRunner().invoke(main, ["--home", str(home), "run", "table5", "--scale", "smoke"])
    assert result.exit_code == 2, result.output
    assert f"cannot write to the workspace folder {home}: it is on a read-only file system" in result.output
    monkeypatch.undo()

    (home / "runs").mkdir(parents=True)
    _read_only(monkeypatch, home / "runs")
    from lafite.workspace import Workspace, WorkspaceError

    try:
        with pytest.raises(WorkspaceError, match=re.escape(
                f"cannot write to {home / 'runs'} in the workspace folder {home}: permission "
                f"denied on {home / 'runs'}")):
            assert Workspace.resolve(home).runs_dir is None  # raises first
    finally:
        (home / "runs").chmod(0o755)


# -- real smoke-scale training through subprocesses -------------------------------------------


@pytest.fixture
def smoke_home(tmp_path, tiny_models) -> Path:
    import shutil

    home = tmp_path / "ws"
    shutil.copytree(tiny_models, home / "models")
    return home


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "LAFITE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cli(home: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lafite.cli", *args], env=_env(home), capture_output=True,
        text=True, timeout=timeout,
    )


def _store(home: Path):
    from lafite.tracking import Tracker
    from lafite.workspace import Workspace

    return Tracker(Workspace.resolve(home))


@pytest.mark.slow
def test_smoke_table_is_recorded_and_a_second_run_trains_nothing(smoke_home):
    first = _cli(smoke_home, "run", "table5", "--scale", "smoke", "--quiet")
    assert first.returncode == 0, first.stderr
    assert f"{TABLE5_ROWS} trained" in first.stdout

    from mlflow.tracking import MlflowClient

    tracker = _store(smoke_home)
    client = MlflowClient(tracker.uri)
    exp = client.get_experiment_by_name("table5")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lafite.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("lafite.role") == "child"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == TABLE5_ROWS
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["loss.con_g"] in ("True", "False")
        assert {"IS", "FID-0"} <= set(run.data.metrics)
        assert any(k.startswith("G/") for k in run.data.metrics)
        checkpoint = Path(run.data.tags["lafite.final_checkpoint"])
        assert checkpoint.is_file()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "final_checkpoint.txt", "samples", "evaluation"} <= artifacts
    assert sorted(r.data.tags["lafite.row"] for r in children) == sorted(
        set(r.data.tags["lafite.row"] for r in children)
    )

    # The report of what was just run: all 8 rows with the paper's and the reproduced numbers.
    out = smoke_home / "report"
    reported = _cli(smoke_home, "report", "table5", "--out", str(out))
    assert reported.returncode == 0, reported.stderr
    page = (out / "table5.html").read_text()
    import html
    import re

    from lafite.spec import find

    spec = find("table5")
    rows = re.findall(r'<tr class="[^"]*" data-row="([^"]+)">(.*?)</tr>',
                      page.split('<table class="results">')[1].split("</table>")[0], flags=re.S)
    assert [html.unescape(name) for name, _ in rows] == [r.name for r in spec.rows]
    for row, (_, cells) in zip(spec.rows, rows):
        text = html.unescape(re.sub(r"<[^>]+>", " ", cells))
        for number in row.paper.values():
            assert f"{number:.2f}" in text, row.name
        assert "not run" not in text and text.count(" n=1") >= 4, (row.name, text)

    started = time.perf_counter()
    again = _cli(smoke_home, "run", "table5", "--scale", "smoke", "--quiet")
    seconds = time.perf_counter() - started
    assert again.returncode == 0, again.stderr
    assert f"{TABLE5_ROWS} skipped" in again.stdout and "trained" not in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == TABLE5_ROWS + 1
    assert seconds < 60, f"a finished table took {seconds:.1f} s to skip"


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_finished_rows(smoke_home):
    rows = ["LAFITE_G", "LAFITE_G +L_ConG", "LAFITE_G +L_ConD"]
    args = ["run", "table5", "--scale", "smoke", "--quiet"]
    for row in rows:
        args += ["--rows", row]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lafite.cli", *args], env=_env(smoke_home),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    tracker = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        if (smoke_home / "mlflow.db").exists():
            tracker = tracker or _store(smoke_home)
            done = [r for r in tracker.children("table5", "smoke") if r.status == "FINISHED"]
            if done:
                break
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.uri)
    before = {r.run_id: client.get_run(r.run_id).info.end_time
              for r in tracker.children("table5", "smoke") if r.status == "FINISHED"}
    assert before

    resumed = _cli(smoke_home, *args)
    assert resumed.returncode == 0, resumed.stderr
    after = tracker.children("table5", "smoke")
    assert len(after) == len(rows) and all(r.status == "FINISHED" for r in after)
    for run_id, end_time in before.items():
        assert client.get_run(run_id).info.end_time == end_time  # not trained again
    assert f"{len(before)} skipped" in resumed.stdout


@pytest.mark.slow
def test_two_concurrent_runs_train_each_row_once(smoke_home):
    command = [sys.executable, "-m", "lafite.cli", "run", "table5", "--scale", "smoke", "--quiet"]
    procs = [
        subprocess.Popen(command, env=_env(smoke_home), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=3600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    trained = 0
    for out, _ in outputs:
        for word in ("trained", "resumed"):
            for part in out.split(","):
                if part.strip().endswith(word):
                    trained += int(part.split(":")[-1].split()[0])
    assert trained == TABLE5_ROWS
    children = _store(smoke_home).children("table5", "smoke")
    assert len(children) == TABLE5_ROWS and all(r.status == "FINISHED" for r in children)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rest(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_runs_recorded_on_a_real_mlflow_server_are_found_through_its_rest_api(smoke_home, tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.read().strip() == b"OK":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(1)
        result = _cli(smoke_home, "run", "table5", "--scale", "smoke", "--quiet",
                      "--rows", "LAFITE_G", "--tracking-uri", base)
        assert result.returncode == 0, result.stderr
        assert not (smoke_home / "mlflow.db").exists()  # nothing went to the local store
        exp = _rest(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=table5")
        exp_id = exp["experiment"]["experiment_id"]
        found = _rest(f"{base}/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [exp_id], "filter": "tags.`lafite.role` = 'child'"})
        runs = found["runs"]
        assert len(runs) == 1
        tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
        assert tags["lafite.row"] == "LAFITE_G" and runs[0]["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        assert "FID-0" in metrics
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_evaluate_logs_to_the_run_and_generate_draws_a_grid(smoke_home, tmp_path):
    trained = _cli(smoke_home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G", "-q")
    assert trained.returncode == 0, trained.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_store(smoke_home).uri)
    exp = client.get_experiment_by_name("table5")
    (child,) = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("lafite.role") == "child"]
    run_id = child.info.run_id
    before = len(client.get_metric_history(run_id, "caption-accuracy"))

    scored = _cli(smoke_home, "evaluate", "--run", run_id, "--metric", "IS",
                  "--metric", "caption-accuracy")
    assert scored.returncode == 0, scored.stderr
    printed = json.loads(scored.stdout[scored.stdout.index("{"):])
    assert set(printed["metrics"]) >= {"IS", "caption-accuracy"}
    assert "FID-0" not in printed["metrics"]
    history = client.get_metric_history(run_id, "caption-accuracy")
    assert len(history) == before + 1
    assert history[-1].value == pytest.approx(printed["metrics"]["caption-accuracy"])

    grid = tmp_path / "grid.png"
    drawn = _cli(smoke_home, "generate", "--run", run_id, "--caption", "a large red circle",
                 "--caption", "two small blue squares", "--n", "4", "--out", str(grid))
    assert drawn.returncode == 0, drawn.stderr
    from PIL import Image

    with Image.open(grid) as image:
        assert image.width >= 4 * 16 and image.height >= 2 * 16
