"""Where the suite keeps what it makes.

One folder (``./lafite-workspace`` by default, or ``$LAFITE_HOME``) holds the MLflow store, the
Optuna storage, the built-in world, trained helper models (the world's CLIP, its inspector,
inference models), the feature cache and the checkpoints. Everything that needs a path asks a
:class:`Workspace`, so tests can point the whole suite at a temporary folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "lafite-workspace"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> Workspace:
        """The workspace named by ``home``, else ``$LAFITE_HOME``, else ``./lafite-workspace``."""
        chosen = home or os.environ.get("LAFITE_HOME") or DEFAULT_HOME
        return cls(Path(chosen).expanduser().resolve())

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

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
