"""Running a study: local and SLURM workers, locks, failed trials, and each trial's training."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lafite.config import RunConfig
from lafite.errors import UserError
from lafite.locks import exclusive
from lafite.tuning.artifacts import write_study_artifacts
from lafite.tuning.definitions import (
    ATTR_KIMG,
    ATTR_MLFLOW,
    ATTR_RETRIES,
    ATTR_RETRY_OF,
    ATTR_RUN_DIR,
    ATTR_RUN_FOLDER,
    ATTR_STEPS,
    ATTR_WORKER,
    COUNTED,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    MAX_RETRIES,
    TAG_OPTUNA_STUDY,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    StudyDefinition,
    find_study,
    load_study_file,
    report_step,
)
from lafite.tuning.reading import _inline, _trial_entry, best_trials, load_existing_study
from lafite.tuning.storage import (
    _create_or_load,
    _heartbeats,
    default_storage,
    open_storage,
    storage_label,
)
from lafite.workspace import Workspace

# -- running -----------------------------------------------------------------------------------


@dataclass
class WorkerArgs:
    """Everything a worker process needs (JSON-serialisable: it crosses a process boundary)."""

    study_path: str
    scale: str
    workspace: str
    storage: str
    target: int
    parent_run_id: str
    tracking_uri: str | None
    quiet: bool
    heartbeat_interval: int
    grace_period: int
    seed_offset: int
    poll_seconds: float = 2.0


@dataclass
class StudySummary:
    """What ``run_study`` did and where the study stands."""

    study_id: str
    study_name: str
    scale: str
    storage: str
    target: int
    directions: list[str]
    objectives: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)
    budget_steps: int = 0
    parent_run_id: str = ""
    artifacts_dir: str = ""
    dry_run: bool = False
    worker_exit_codes: list[int] = field(default_factory=list)
    worker_job_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)

    def line(self) -> str:
        states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(self.counts.items()) if v)
        best = ""
        if self.best:
            b = self.best[0]
            values = ", ".join(f"{m}={v:.4g}" for m, v in zip(self.objectives, b["values"]))
            best = f"; best: trial {b['number']} ({values})"
        return (f"study {self.study_name}: {self.finished}/{self.target} trials done "
                f"({states or 'none'}); {self.budget_steps} training iterations{best}")


def run_study(
    study_id: str,
    workspace: Workspace,
    scale: str = "mini",
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    tracking_uri: str | None = None,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    console: Any = None,
    slurm: Any = None,
    wait: bool = False,
) -> StudySummary:
    """Run (or continue) a study until ``trials`` trials are COMPLETE or PRUNED.

    ``workers`` processes share the study (this one and ``workers - 1`` started with
    ``python -m lafite.tuning``). Running the same call again continues the study: failed
    trials are re-queued with their parameters, and a trial whose worker died is failed and
    retried once its heartbeat is older than ``grace_period`` seconds.

    With ``slurm`` (SlurmSettings) the ``workers`` are SLURM jobs instead, sharing a storage
    every node reaches (PostgreSQL, or a journal file on a shared file system); the command
    returns once they are submitted, or with ``wait`` when they have left the queue.
    """
    from rich.console import Console

    console = console or Console(stderr=True, quiet=quiet)
    definition = find_study(study_id)
    target = trials if trials is not None else definition.trials
    if target < 1:
        raise UserError(f"--trials must be at least 1, got {target}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    base = definition.base_config(scale)
    summary = StudySummary(
        definition.id, definition.study_name(scale), scale,
        storage_label(storage or default_storage(workspace)), target,
        [o.direction for o in definition.objectives], [o.metric for o in definition.objectives],
        dry_run=dry_run,
    )
    if dry_run:
        _print_plan(definition, scale, base, summary, workspace, storage, workers, console)
        return summary

    from lafite import jobs as jobs_mod
    from lafite.tracking import FAILED, FINISHED, KILLED, Tracker

    if slurm is not None:
        from lafite.launch import slurm as slurm_mod

        if storage is None or storage.startswith("sqlite"):
            raise UserError(
                "tune --launcher slurm: the workers run on other nodes and share the study "
                "through its storage; SQLite is not safe there. Give --storage "
                "postgresql+psycopg2://USER:PASSWORD@HOST/DB (see README, 'On a SLURM "
                "cluster') or a journal file on a shared file system (--storage /shared/x.log)")
        slurm_mod.check_cluster(slurm)
    store, url = open_storage(storage, workspace, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period)
    # Both stores must be usable before the study is created or changed in any way.
    tracker = Tracker(workspace, tracking_uri)
    tracker.check()
    study = _create_or_load(definition, scale, store)
    for job in jobs_mod.needed_jobs(base):
        if jobs_mod.artifact_path(job, workspace) is None:
            console.print(f"building job {job.label} [{job.hash}] ...")
            jobs_mod.ensure(job, workspace, progress=not quiet)
    parent_id = tracker.parent_run(definition.experiment, scale)
    summary.parent_run_id = parent_id
    tracker.client.set_tag(parent_id, TAG_OPTUNA_STUDY, summary.study_name)
    tracker.client.set_tag(parent_id, "lafite.optuna.storage", summary.storage)
    tracker.client.set_tag(parent_id, TAG_STUDY, definition.id)

    with exclusive(_lock_path(workspace, summary.study_name)):
        _fail_stale(study)
        _close_dead_children(study, tracker, FAILED)
        requeued = _requeue_failed(study)
    if requeued:
        console.print(f"re-queued failed trial(s) {', '.join(map(str, requeued))}")

    args = WorkerArgs(
        study_path=str(definition.path), scale=scale, workspace=str(workspace.root),
        storage=url, target=target, parent_run_id=parent_id, tracking_uri=tracking_uri,
        quiet=quiet, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
        seed_offset=len(study.get_trials(deepcopy=False)),
    )
    children: list[subprocess.Popen] = []
    status: str | None = FAILED
    try:
        if slurm is not None:
            summary.worker_job_ids = _submit_workers(args, workers, slurm, workspace,
                                                     summary.study_name)
            if not wait:
                status = None  # the workers finish the study; the parent run stays RUNNING
                return summary
            summary.worker_exit_codes = _wait_for_workers(summary.worker_job_ids)
            status = FINISHED
            return summary
        for index in range(1, workers):
            worker_args = {**asdict(args), "seed_offset": args.seed_offset + 1000 * index}
            children.append(subprocess.Popen(
                [sys.executable, "-m", "lafite.tuning", "worker", json.dumps(worker_args)],
            ))
        work(args, console=console)
        summary.worker_exit_codes = [child.wait() for child in children]
        status = FINISHED
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT if status == KILLED else signal.SIGTERM)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        _fill_summary(summary, study, definition)
        if summary.finished < target and status == FINISHED:
            status = FAILED
        if status is not None:  # None: submitted to SLURM, whose workers record the rest
            try:
                out = workspace.root / "tuning" / summary.study_name
                write_study_artifacts(study, definition, scale, out)
                summary.artifacts_dir = str(out)
                tracker.client.log_artifacts(parent_id, str(out), "study")
                tracker.client.log_metric(parent_id, "study/finished_trials", summary.finished)
                tracker.client.log_metric(parent_id, "study/training_iterations",
                                          summary.budget_steps)
                if summary.best:
                    for metric, value in zip(summary.objectives, summary.best[0]["values"]):
                        tracker.client.log_metric(parent_id, f"study/best/{metric}", value)
            finally:
                tracker.finish_parent(parent_id, status)
    failed_workers = [code for code in summary.worker_exit_codes if code != 0]
    if failed_workers:
        console.print(f"[red]{len(failed_workers)} worker process(es) exited with an error "
                      f"(codes {failed_workers})[/red]")
    return summary


def _submit_workers(args: WorkerArgs, workers: int, settings: Any, workspace: Workspace,
                    study_name: str) -> list[str]:
    """One SLURM job per worker, each with its own sampler seed."""
    from lafite.launch import slurm as slurm_mod

    ids = []
    for index in range(workers):
        worker_args = {**asdict(args), "seed_offset": args.seed_offset + 1000 * index,
                       "quiet": True}
        submitted = slurm_mod.submit(slurm_mod.TuneWorkerTask(worker_args), settings, workspace,
                                     slurm_mod.job_name("tune", study_name, f"w{index}"))
        ids.append(submitted.job_id)
    return ids


def _wait_for_workers(job_ids: list[str], poll_seconds: float = 2.0) -> list[int]:
    """Until every worker job has left the queue; 0 for a COMPLETED job, 1 otherwise."""
    from lafite.launch import slurm as slurm_mod

    while True:
        states = slurm_mod.job_states(job_ids)
        if not any(st.active for st in states.values()):
            return [0 if states[j].state == "COMPLETED" else 1 for j in job_ids]
        time.sleep(poll_seconds)


def _lock_path(workspace: Workspace, study_name: str) -> Path:
    return workspace.locks_dir / f"tune-{study_name}.lock"


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _close_dead_children(study: optuna.Study, tracker: Any, failed: str) -> None:
    """MLflow runs of trials that Optuna failed (dead workers) are still RUNNING: close them."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(ATTR_MLFLOW)
        if not run_id:
            continue
        try:
            run = tracker.client.get_run(run_id)
        except Exception:  # deleted or in another store: nothing to close
            continue
        if run.info.status == "RUNNING":
            tracker.client.set_tag(run_id, TAG_STATE, "FAIL")
            tracker.client.set_terminated(run_id, status=failed)


def _origins(trial: FrozenTrial) -> set[int]:
    """The trials this one retries (by the heartbeat callback or by a re-run)."""
    found = set(trial.system_attrs.get("retry_history", []))
    if ATTR_RETRY_OF in trial.user_attrs:
        found.add(int(trial.user_attrs[ATTR_RETRY_OF]))
    return found


def _requeue_failed(study: optuna.Study) -> list[int]:
    """Queue each failed trial's parameters again, once, up to MAX_RETRIES per original.

    A failed trial already retried (by the heartbeat callback or by an earlier invocation) is
    not queued twice; the retry copies its user attributes, so it resumes the same run folder.
    """
    trials = study.get_trials(deepcopy=False)
    retried: set[int] = set()
    for trial in trials:
        retried |= _origins(trial)
    requeued: list[int] = []
    for trial in trials:
        if trial.state != TrialState.FAIL or trial.number in retried or not trial.params:
            continue
        depth = max(int(trial.user_attrs.get(ATTR_RETRIES, 0)),
                    len(trial.system_attrs.get("retry_history", [])))
        if depth >= MAX_RETRIES:
            continue
        attrs = {k: v for k, v in trial.user_attrs.items() if k != ATTR_MLFLOW}
        attrs.update({ATTR_RETRY_OF: trial.number, ATTR_RETRIES: depth + 1})
        study.enqueue_trial(trial.params, user_attrs=attrs)
        requeued.append(trial.number)
    return requeued


def work(args: WorkerArgs, console: Any = None) -> int:
    """One worker: take trials of the study and train them until the target is reached.

    Returns the number of trials this worker ran. Under the study's file lock it fails stale
    trials, counts, and (when more are needed) asks Optuna for a trial; the objective releases
    the lock as soon as its trial exists, so other workers see it as RUNNING when they count.
    """
    from rich.console import Console

    from lafite.tracking import Tracker

    console = console or Console(stderr=True, quiet=args.quiet)
    definition = load_study_file(args.study_path)
    workspace = Workspace.resolve(args.workspace)
    store, _ = open_storage(args.storage, workspace, heartbeat_interval=args.heartbeat_interval,
                            grace_period=args.grace_period)
    base = definition.base_config(args.scale)
    study = _create_or_load(definition, args.scale, store,
                            sampler=definition.make_sampler(args.seed_offset),
                            pruner=definition.make_pruner(base))
    tracker = Tracker(workspace, args.tracking_uri)
    lock_path = _lock_path(workspace, definition.study_name(args.scale))
    ran = 0
    consecutive_failures = 0
    while True:
        with exclusive(lock_path) as release:
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in COUNTED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done >= args.target:
                return ran
            if done + running >= args.target:
                if not _heartbeats(store):
                    return ran  # no heartbeats: cannot tell a dead worker's trial from a live one
                release()
                time.sleep(args.poll_seconds)  # another worker's last trials; retry if it dies
                continue
            objective = TrialObjective(definition, args.scale, workspace, tracker,
                                       args.parent_run_id, base, release, console,
                                       run_folder(study, args.storage))
            try:
                study.optimize(objective, n_trials=1, gc_after_trial=False)
                consecutive_failures = 0
            except UserError:
                raise
            except Exception as exc:  # recorded as a FAIL trial; the study goes on
                consecutive_failures += 1
                console.print(f"[red]trial failed:[/red] {type(exc).__name__}: {exc}")
                if consecutive_failures >= 3:
                    raise UserError(
                        f"study {definition.study_name(args.scale)}: three trials in a row "
                        f"failed (last: {type(exc).__name__}: {exc}); see the failed MLflow runs "
                        f"of experiment {definition.experiment!r}"
                    ) from exc
            ran += 1


def run_folder(study: optuna.Study, storage: str) -> str:
    """The folder (under ``<workspace>/runs/tune/``) where this study's trials train."""
    stored = study.user_attrs.get(ATTR_RUN_FOLDER)
    if stored:
        return str(stored)
    digest = hashlib.sha256(storage.encode()).hexdigest()[:8]  # studies made before the attr
    return f"{study.study_name}-{digest}"


class TrialObjective:
    """Train one trial's configuration; report its evaluations; return its objective(s)."""

    def __init__(self, definition: StudyDefinition, scale: str, workspace: Workspace,
                 tracker: Any, parent_id: str, base: RunConfig,
                 release_lock: Callable[[], None], console: Any, folder: str) -> None:
        self.definition, self.scale, self.workspace = definition, scale, workspace
        self.folder = folder
        self.tracker, self.parent_id, self.base = tracker, parent_id, base
        self.release_lock, self.console = release_lock, console

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.release_lock()
        definition = self.definition
        params = {p.key: p.suggest(trial) for p in definition.search}
        cfg = definition.trial_config(self.scale, params, self.base)
        # A retry (same parameters) resumes the dead trial's checkpoint from its folder.
        run_dir = trial.user_attrs.get(ATTR_RUN_DIR) or str(
            self.workspace.runs_dir / "tune" / self.folder / f"trial-{trial.number:04d}")
        trial.set_user_attr(ATTR_RUN_DIR, run_dir)
        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        logger = self.tracker.start_child(
            definition.experiment, self.parent_id, row=f"trial {trial.number}",
            scale=self.scale, seed=cfg.train.seed, config_hash=cfg.hash(),
            config=cfg.to_dict(), flat_params=cfg.flat(),
            extra_tags={TAG_STUDY: definition.id, TAG_OPTUNA_STUDY: definition.study_name(self.scale),
                        TAG_TRIAL: str(trial.number), TAG_STATE: "RUNNING",
                        "lafite.run_dir": run_dir,
                        **{f"lafite.trial.param.{k}": str(v) for k, v in params.items()},
                        **({"lafite.trial.retry_of": str(trial.user_attrs[ATTR_RETRY_OF])}
                           if ATTR_RETRY_OF in trial.user_attrs else {})},
        )
        trial.set_user_attr(ATTR_MLFLOW, logger.run_id)
        self.console.print(f"trial {trial.number}: "
                           + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in params.items()))
        from lafite.tracking import FAILED, FINISHED, KILLED

        try:
            values = self._train(trial, cfg, Path(run_dir), logger)
        except optuna.TrialPruned:
            logger.set_tags({TAG_STATE: "PRUNED"})
            logger.close(FINISHED)
            raise
        except KeyboardInterrupt:
            logger.set_tags({TAG_STATE: "FAIL"})
            logger.close(KILLED)
            raise
        except BaseException:
            logger.set_tags({TAG_STATE: "FAIL"})
            logger.close(FAILED)
            raise
        logger.set_tags({TAG_STATE: "COMPLETE"})
        logger.log_metrics(cfg.train.kimg, {f"objective/{m}": v for m, v in
                                            zip([o.metric for o in definition.objectives], values)})
        logger.close(FINISHED)
        return values[0] if len(values) == 1 else tuple(values)

    def _train(self, trial: optuna.Trial, cfg: RunConfig, run_dir: Path,
               logger: Any) -> list[float]:
        from lafite import jobs as jobs_mod
        from lafite.launch.execute import EVALUATION_KEY, job_extras, make_evaluator
        from lafite.train import TrainCallbacks, load_generator, train_run

        definition = self.definition
        metrics = [o.metric for o in definition.objectives]
        single = not definition.multi_objective
        evaluate_full = make_evaluator(cfg, self.workspace)
        last: dict[str, Any] = {}

        def evaluate(g_ema: Any, kimg: float) -> dict[str, Any] | None:
            # The untrained generator scores alike in every trial: not worth an evaluation.
            if kimg <= 0:
                return None
            return evaluate_full(g_ema, kimg)

        def on_evaluate(kimg: float, values: dict[str, Any]) -> None:
            values = dict(values)
            full = values.pop(EVALUATION_KEY, None)
            logger.log_metrics(kimg, values)
            if full is not None and full.get("not_computed"):
                logger.set_tags({f"lafite.not_computed.{k}": str(v)[:500]
                                 for k, v in full["not_computed"].items()})
            steps = int(round(kimg * 1000 / cfg.train.batch))
            trial.set_user_attr(ATTR_STEPS, steps)
            trial.set_user_attr(ATTR_KIMG, kimg)
            last.clear()
            last.update(values)
            last["_kimg"] = kimg
            if single and metrics[0] in values and math.isfinite(float(values[metrics[0]])):
                step = report_step(kimg)
                trial.report(float(values[metrics[0]]), step)
                if kimg < cfg.train.kimg and trial.should_prune():
                    logger.set_tags({"lafite.trial.pruned_at_kimg": f"{kimg:g}"})
                    raise optuna.TrialPruned(f"pruned at {kimg:g} kimg "
                                             f"({metrics[0]}={values[metrics[0]]:.4g})")

        needed = jobs_mod.needed_jobs(cfg)
        for job in needed:
            jobs_mod.ensure(job, self.workspace, progress=False)
        extra = job_extras(cfg, needed, self.workspace)

        callbacks = TrainCallbacks(
            on_metrics=lambda kimg, values: logger.log_metrics(kimg, values),
            on_evaluate=on_evaluate,
            on_artifact=lambda path: logger.log_artifact(path, "samples"),
            evaluate=evaluate,
        )
        result = train_run(cfg, run_dir, self.workspace, callbacks, **extra)
        if last.get("_kimg") != result.kimg:
            # Resumed a run that had finished training but not its final evaluation.
            g_ema, _ = load_generator(result.final_checkpoint)
            on_evaluate(result.kimg, evaluate_full(g_ema, result.kimg))
        missing = [m for m in metrics if m not in last or not math.isfinite(float(last[m]))]
        if missing:
            raise RuntimeError(f"the final evaluation produced no finite {', '.join(missing)} "
                               "(see the run's lafite.not_computed tags)")
        return [float(last[m]) for m in metrics]


def _fill_summary(summary: StudySummary, study: optuna.Study,
                  definition: StudyDefinition) -> None:
    trials = study.get_trials(deepcopy=False)
    summary.counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    summary.budget_steps = sum(int(t.user_attrs.get(ATTR_STEPS, 0)) for t in trials)
    summary.best = [_trial_entry(t) for t in best_trials(study, definition)]


# -- dry run -----------------------------------------------------------------------------------


def _print_plan(definition: StudyDefinition, scale: str, base: RunConfig, summary: StudySummary,
                workspace: Workspace, storage: str | None, workers: int, console: Any) -> None:
    spec = definition.spec()
    row_cfg = spec.resolve(spec.row(definition.row), scale).flat()
    changed = {k: v for k, v in base.flat().items() if row_cfg.get(k) != v}
    console.print(f"[bold]study {summary.study_name}[/bold]: {definition.title}", markup=True, soft_wrap=True)
    console.print(f"  base row: {definition.spec_id} / {definition.row!r} at scale {scale}",
                  markup=False, soft_wrap=True)
    console.print("  study changes: " + (_inline(changed) or "-"), markup=False, soft_wrap=True)
    for param in definition.search:
        console.print(f"  search: {param.describe()}", markup=False, soft_wrap=True)
    console.print("  objectives: " + ", ".join(f"{o.metric} ({o.direction})"
                                               for o in definition.objectives), markup=False, soft_wrap=True)
    console.print(f"  sampler: {_inline(definition.sampler)}; pruner: {_inline(definition.pruner)}"
                  f" (evaluations every {base.train.eval_kimg:g} of {base.train.kimg:g} kimg)",
                  markup=False, soft_wrap=True)
    existing = "unknown"
    if storage is None and not workspace.optuna_db.exists():
        existing = "0 (the storage does not exist yet)"
    elif storage is None:
        with contextlib.suppress(UserError):
            study = load_existing_study(definition, scale, workspace, None)
            existing = str(sum(t.state in COUNTED for t in study.get_trials(deepcopy=False)))
    console.print(f"  storage: {summary.storage}; trials: {summary.target} "
                  f"(done so far: {existing}); workers: {workers}", markup=False, soft_wrap=True)
    console.print(f"  MLflow: experiment {definition.experiment!r}, one child run per trial",
                  markup=False, soft_wrap=True)
