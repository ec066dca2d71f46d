"""Where the suite keeps what it makes.

One folder (``./lafite-workspace`` by default, or ``$LAFITE_HOME``) holds the MLflow store, the
Optuna storage, the built-in world, trained helper models (the world's CLIP, its inspector,
inference models), the feature cache and the checkpoints. Everything that needs a path asks a
:class:`Workspace`, so tests can point the whole suite at a temporary folder.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from lafite.errors import UserError

DEFAULT_HOME = "lafite-workspace"
_CHOOSE = "choose another workspace folder with --home DIR or LAFITE_HOME=DIR"


class WorkspaceError(UserError):
    """The workspace folder cannot be created or written to."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> Workspace:
        """The workspace named by ``home``, else ``$LAFITE_HOME``, else ``./lafite-workspace``."""
        chosen = home or os.environ.get("LAFITE_HOME") or DEFAULT_HOME
        return cls(Path(chosen).expanduser().resolve())

    def check(self) -> Workspace:
        """This workspace, once its folder exists and is writable (WorkspaceError if not)."""
        self._dir()
        return self

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(self._problem(path, exc)) from None
        # An existing read-only folder lets mkdir pass; the first write would fail much later.
        if not os.access(path, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only_mount(path) else errno.EACCES
            raise WorkspaceError(self._problem(path, OSError(code, os.strerror(code))))
        return path

    def _problem(self, path: Path, exc: OSError) -> str:
        what = (f"the workspace folder {self.root}" if path == self.root
                else f"{path} in the workspace folder {self.root}")
        blocker = next((p for p in (path, *path.parents) if _exists(p) and not p.is_dir()), None)
        if blocker is not None:
            return (f"cannot create {what}: {blocker} is a file, not a folder. Move the file "
                    f"away, or {_CHOOSE}")
        if exc.errno == errno.EROFS:
            return f"cannot write to {what}: it is on a read-only file system; {_CHOOSE}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            place = next((p for p in (path, *path.parents) if _exists(p)), path)
            return (f"cannot write to {what}: permission denied on {place}. Make it writable "
                    f"(chmod u+w {place}), or {_CHOOSE}")
        return f"cannot create {what}: {exc.strerror or exc}. Fix the path, or {_CHOOSE}"

    @property
    def mlflow_db(self) -> Path:
        self._dir()
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self._dir("mlartifacts")

    @property
    def optuna_db(self) -> Path:
        self._dir()
        return self.root / "optuna.db"

    @property
    def world_dir(self) -> Path:
        """Materialised world datasets (PNG + .txt folders)."""
        return self._dir("world")

    @property
    def models_dir(self) -> Path:
        """Trained helper models: the world's CLIP, the inspector, inference models."""
        return self._dir("models")

    @property
    def cache_dir(self) -> Path:
        """Feature caches (CLIP features, reference statistics)."""
        return self._dir("cache")

    @property
    def runs_dir(self) -> Path:
        """One folder per training run (checkpoints, samples), named by the config hash."""
        return self._dir("runs")

    @property
    def locks_dir(self) -> Path:
        return self._dir("locks")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a parent that may not be searched: treat as absent
        return False


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
