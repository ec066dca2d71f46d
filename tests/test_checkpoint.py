"""Checkpoint files: atomic replacement, weights_only loading, RNG states round-trip."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lafite.checkpoint import capture_rng_states, load_checkpoint, restore_rng_states, save_atomic
from lafite.errors import UserError


def test_rng_states_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    saved = capture_rng_states()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    path = save_atomic({"format": 1, "rng": saved}, tmp_path / "ck.pt")
    loaded = load_checkpoint(path)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_states(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_atomic({"format": 1, "step": 1}, path)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_atomic({"format": 1, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_corrupt_or_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"bad\.pt cannot be read .*--retrain-damaged.*delete"):
        load_checkpoint(bad)


class _Payload:
    """Unpickling this would create a file: the proof that a refused checkpoint ran nothing."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_holding_other_objects_is_refused_without_unsafe_advice(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "payload-ran")
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": 1, "G": {"w": torch.zeros(2)}, "extra": payload}, foreign)
    with pytest.raises(UserError) as info:
        load_checkpoint(foreign)
    message = str(info.value)
    assert str(foreign) in message and "holds objects other than weights" in message
    assert "tensors, numbers, strings, lists, dicts" in message and "refused" in message
    assert "weights_only" not in message and "likely succeed" not in message
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match=r"plain\.pkl holds objects other than weights .*refused: "
                                        r"it is a plain pickle that stores the Python object"):
        load_checkpoint(plain)
    assert not (tmp_path / "payload-ran").exists()


def test_checkpoint_problem_cheap_checks_and_verify(tmp_path):
    from lafite.checkpoint import checkpoint_problem, file_fingerprint

    path = save_atomic({"format": 1, "w": torch.arange(5000.0)}, tmp_path / "ck.pt")
    size, sha256 = file_fingerprint(path)
    assert checkpoint_problem(path, size, sha256, verify=True) is None
    assert checkpoint_problem(path) is None and checkpoint_problem(path, verify=True) is None
    assert checkpoint_problem(tmp_path / "gone.pt", size, sha256) == "is missing"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert "were recorded" in checkpoint_problem(path, size, sha256)
    assert "no zip directory" in checkpoint_problem(path)  # no size recorded: still found
    path.write_bytes(b"")
    assert checkpoint_problem(path) == "is empty (0 bytes)"
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(changed))
    assert checkpoint_problem(path, size, sha256) is None  # same size: only reading finds it
    assert "sha256" in checkpoint_problem(path, size, sha256, verify=True)
    assert "CRC" in checkpoint_problem(path, verify=True)


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from _train_smoke import smoke_config, tiny_clip
from lafite.train import TrainCallbacks, train_run
from lafite.workspace import Workspace

def hang_after_first(path):
    open({marker!r}, "w").write("checkpoint written")
    time.sleep(600)  # the parent kills us here, mid-run

train_run(smoke_config(), {run_dir!r}, Workspace.resolve({ws!r}),
          TrainCallbacks(on_checkpoint=hang_after_first), clip=tiny_clip())
"""


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_and_matches(workspace, tmp_path):
    """A training process killed mid-run resumes from its checkpoint and ends bit-identical.

    Slow because the child process imports torch and open_clip (about 25 s of wall time on an
    idle 2-core machine, 100 s under load); the default run checks the same resume logic in
    process (tests/test_train.py::test_stopped_and_resumed_run_ends_with_the_uninterrupted_weights).
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from _train_smoke import smoke_config, tiny_clip

    from lafite.train import train_run

    torch.set_num_threads(1)
    clip = tiny_clip()
    run_dir, marker = tmp_path / "killed", tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), marker=str(marker),
                                   run_dir=str(run_dir), ws=str(workspace.root)))
    child = subprocess.Popen([sys.executable, str(script)], env={**os.environ},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "child never wrote a checkpoint"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = train_run(smoke_config(), run_dir, workspace, clip=clip)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    straight = train_run(smoke_config(), tmp_path / "straight", workspace, clip=clip)
    _assert_equal_weights(straight.final_checkpoint, resumed.final_checkpoint)


def _assert_equal_weights(path_a, path_b):
    a = torch.load(path_a, map_location="cpu", weights_only=True)
    b = torch.load(path_b, map_location="cpu", weights_only=True)
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs"
