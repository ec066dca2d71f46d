"""Shared test setup: offline, quiet, and every test in its own workspace."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home-unused"))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace folder, also exported as LAFITE_HOME for CLI subprocesses."""
    from lafite.workspace import Workspace

    home = tmp_path / "ws"
    monkeypatch.setenv("LAFITE_HOME", str(home))
    return Workspace.resolve(home)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread avoids OpenMP spin contention on a loaded 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
