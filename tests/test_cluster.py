"""The cluster launchers on real engines: a single-node SLURM (slurm-wlm), torchrun with gloo on
the CPU, and PostgreSQL for MLflow's backend store and an Optuna study (tests/engines.py starts
them; .ci/run installs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engines import postgres_missing, slurm_missing, start_postgres, start_slurm

ROW = "LAFITE_NN"  # needs the nn-web inference model: a job build submitted before the row
# Long enough (200 steps) that the preemption, sent when the first checkpoint (step 10) appears,
# lands mid-run on a fast machine too.
LONGER = ("--set", "train.kimg=1.6", "--set", "train.checkpoint_kimg=0.08")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = slurm_missing()
    if why:
        pytest.skip(why)
    cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    why = postgres_missing()
    if why:
        pytest.skip(why)
    server = start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path, tiny_models) -> Path:
    home = tmp_path / "ws"
    shutil.copytree(tiny_models, home / "models")
    return home


def _env(home: Path, slurm=None, **extra: str) -> dict[str, str]:
    env = {**(slurm.env if slurm else os.environ), "LAFITE_HOME": str(home),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "LAFITE_CLUSTER_CONFIG": str(home.parent / "no-cluster-file.yaml"), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cli(home: Path, *args: str, slurm=None, timeout: float = 600, **env: str):
    return subprocess.run([sys.executable, "-m", "lafite.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(home, slurm, **env))


def _tracker(home: Path, uri: str | None = None):
    from lafite.tracking import Tracker
    from lafite.workspace import Workspace

    return Tracker(Workspace.resolve(home), uri)


def _final_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {f"G_ema.{k}": v for k, v in saved["G_ema"].items()} | {
        f"D.{k}": v for k, v in saved["D"].items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    one, two = _final_weights(a), _final_weights(b)
    assert one.keys() == two.keys()
    worst = max((x - two[k]).abs().max().item() for k, x in one.items())
    assert worst == 0.0, f"final weights differ by up to {worst}"


def _squeue(slurm) -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %T %j"], env=slurm.env, capture_output=True,
                          text=True).stdout


def _job_ids(slurm) -> set[str]:
    """Every job the controller knows (finished ones stay for MinJobAge)."""
    return set(subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], env=slurm.env,
                              capture_output=True, text=True).stdout.split())


def _wait(condition, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _child(home: Path, row: str = ROW):
    from lafite.run_records import TAG_ROW

    runs = [r for r in _tracker(home).client.search_runs(
        [e.experiment_id for e in _tracker(home).client.search_experiments()],
        f"tags.`{TAG_ROW}` = '{row}'")]
    return runs[0] if runs else None


# -- SLURM ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_slurm_row_is_preempted_requeued_and_ends_with_the_uninterrupted_weights(slurm, home,
                                                                                 tmp_path):
    started = time.monotonic()
    submit = _cli(home, "run", "table5", "--scale", "smoke", "--rows", ROW, *LONGER,
                  "--launcher", "slurm", "--time", "30", "--quiet", slurm=slurm)
    assert submit.returncode == 0, submit.stderr
    out = submit.stdout + submit.stderr
    assert "build nn-web (inference-model, 16px): SLURM job" in out  # submitted before the row
    queue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T %j"], env=slurm.env,
                           capture_output=True, text=True).stdout
    build_id = next(line.split()[0] for line in queue.splitlines() if "build-nn-web" in line)
    row_line = next(line for line in queue.splitlines() if "LAFITE_NN" in line)
    row_id = row_line.split()[0]
    assert f"SLURM job {row_id}" in out
    depends = subprocess.run(["scontrol", "show", "job", row_id], env=slurm.env,
                             capture_output=True, text=True).stdout
    assert f"afterok:{build_id}" in depends

    # A second, overlapping `run` submits nothing new.
    again = _cli(home, "run", "table5", "--scale", "smoke", "--rows", ROW, *LONGER,
                 "--launcher", "slurm", "--quiet", slurm=slurm)
    assert again.returncode == 0, again.stderr
    assert "1 queued" in again.stdout and f"SLURM job {row_id} (queued" in again.stdout
    assert _job_ids(slurm) == {line.split()[0] for line in queue.splitlines()}

    run = _wait(lambda: _child(home), 60, "the row's MLflow run")
    run_dir = Path(run.data.tags["lafite.run_dir"])
    # Preempt (submitit's USR2 path) once the first checkpoint exists, mid-run.
    _wait(lambda: (run_dir / "checkpoint.pt").exists(), 300, "the first checkpoint")
    from lafite.checkpoint import load_checkpoint

    kimg_at_signal = load_checkpoint(run_dir / "checkpoint.pt")["kimg"]
    assert kimg_at_signal < 1.6
    signalled = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", row_id], env=slurm.env, check=True)
    requeued = _wait(lambda: _requeued_state(slurm, row_id), 120, "the requeue")
    _wait(lambda: "Restarts=1" in subprocess.run(
        ["scontrol", "show", "job", row_id], env=slurm.env, capture_output=True,
        text=True).stdout and slurm_state(slurm, row_id) == "RUNNING", 120, "the resume")
    requeue_to_resume = time.monotonic() - signalled
    status = _cli(home, "status", "table5", "--scale", "smoke", "--rows", ROW, *LONGER,
                  slurm=slurm)
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and row_id in status.stdout

    _wait(lambda: slurm_state(slurm, row_id) == "COMPLETED", 600, "the row to finish")
    total = time.monotonic() - started
    run = _child(home)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lafite.slurm.restarts"] == "1"
    assert run.data.tags["lafite.launcher"] == "slurm"
    status = _cli(home, "status", "table5", "--scale", "smoke", "--rows", ROW, *LONGER,
                  slurm=slurm)
    assert "1 finished" in status.stdout
    log = Path(run.data.tags["lafite.slurm.log"])
    assert log.exists()

    # The same row, uninterrupted, in this process: same final weights.
    local_home = tmp_path / "local"
    shutil.copytree(home / "models", local_home / "models")
    local = _cli(local_home, "run", "table5", "--scale", "smoke", "--rows", ROW, *LONGER,
                 "--quiet")
    assert local.returncode == 0, local.stderr
    local_run = _child(local_home)
    _assert_same_weights(Path(run.data.tags["lafite.final_checkpoint"]),
                         Path(local_run.data.tags["lafite.final_checkpoint"]))
    print(f"SLURM smoke row: {total:.1f} s submit to finish with one preemption; requeue to "
          f"resume {requeue_to_resume:.1f} s; preempted at {kimg_at_signal} kimg ({requeued})")


def slurm_state(slurm, job_id: str) -> str:
    """The job's state as squeue shows it (finished jobs stay for MinJobAge)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                         env=slurm.env, capture_output=True, text=True).stdout.strip()
    return out


def _requeued_state(slurm, job_id: str) -> str:
    state = slurm_state(slurm, job_id)
    return state if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") else ""


def test_a_job_the_scheduler_kills_shows_in_status_and_the_next_run_retries_it(slurm, home):
    """Submitted, cancelled by the scheduler (status says so), retried by the next `run`."""
    submit = _cli(home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G",
                  "--launcher", "slurm", "--quiet", slurm=slurm)
    assert submit.returncode == 0, submit.stderr
    row_id = submit.stdout.split("LAFITE_G (seed 0): SLURM job ")[1].split()[0]
    subprocess.run(["scancel", row_id], env=slurm.env, check=True)
    _wait(lambda: slurm_state(slurm, row_id) == "CANCELLED", 60, "the cancellation")
    status = _cli(home, "status", "table5", "--scale", "smoke", "--rows", "LAFITE_G", slurm=slurm)
    text = " ".join(status.stdout.split())
    assert "failed" in text and "CANCELLED" in text and row_id in text
    # The retry, waited for: the row trains as a SLURM job, resumed under the same MLflow run.
    again = _cli(home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G",
                 "--launcher", "slurm", "--wait", "--quiet", slurm=slurm)
    assert again.returncode == 0, again.stderr
    assert "1 trained" in again.stdout
    new_id = again.stdout.split("LAFITE_G (seed 0): SLURM job ")[1].split()[0]
    assert new_id != row_id
    run = _child(home, "LAFITE_G")
    assert run.info.status == "FINISHED" and run.data.tags["lafite.slurm.job_id"] == new_id
    assert "CANCELLED" in run.data.tags["lafite.previous_failure"]  # why the first attempt ended
    assert "lafite.failure" not in run.data.tags
    status = _cli(home, "status", "table5", "--scale", "smoke", "--rows", "LAFITE_G", slurm=slurm)
    assert "1 finished" in status.stdout


def test_slurm_job_states_read_from_logs_when_the_scheduler_forgot_them(tmp_path):
    from lafite.launch.slurm import job_states

    log = tmp_path / "1_0_log.err"
    log.write_text("slurmstepd: error: *** JOB 1 ON vm CANCELLED AT 2026-12-02T10:00:00 DUE TO "
                   "TIME LIMIT ***\n")
    oom = tmp_path / "2_0_log.err"
    oom.write_text("slurmstepd: error: Detected 1 oom_kill event in StepId=2.0. Some of the "
                   "step tasks have been OOM Killed.\n")
    states = job_states(["999991", "999992"], {"999991": str(log), "999992": str(oom)})
    assert states["999991"].state == "TIMEOUT" and not states["999991"].active
    assert states["999992"].state == "OUT_OF_MEMORY"


def test_slurm_bad_input_is_one_message_and_submits_nothing(slurm, home, tmp_path):
    def refused(*args, **env):
        started = time.monotonic()
        result = _cli(home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G",
                      "--launcher", "slurm", *args, slurm=slurm, **env)
        assert result.returncode != 0
        assert time.monotonic() - started < 30
        assert "Traceback" not in result.stderr
        return result.stderr

    message = refused("--partition", "nosuch")
    assert "--partition 'nosuch'" in message and "debug" in message
    message = refused("--gpus-per-run", "2")
    assert "--gpus-per-run 2" in message and "the most is 0" in message
    message = refused(PATH=str(tmp_path / "empty"))
    assert "no `sbatch` on PATH" in message
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text("slurm:\n  partitoin: gpu\n")
    message = refused(LAFITE_CLUSTER_CONFIG=str(cluster_file))
    assert str(cluster_file) in message and "partitoin" in message
    message = refused("--time", "soon")
    assert "--time" in message or "time" in message
    assert _squeue(slurm) == ""
    assert not (home / "mlflow.db").exists()


def test_slurm_dry_run_prints_every_sbatch(home):
    result = _cli(home, "run", "table5", "--scale", "smoke", "--rows", ROW, "--dry-run",
                  "--launcher", "slurm", "--partition", "gpu", "--gpus-per-run", "4", "--time",
                  "2-00:00:00", "--sbatch=--exclusive")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "build nn-web" in text
    assert "--partition=gpu --gpus-per-node=4 --signal=USR2@90 --dependency=afterok:<" in text
    assert ":<lafite-build-nn-web-" in text
    assert "--time=2-00:00:00" in text and "--exclusive" in text and "--ntasks-per-node=4" in text


@pytest.mark.slow
def test_slurm_time_limit_requeues_and_resumes(slurm, home, tmp_path):
    """A real time limit: a 1-minute job told to checkpoint 25 s before it, on a row that
    needs longer; it is requeued until done, and ends with the uninterrupted weights."""
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text("slurm:\n  time: 1\n  signal_delay_s: 25\n")
    longer = ("--set", "train.kimg=3.2", "--set", "train.checkpoint_kimg=0.16")
    submit = _cli(home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G", *longer,
                  "--launcher", "slurm", "--wait", "--quiet", slurm=slurm,
                  LAFITE_CLUSTER_CONFIG=str(cluster_file), timeout=1800)
    assert submit.returncode == 0, submit.stderr
    run = _child(home, "LAFITE_G")
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["lafite.slurm.restarts"]) >= 1
    local_home = tmp_path / "local"
    shutil.copytree(home / "models", local_home / "models")
    local = _cli(local_home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G", *longer,
                 "--quiet")
    assert local.returncode == 0, local.stderr
    _assert_same_weights(Path(run.data.tags["lafite.final_checkpoint"]),
                         Path(_child(local_home, "LAFITE_G").data.tags["lafite.final_checkpoint"]))


# -- torchrun ------------------------------------------------------------------------------------


def test_torchrun_launcher_trains_a_row_to_the_weights_of_the_ddp_path(home, tmp_path):
    """`run --launcher torchrun --gpus 2` (gloo on the CPU) and `torchrun -m lafite.train` on the
    same configuration end with identical weights."""
    import yaml

    launched = _cli(home, "run", "table5", "--scale", "smoke", "--rows", "LAFITE_G",
                    "--launcher", "torchrun", "--gpus", "2", "--quiet")
    assert launched.returncode == 0, launched.stderr
    run = _child(home, "LAFITE_G")
    assert run.info.status == "FINISHED"
    assert run.data.tags["lafite.world_size"] == "2"
    assert run.data.tags["lafite.launcher"] == "torchrun"
    ticket = json.loads((Path(run.data.tags["lafite.run_dir"]) / "ticket.json").read_text())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(ticket["config"]))
    direct = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
         "--nproc_per_node=2", "-m", "lafite.train", "--config", str(config), "--run-dir",
         str(tmp_path / "direct")], capture_output=True, text=True, env=_env(home), timeout=600)
    assert direct.returncode == 0, direct.stderr
    _assert_same_weights(Path(run.data.tags["lafite.final_checkpoint"]),
                         tmp_path / "direct" / "checkpoint.pt")


# -- PostgreSQL: one store for a lab -------------------------------------------------------------


def _start_mlflow_server(backend: str, artifacts: Path, port: int) -> subprocess.Popen:
    """The command the README gives a lab (mlflow server with a PostgreSQL backend store)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_postgres_holds_the_mlflow_server_store_and_a_two_worker_study(postgres, home):
    import urllib.request

    from engines import free_port

    port = free_port()
    server = _start_mlflow_server(postgres.create_database("mlflow"), home.parent / "artifacts",
                                  port)
    uri = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
            except OSError:
                assert server.poll() is None, server.stderr.read()
                return False

        _wait(up, 120, "the MLflow server")
        storage = postgres.create_database("optuna")
        tuned = _cli(home, "tune", "--study", "xi", "--scale", "smoke", "--trials", "2",
                     "--workers", "2", "--storage", storage, "--tracking-uri", uri, "--quiet")
        assert tuned.returncode == 0, tuned.stderr
        import optuna

        summaries = optuna.get_all_study_summaries(storage)
        assert len(summaries) == 1 and summaries[0].n_trials >= 2
        study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(done) == 2
        assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 2
        runs = _tracker(home, uri).client.search_runs(
            [e.experiment_id for e in _tracker(home, uri).client.search_experiments()],
            "tags.`lafite.role` = 'child'")
        assert len(runs) >= 2  # every trial kept its MLflow run, on the server's PostgreSQL
        assert not (home / "mlflow.db").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unreachable_postgres_is_one_message_within_seconds(home):
    from engines import free_port

    started = time.monotonic()
    result = _cli(home, "tune", "--study", "xi", "--scale", "smoke", "--trials", "1",
                  "--storage", f"postgresql+psycopg2://u:p@127.0.0.1:{free_port()}/x", "--quiet")
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert "Traceback" not in result.stderr and "127.0.0.1" in result.stderr


@pytest.mark.slow
def test_tune_workers_on_slurm_share_one_postgres_study(slurm, postgres, home):
    storage = postgres.create_database("optuna_slurm")
    tuned = _cli(home, "tune", "--study", "xi", "--scale", "smoke", "--trials", "2",
                 "--workers", "2", "--storage", storage, "--launcher", "slurm", "--wait",
                 "--quiet", slurm=slurm, timeout=1200)
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stdout.count(": SLURM job ") == 2
    import optuna

    summaries = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) >= 2
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)


def test_slurm_settings_merge_spec_then_cluster_file_then_command_line(tmp_path, monkeypatch):
    from lafite.errors import UserError
    from lafite.launch.settings import parse_time, resolve

    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text("slurm:\n  partition: gpu\n  time: '1-12:00:00'\n  account: lab\n")
    monkeypatch.setenv("LAFITE_CLUSTER_CONFIG", str(cluster_file))
    settings = resolve({"gpus_per_run": 4, "time": 60, "partition": "spec"}, "spec",
                       {"partition": "debug", "sbatch": ["--exclusive", "--mail-type=FAIL"]})
    assert (settings.partition, settings.time, settings.account, settings.gpus_per_run) == (
        "debug", 36 * 60, "lab", 4)
    assert settings.extra_parameters() == {"exclusive": True, "mail_type": "FAIL"}
    assert settings.sbatch_options()["time"] == "1-12:00:00"
    assert [parse_time(v) for v in (90, "90", "1:30:00", "2-00:00:00", "45:00")] == [
        90, 90, 90, 2880, 45]
    with pytest.raises(UserError, match="sbatch arguments are given in long form"):
        resolve(None, "", {"sbatch": ["-x"]})
