"""Checkpoint files of a training run: atomic writes, safe loads, RNG states as tensors.

A checkpoint must survive a SIGKILL at any instant and must be loadable with
``torch.load(weights_only=True)`` (no pickled code runs when a checkpoint is opened). So a
checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the
old one (``os.replace`` is atomic on POSIX), and it holds only tensors and plain containers of
numbers and strings. Random-number-generator states, which Python and NumPy expose as tuples of
arbitrary objects, are converted to tensors here and back.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lafite.atomic import atomic_write
from lafite.errors import UserError

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` so that a reader sees either the old file or the new one."""
    import torch

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


WEIGHTS_ONLY_CONTENTS = "tensors, numbers, strings, lists, dicts"


def weights_only_refusal(exc: BaseException, path: Path | str) -> str | None:
    """Why ``torch.load(weights_only=True)`` refused ``path`` because of what it stores, in a
    few words; None when ``exc`` is no such refusal (an unreadable file, see :func:`read_cause`).

    torch's own message advises retrying with ``weights_only=False``: for a file from elsewhere
    that is the path that runs code stored in the file, so it is never repeated to the user.
    """
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it stores the Python object {found.group(1)}"
    if "Unsupported operand" in text:  # not torch's format: a plain pickle, or no pickle at all
        name = _pickled_global(Path(path))
        return f"it is a plain pickle that stores the Python object {name}" if name else None
    if re.search(r"Can only|unrecognized function|unsupported class", text, re.I):
        return "it stores Python objects that are not weights"
    return None


def _pickled_global(path: Path) -> str | None:
    """The first Python object (module.name) a plain pickle refers to, found by parsing its
    opcodes with pickletools (nothing is unpickled); None for a pickle of plain data or a file
    that is no pickle."""
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    return arg.replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return ".".join(strings[-2:])
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a pickle: nothing to name
        return None
    return None


def read_cause(exc: BaseException) -> str:
    """A file torch could not read, in a few words (torch's messages run to paragraphs)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported operand" in text:
        return "not a file written by torch.save"
    if isinstance(exc, EOFError):
        return "the file ends early"
    return f"{type(exc).__name__}: {text.split('. ')[0]}"[:300] if text else type(exc).__name__


def refused_message(path: Path | str, reason: str) -> str:
    return (
        f"{path} holds objects other than weights ({WEIGHTS_ONLY_CONTENTS}) and is refused: "
        f"{reason}, and loading such a file can run code stored in it"
    )


def read_weights_only(path: Path, map_location: str | torch.device = "cpu", **kwargs: Any) -> Any:
    """``torch.load(weights_only=True)`` without torch's pickle-protocol warning (noise for a
    file about to be refused or read anyway)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        import torch

        return torch.load(path, map_location=map_location, weights_only=True, **kwargs)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; an unreadable file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist: train its run first (or, if the run had finished, "
            "restore the file from a backup or retrain the run with `lafite-repro run TABLE "
            "--retrain-damaged`)"
        )
    if not zipfile.is_zipfile(path):
        # An authors' checkpoint (an official StyleGAN2-ADA snapshot) is read by the importer,
        # which runs none of the code stored in it (lafite/importer.py).
        from lafite.importer import checkpoint_from_snapshot, is_official_snapshot

        if is_official_snapshot(path):
            return checkpoint_from_snapshot(path)
    try:
        state = read_weights_only(path, map_location)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        refusal = weights_only_refusal(exc, path)
        if refusal is not None:
            raise UserError(
                f"checkpoint {refused_message(path, refusal)}. Give a checkpoint written by "
                "lafite-repro (a run folder's checkpoint.pt)"
            ) from None
        raise UserError(
            f"checkpoint {path} cannot be read ({read_cause(exc)}). Restore it from "
            "a backup, or train its run again from scratch: for a finished run of a table, "
            "`lafite-repro run TABLE --retrain-damaged`; for an unfinished one, delete the file "
            "and run the same command again"
        ) from exc
    if not isinstance(state, dict) or "format" not in state:
        raise UserError(f"{path} is not a lafite-repro checkpoint (no 'format' entry)")
    return state


# -- integrity of a finished run's file ---------------------------------------------------------


def file_fingerprint(path: Path) -> tuple[int, str]:
    """Size in bytes and sha256 (hex) of a file, recorded with a run when it finishes."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return os.fstat(handle.fileno()).st_size, digest


def checkpoint_problem(path: Path, size: int | None = None, sha256: str | None = None,
                       verify: bool = False) -> str | None:
    """What is wrong with a finished run's checkpoint, in words that follow its path; None when
    nothing is found.

    Without ``verify`` only cheap checks are made (the file exists, has the recorded size and
    ends with a zip directory, as every ``torch.save`` file does); nothing is read through.
    ``verify`` also reads the whole file: its sha256 against the recorded one, or, for runs
    recorded before sizes and checksums were, the CRC of every entry of the zip archive.
    """
    path = Path(path)
    try:
        if not path.exists():
            return "is missing"
        if not path.is_file():
            return "is not a file"
        actual = path.stat().st_size
        if size is not None and actual != size:
            return (f"is {actual:,} bytes, but {size:,} were recorded when the run finished "
                    "(truncated or overwritten)")
        if actual == 0:
            return "is empty (0 bytes)"
        if not zipfile.is_zipfile(path):
            return "is not a complete checkpoint (no zip directory at its end: truncated?)"
        if not verify:
            return None
        if sha256:
            if file_fingerprint(path)[1] != sha256:
                return ("has the recorded size but not the recorded sha256: its content changed "
                        "after the run finished")
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"is corrupted (entry {bad} does not match its CRC)"
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"cannot be read ({type(exc).__name__}: {exc})"
    return None


# -- random number generator states ----------------------------------------------------------


def capture_rng_states() -> dict[str, Any]:
    """The global torch, CUDA, NumPy and Python RNG states, as tensors and numbers."""
    import torch

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
    import torch

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
    "WEIGHTS_ONLY_CONTENTS",
    "capture_rng_states",
    "checkpoint_problem",
    "file_fingerprint",
    "load_checkpoint",
    "read_cause",
    "read_weights_only",
    "refused_message",
    "restore_rng_states",
    "save_atomic",
    "weights_only_refusal",
]
