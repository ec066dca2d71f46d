"""One blocking inter-process file lock, for find-or-create steps shared by processes.

``fcntl.flock`` on a file in the workspace: the kernel drops the lock when its holder dies, so a
killed process never leaves it held. Processes on other machines must share a filesystem that
supports flock (NFS v4 does) for it to serialise them.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[Callable[[], None]]:
    """Hold the lock on ``path`` (created if missing) for the block; the yielded function
    releases it early, for holders that are done before the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        held = True
        fcntl.flock(handle, fcntl.LOCK_EX)

        def release() -> None:
            nonlocal held
            if held:
                held = False
                fcntl.flock(handle, fcntl.LOCK_UN)

        try:
            yield release
        finally:
            release()
