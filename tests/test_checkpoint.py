"""Checkpoint files: atomic replacement, weights_only loading, RNG states round-trip."""

import random

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
    with pytest.raises(UserError, match="delete it"):
        load_checkpoint(bad)
