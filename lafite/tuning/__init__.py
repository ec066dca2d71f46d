"""Hyper-parameter studies: Optuna searches over xi, tau, lambda and gamma, recorded in MLflow.

The official code's authors say that the loss weights and the R1 weight "might be sensitive" to
each dataset and suggest searching them (reference/official-lafite.md sections 1.3 and 9). A study
is declared in ``experiments/studies/<id>.yaml``: a base row of an experiment spec, what the study
changes in it (``set``), the search space (dotted RunConfig keys with a range or choices), the
objectives (metric names; their direction comes from the metric registry), the number of trials,
the sampler and the pruner, and per-scale overrides (how often a trial is evaluated, which is
what the pruner sees).

This is the only module that imports optuna. Design choices, each for a reason:

- **Storage.** SQLite in the workspace by default; any SQLAlchemy URL Optuna's ``RDBStorage``
  accepts; or a journal file path (``JournalStorage``) for file systems where SQLite's locking is
  unsafe (NFS). RDB storages get heartbeats, so a trial whose worker died is marked FAIL once its
  heartbeat is older than the grace period and re-queued (``RetryHeartbeatStaleTrialCallback``)
  with the same parameters; the retry resumes the dead trial's checkpoint. Journal storages have
  no heartbeats (an Optuna limitation): a dead worker's trial stays RUNNING there.
- **Exactly N trials.** A study runs until ``trials`` trials are COMPLETE or PRUNED; failed ones do
  not count and are re-queued once per invocation. Workers on one machine take a file lock around
  "count, then ask for a trial", so K workers never overshoot N (workers on several machines share
  no lock and may overshoot by at most one trial each).
- **Pruning.** Training's periodic evaluation reports the objective with ``trial.report(value,
  step=images seen)``; when the pruner says so, the evaluation callback raises
  ``optuna.TrialPruned``, which ``train_run`` propagates (it does not catch callback exceptions),
  so training stops at once with its last checkpoint intact. Optuna cannot prune
  multi-objective studies, so a study with two objectives must say ``pruner: {name: none}``.
- **Run folders.** A trial trains in ``<workspace>/runs/tune/<study name>-<random id>/trial-N``;
  the id is stored in the Optuna study, so two same-named studies in two storages never resume
  each other's checkpoints, while a retry of a dead trial resumes its own.
- **MLflow.** One experiment ``tune-<id>`` per study, a parent run per scale (reused by every
  invocation, like the runner's), one child run per trial with the trial's full configuration,
  its evaluation curve and its state (``lafite.trial.state``: COMPLETE, PRUNED or FAIL). The
  summary (best trials, parameter importances, optimisation history, slice plots, evaluation
  curves, the trials table) goes to the parent run's ``study/`` artifacts and to
  ``<workspace>/tuning/<study name>/``.
"""

from lafite.tuning.artifacts import write_study_artifacts
from lafite.tuning.definitions import (
    Objective,
    SearchParam,
    StudyDefinition,
    StudyError,
    find_study,
    load_studies,
    load_study_file,
    parse_study,
    study_files,
)
from lafite.tuning.reading import (
    best_trials,
    describe_study,
    load_existing_study,
    row_entry,
    row_snippet,
)
from lafite.tuning.running import StudySummary, WorkerArgs, run_study, work
from lafite.tuning.running import _requeue_failed as _requeue_failed  # for the tests
from lafite.tuning.storage import default_storage, open_storage

__all__ = [
    "Objective",
    "SearchParam",
    "StudyDefinition",
    "StudyError",
    "StudySummary",
    "WorkerArgs",
    "best_trials",
    "default_storage",
    "describe_study",
    "find_study",
    "load_existing_study",
    "load_studies",
    "load_study_file",
    "open_storage",
    "parse_study",
    "row_entry",
    "row_snippet",
    "run_study",
    "study_files",
    "work",
    "write_study_artifacts",
]
