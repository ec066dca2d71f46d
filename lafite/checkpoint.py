"""Checkpoint files of a training run: atomic writes, safe loads, RNG states as tensors.

A checkpoint must survive a SIGKILL at any instant and must be loadable with
``torch.load(weights_only=True)`` (no pickled code runs when a checkpoint is opened). So a
checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the
old one (``os.replace`` is atomic on POSIX), and it holds only tensors and plain containers of
numbers and strings. Random-number-generator states, which Python and NumPy expose as tuples of
arbitrary objects, are converted to tensors here and back.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lafite.atomic import atomic_write
from lafite.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` so that a reader sees either the old file or the new one."""
    path = atomic_write(path, lambda handle: torch.save(state, handle))
    # The rename is durable only once the folder entry is on disk.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; an unreadable file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train the run first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise UserError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to "
            "restart the run from scratch, or restore it from a backup"
        ) from exc
    if not isinstance(state, dict) or "format" not in state:
        raise UserError(f"{path} is not a lafite-repro checkpoint (no 'format' entry)")
    return state


# -- random number generator states ----------------------------------------------------------


def capture_rng_states() -> dict[str, Any]:
    """The global torch, CUDA, NumPy and Python RNG states, as tensors and numbers."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(int(v) for v in python_state["internal"].tolist()),
            python_state["gauss_next"],
        )
    )
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        usable = cuda_states[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in usable])


__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng_states",
    "load_checkpoint",
    "restore_rng_states",
    "save_atomic",
]
