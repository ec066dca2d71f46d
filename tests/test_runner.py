"""Runner pieces that need no training: per-run locks, plans with jobs, preflight, jobs.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lafite import jobs as jobs_mod
from lafite import runner
from lafite import spec as spec_mod
from lafite.errors import UserError
from lafite.runner import RunLock

REPO = Path(__file__).resolve().parent.parent


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "run-abc.lock"
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    assert not second.acquire()  # held by a live process (this one)
    assert first.holder()["pid"] == os.getpid()
    first.release()
    assert not path.exists()
    assert second.acquire()
    second.release()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "run-abc.lock"
    # A process that takes the lock and dies without releasing it (like SIGKILL).
    code = (
        "import sys; from pathlib import Path; from lafite.runner import RunLock; "
        f"assert RunLock(Path({str(path)!r})).acquire(); sys.exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    holder = json.loads(path.read_text())
    assert holder["pid"] != os.getpid()
    lock = RunLock(path)
    assert lock.is_stale(holder)
    assert lock.acquire()
    assert lock.holder()["pid"] == os.getpid()
    lock.release()


def test_lock_with_unreadable_content_is_stale_only_when_old(tmp_path):
    path = tmp_path / "run-abc.lock"
    path.write_text("")
    lock = RunLock(path)
    assert not lock.acquire()  # maybe a writer between create and write
    old = time.time() - 60
    os.utime(path, (old, old))
    assert lock.acquire()
    lock.release()


def test_plan_shares_jobs_between_rows():
    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    full = runner.make_plan(spec, "smoke")
    assert len(full.runs) == 8 and len({r.hash for r in full.runs}) == 8
    kinds = sorted(job.kind for job in full.jobs)
    # One world CLIP, one inspector and one inference model for all eight rows.
    assert kinds == ["inference-model", "inspector", "world-clip"]
    nn_runs = [r for r in full.runs if r.config.perturb.kind == "nn"]
    assert len(nn_runs) == 4
    assert all(
        any(j.kind == "inference-model" for j in full.jobs_of_run[r.hash]) for r in nn_runs
    )
    # The inference model inherits the condition space, not the row's losses.
    nn_job = next(j for j in full.jobs if j.kind == "inference-model")
    assert nn_job.config.world.domain == "web" and nn_job.config.clip.name == "world"
    assert nn_job.resolution == 16


def test_job_definitions_validate(tmp_path):
    bad = tmp_path / "jobs.yaml"
    bad.write_text("jobs:\n  x: {kind: teleporter}\n")
    with pytest.raises(UserError, match=r"jobs.x.kind: must be one of"):
        jobs_mod.load_definitions(bad)
    bad.write_text("jobs:\n  x: {kind: inference-model, sett: {}}\n")
    with pytest.raises(UserError, match=r"jobs.x: unknown key\(s\) sett"):
        jobs_mod.load_definitions(bad)
    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    cfg = spec.resolve(spec.row("LAFITE_G"), "smoke").override({"perturb.nn_job": "missing"})
    with pytest.raises(UserError, match="unknown job 'missing'.*nn-web"):
        jobs_mod.needed_jobs(cfg)


def test_job_is_built_once_under_a_lock(workspace, monkeypatch):
    """Two threads asking for one job: the builder runs once, both get its artifact."""
    import threading

    calls = []

    def fake_builder(job, ws, folder, progress):
        calls.append(job.name)
        time.sleep(0.5)
        out = folder / "artifact.bin"
        out.write_text("built")
        return out

    monkeypatch.setitem(jobs_mod.BUILDERS, "inference-model", fake_builder)
    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    cfg = spec.resolve(spec.row("LAFITE_NN"), "smoke")
    job = jobs_mod.resolve("nn-web", cfg)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(jobs_mod.ensure(job, workspace)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["nn-web"]
    assert results[0] == results[1] and results[0].read_text() == "built"
    assert jobs_mod.artifact_path(job, workspace) == results[0]
    # An artifact deleted by hand is no longer "built": the next ensure builds it again.
    results[0].unlink()
    assert jobs_mod.artifact_path(job, workspace) is None
    jobs_mod.ensure(job, workspace)
    assert calls == ["nn-web", "nn-web"]


def test_implicit_jobs_change_with_their_builders_settings(monkeypatch):
    """A new inspector or world-CLIP recipe (code version, network, training) is a new job."""
    from lafite import helper_keys

    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    cfg = spec.resolve(spec.row("LAFITE_G"), "smoke")
    before = {j.kind: j.hash for j in jobs_mod.needed_jobs(cfg)}
    assert set(before) == {"world-clip", "inspector"}
    monkeypatch.setattr(helper_keys, "INSPECTOR_VERSION", "inspector-test-bump")
    after = {j.kind: j.hash for j in jobs_mod.needed_jobs(cfg)}
    assert after["inspector"] != before["inspector"]
    assert after["world-clip"] == before["world-clip"]


def test_a_new_world_clip_recipe_makes_new_runs_and_inference_models(monkeypatch):
    """Runs and the jobs trained in the CLIP's feature space (LAFITE_NN's inference model) are
    named after the world CLIP's recipe too: finished results made with an older CLIP are not
    taken for the new one's."""
    from lafite import helper_keys

    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    rows = ["LAFITE_G", "LAFITE_NN"]
    before = [p.hash for p in spec_mod.plan(spec, "smoke", rows=rows)]
    nn_cfg = spec.resolve(spec.row("LAFITE_NN"), "smoke")
    nn_before = jobs_mod.resolve("nn-web", nn_cfg).hash
    paper_before = [p.hash for p in spec_mod.plan(spec, "paper", rows=rows)]
    longer = helper_keys.WorldClipTraining(steps=801)
    monkeypatch.setitem(helper_keys._TRAINING_BY_RESOLUTION, 16, longer)
    after = [p.hash for p in spec_mod.plan(spec, "smoke", rows=rows)]
    assert after[0] != before[0] and after[1] != before[1]
    assert jobs_mod.resolve("nn-web", nn_cfg).hash != nn_before
    assert [p.hash for p in spec_mod.plan(spec, "paper", rows=rows)] == paper_before


def test_preflight_names_the_missing_dataset(workspace, tmp_path):
    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    full = runner.make_plan(spec, "paper", rows=["LAFITE_G"])
    missing = tmp_path / "no-data-here"
    cfg = full.runs[0].config.override({"data.data_root": str(missing)})
    patched = runner.FullPlan(
        spec, "paper", [spec_mod.PlannedRun("table5", full.runs[0].row, "paper", 0, cfg, "h")],
        [], {},
    )
    with pytest.raises(UserError, match=r"coco2014.*not found at .*no-data-here"):
        runner.preflight(patched, workspace)


def test_a_failed_pretraining_job_stops_the_table_and_records_nothing(
        tmp_path, tiny_models, monkeypatch):
    import shutil

    from lafite.workspace import Workspace

    home = tmp_path / "ws"
    shutil.copytree(tiny_models, home / "models")
    workspace = Workspace.resolve(home)

    def broken(job, ws, folder, progress):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(jobs_mod.BUILDERS, "generator", broken)
    spec = spec_mod.find("table2")
    with pytest.raises(UserError) as info:
        runner.run_spec(spec, "smoke", workspace, quiet=True)
    message = str(info.value)
    assert "job 'pretrain-cc3m' (generator" in message and "simulated" in message
    assert "Nothing was recorded for the rows that need it (LAFITE)" in message
    from lafite.tracking import Tracker

    tracker = Tracker(workspace)
    assert tracker.experiment_id("table2", create=False) is None or not len(
        tracker.runs_frame("table2", status=None))


def test_preflight_checks_an_init_checkpoint_before_anything_runs(workspace, tmp_path):
    spec = spec_mod.find("table5")
    full = runner.make_plan(spec, "smoke", rows=["LAFITE_G"],
                            extra={"train.init_checkpoint": str(tmp_path / "gone.pt")})
    with pytest.raises(UserError, match=r"gone\.pt does not exist \(train\.init_checkpoint\)"):
        runner.preflight(full, workspace)


# -- finished runs whose final checkpoint was damaged afterwards ---------------------------------


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """run_spec with training replaced by writing a small checkpoint (and no jobs to build)."""
    import torch

    from lafite import train
    from lafite.checkpoint import CHECKPOINT_NAME, save_atomic

    trained = []

    def fake_train_run(cfg, run_dir, workspace, callbacks=None, **extra):
        trained.append(Path(run_dir))
        path = save_atomic({"format": 1, "finished": True, "w": torch.arange(20000.0)},
                           Path(run_dir) / CHECKPOINT_NAME)
        callbacks.on_evaluate(1.0, {"fid": 1.0})
        return train.TrainResult(final_checkpoint=path, kimg=1.0, steps=1, resumed_from=None)

    artifact = tmp_path / "job-artifact"
    artifact.write_text("built")
    monkeypatch.setattr(train, "train_run", fake_train_run)
    monkeypatch.setattr(jobs_mod, "artifact_path", lambda job, workspace: artifact)
    return trained


def _run_g(workspace, **kwargs):
    return runner.run_spec(spec_mod.find("table5"), "smoke", workspace, rows=["LAFITE_G"],
                           seeds=1, quiet=True, **kwargs)


def test_damaged_final_checkpoint_is_named_and_retrained_on_request(workspace, fake_training):
    from lafite.checkpoint import file_fingerprint
    from lafite.tracking import (
        FAILED,
        TAG_CHECKPOINT,
        TAG_CHECKPOINT_SHA256,
        TAG_CHECKPOINT_SIZE,
        TAG_DAMAGED,
        Tracker,
    )

    first = _run_g(workspace)
    assert [o.status for o in first.outcomes] == ["trained"]
    tracker = Tracker(workspace)
    tags = tracker.client.get_run(first.outcomes[0].run_id).data.tags
    checkpoint = Path(tags[TAG_CHECKPOINT])
    size, sha256 = file_fingerprint(checkpoint)
    assert (tags[TAG_CHECKPOINT_SIZE], tags[TAG_CHECKPOINT_SHA256]) == (str(size), sha256)
    assert [o.status for o in _run_g(workspace).outcomes] == ["skipped"]

    checkpoint.write_bytes(checkpoint.read_bytes()[: size // 2])  # truncated later
    with pytest.raises(UserError) as info:
        _run_g(workspace)
    message = str(info.value)
    assert "LAFITE_G seed 0" in message and str(checkpoint) in message
    assert f"{size:,} were recorded" in message and "--retrain-damaged" in message
    assert len(fake_training) == 1  # nothing trained, nothing skipped silently
    with pytest.raises(UserError, match=r"the final checkpoint .* were recorded .*`lafite-repro "
                                        r"run table5 --scale smoke`.*--retrain-damaged"):
        tracker.run_checkpoint(first.outcomes[0].run_id)  # what evaluate and generate read

    again = _run_g(workspace, retrain_damaged=True)
    (outcome,) = again.outcomes
    assert outcome.status == "retrained" and outcome.run_id != first.outcomes[0].run_id
    assert len(fake_training) == 2 and checkpoint.stat().st_size == size
    (aside,) = checkpoint.parent.parent.glob(f"{checkpoint.parent.name}.damaged-*")
    assert (aside / checkpoint.name).stat().st_size == size // 2  # kept, not deleted
    old = tracker.client.get_run(first.outcomes[0].run_id)
    assert old.info.status == FAILED and "truncated" in old.data.tags[TAG_DAMAGED]
    assert list(tracker.runs_frame("table5", "smoke", status=None)["run_id"]) == [outcome.run_id]
    with pytest.raises(UserError, match="this run was retired because final checkpoint"):
        tracker.run_checkpoint(first.outcomes[0].run_id)
    assert tracker.run_checkpoint(outcome.run_id) == checkpoint
    assert [o.status for o in _run_g(workspace).outcomes] == ["skipped"]


def test_same_size_corruption_is_found_with_verify(workspace, fake_training):
    first = _run_g(workspace)
    from lafite.tracking import TAG_CHECKPOINT, Tracker

    checkpoint = Path(Tracker(workspace).client.get_run(first.outcomes[0].run_id)
                      .data.tags[TAG_CHECKPOINT])
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    assert [o.status for o in _run_g(workspace).outcomes] == ["skipped"]  # cheap checks only
    with pytest.raises(UserError, match=r"LAFITE_G seed 0 .*not the recorded sha256"):
        _run_g(workspace, verify=True)


def test_runs_finished_before_sizes_were_recorded(workspace, fake_training):
    """No recorded size: trusted unless missing, empty or not a zip archive."""
    from lafite.tracking import TAG_CHECKPOINT, TAG_CHECKPOINT_SHA256, TAG_CHECKPOINT_SIZE, Tracker

    run_id = _run_g(workspace).outcomes[0].run_id
    client = Tracker(workspace).client
    client.delete_tag(run_id, TAG_CHECKPOINT_SIZE)
    client.delete_tag(run_id, TAG_CHECKPOINT_SHA256)
    checkpoint = Path(client.get_run(run_id).data.tags[TAG_CHECKPOINT])
    assert [o.status for o in _run_g(workspace, verify=True).outcomes] == ["skipped"]
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    assert [o.status for o in _run_g(workspace).outcomes] == ["skipped"]
    with pytest.raises(UserError, match="does not match its CRC"):
        _run_g(workspace, verify=True)
    checkpoint.write_bytes(b"")
    with pytest.raises(UserError, match=r"is empty \(0 bytes\)"):
        _run_g(workspace)
    checkpoint.unlink()  # the old advice: delete it. Now that leads to a retraining.
    with pytest.raises(UserError, match="is missing"):
        _run_g(workspace)
    assert [o.status for o in _run_g(workspace, retrain_damaged=True).outcomes] == ["retrained"]


def test_cli_run_reports_damage_with_exit_2_and_retrains_with_the_flag(workspace, fake_training):
    from click.testing import CliRunner

    from lafite.cli import main

    args = ["--home", str(workspace.root), "run", "table5", "--scale", "smoke",
            "--rows", "LAFITE_G", "--seeds", "1", "--quiet"]
    cli = CliRunner()
    assert cli.invoke(main, args).exit_code == 0
    (checkpoint,) = workspace.runs_dir.glob("*/checkpoint.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    result = cli.invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: table5 (smoke)" in result.output and str(checkpoint) in result.output
    result = cli.invoke(main, [*args, "--retrain-damaged", "--verify"])
    assert result.exit_code == 0, result.output
    assert "1 retrained" in result.output


def test_a_finished_table_reruns_without_mlflow_or_torch(workspace, fake_training):
    from lafite.tracking import Tracker

    first = _run_g(workspace)
    full = runner.make_plan(spec_mod.find("table5"), "smoke", 1, ["LAFITE_G"], None)
    fast = runner.finished_without_mlflow(full, workspace, None)
    record = Tracker(workspace).find_child("table5", full.runs[0].hash)
    assert [(o.status, o.run_id) for o in fast.outcomes] == [("skipped", record.run_id)]
    assert record.run_id == first.outcomes[0].run_id
    # A row not yet run, or a server store, is not answered here: MLflow decides.
    everything = runner.make_plan(spec_mod.find("table5"), "smoke", 1, None, None)
    assert runner.finished_without_mlflow(everything, workspace, None) is None
    assert runner.finished_without_mlflow(full, workspace, "http://127.0.0.1:9") is None
    script = (
        "import sys\n"
        "from lafite import runner, spec\n"
        "from lafite.workspace import Workspace\n"
        f"s = runner.run_spec(spec.find('table5'), 'smoke', Workspace.resolve({str(workspace.root)!r}),"
        " rows=['LAFITE_G'], seeds=1, quiet=True)\n"
        "print([o.status for o in s.outcomes], 'mlflow' in sys.modules, 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.stdout.strip() == "['skipped'] False False", done.stderr[-2000:]
