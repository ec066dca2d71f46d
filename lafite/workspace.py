"""Where the suite keeps what it makes.

One folder (``./lafite-workspace`` by default, or ``$LAFITE_HOME``) holds the MLflow store, the
Optuna storage, the built-in world, trained helper models (the world's CLIP, its inspector,
inference models), the feature cache and the checkpoints. Everything that needs a path asks a
:class:`Workspace`, so tests can point the whole suite at a temporary folder.

The caches (CLIP features of the datasets, FID reference statistics) are in ``<workspace>/cache``
unless ``$LAFITE_CACHE`` names another folder: on a cluster, one cache folder on a shared file
system serves every user's workspace and job, and each dataset's features are computed once.
Every cache file is keyed by what it was computed from (dataset fingerprint, model weights,
protocol), so sharing it is safe.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from lafite.errors import UserError

DEFAULT_HOME = "lafite-workspace"
CACHE_ENV = "LAFITE_CACHE"
_CHOOSE = "choose another workspace folder with --home DIR or LAFITE_HOME=DIR"


class WorkspaceError(UserError):
    """The workspace folder cannot be created or written to."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    # A cache folder outside the workspace (``$LAFITE_CACHE``), e.g. shared by a cluster.
    cache_root: Path | None = None

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None,
                cache: str | os.PathLike | None = None) -> Workspace:
        """The workspace named by ``home``, else ``$LAFITE_HOME``, else ``./lafite-workspace``;
        its caches in ``cache``, else ``$LAFITE_CACHE``, else ``<workspace>/cache``."""
        chosen = home or os.environ.get("LAFITE_HOME") or DEFAULT_HOME
        shared = cache or os.environ.get(CACHE_ENV) or None
        return cls(Path(chosen).expanduser().resolve(),
                   Path(shared).expanduser().resolve() if shared else None)

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
        """Feature caches (CLIP features, reference statistics): ``<workspace>/cache``, or the
        folder ``$LAFITE_CACHE`` names."""
        if self.cache_root is None:
            return self._dir("cache")
        return _shared_dir(self.cache_root)

    @property
    def runs_dir(self) -> Path:
        """One folder per training run (checkpoints, samples), named by the config hash."""
        return self._dir("runs")

    @property
    def locks_dir(self) -> Path:
        return self._dir("locks")


def _shared_dir(path: Path) -> Path:
    """The shared cache folder, created and writable, or one message naming it."""
    fix = f"fix it, or unset {CACHE_ENV} to keep the caches in the workspace"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WorkspaceError(f"cannot use the cache folder {path} ({CACHE_ENV}): it is a file, "
                             f"not a folder; {fix}") from None
    except OSError as exc:
        raise WorkspaceError(f"cannot create the cache folder {path} ({CACHE_ENV}): "
                             f"{exc.strerror or exc}; {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkspaceError(f"cannot write to the cache folder {path} ({CACHE_ENV}): "
                             f"permission denied; {fix}")
    return path


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
