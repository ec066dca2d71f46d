"""Run a spec at a scale: plan, build the jobs rows need, train each run once, record it.

Idempotent and resumable by construction: each planned run has a stable hash; the MLflow store
is asked for a child run with that hash before anything is trained.

- FINISHED: skipped (a second ``run`` of a finished table trains nothing);
- unfinished (RUNNING after a kill, FAILED, KILLED): resumed from ``<workspace>/runs/<hash>/``
  (training resumes from its checkpoint) under the same MLflow run id;
- absent: started.

Several ``run`` processes may work on one table (two terminals, a cluster array job). A run is
trained only by the process that holds its lock file (created with ``O_EXCL``; it records pid,
host and the process start time so that a lock left by a killed process is recognised as stale
and taken over). A process skips runs locked by others, does the rest, then waits for the locked
ones to finish (or to be abandoned, and then resumes them itself).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lafite import jobs as jobs_mod
from lafite.config import RunConfig
from lafite.errors import UserError
from lafite.launch.execute import job_tags as launched_job_tags
from lafite.locks import exclusive
from lafite.spec import PlannedRun, Spec, plan
from lafite.workspace import Workspace

# -- plans with their jobs ---------------------------------------------------------------------


@dataclass(frozen=True)
class FullPlan:
    """The runs of one invocation and the jobs they need (deduplicated by hash)."""

    spec: Spec
    scale: str
    runs: list[PlannedRun]
    jobs: list[jobs_mod.Job]
    jobs_of_run: dict[str, list[jobs_mod.Job]]


def make_plan(
    spec: Spec,
    scale: str,
    seeds: int | None = None,
    rows: list[str] | tuple[str, ...] | None = None,
    extra: dict[str, Any] | None = None,
    workspace: Workspace | None = None,
) -> FullPlan:
    """Plan the runs and resolve their jobs; builds nothing, records nothing. ``workspace``
    is where rows naming an imported checkpoint by name find it."""
    definitions = jobs_mod.load_definitions()
    runs = plan(spec, scale, seeds, rows, extra, workspace=workspace)
    unique: dict[str, jobs_mod.Job] = {}
    jobs_of_run: dict[str, list[jobs_mod.Job]] = {}
    for planned in runs:
        needed = jobs_mod.needed_jobs(planned.config, definitions)
        jobs_of_run[planned.hash] = needed
        for job in needed:
            unique.setdefault(job.hash, job)
    return FullPlan(spec, scale, runs, list(unique.values()), jobs_of_run)


def describe_plan(full: FullPlan, console: Console, show_configs: bool = True) -> None:
    """Print what ``run`` would do: jobs, runs with hashes and their resolved configurations."""
    console.print(
        f"[bold]{full.spec.id}[/bold] ({full.spec.title}) at scale [bold]{full.scale}[/bold]: "
        f"{len(full.runs)} run(s), {len(full.jobs)} job(s)"
    )
    # Plain lines rather than a rich table: a plan is read in logs and grepped for hashes.
    if full.jobs:
        console.print("jobs (built once, shared by every row that needs them):")
        for job in full.jobs:
            console.print(f"  {job.hash}  {job.name} ({job.kind}, {job.resolution}px)", markup=False)
    console.print("runs (hash, row, seed, kimg, changes from the base configuration):")
    base = full.spec.base_config(full.scale).flat()
    for run in full.runs:
        flat = run.config.flat()
        changed = {k: v for k, v in flat.items() if base.get(k) != v and k != "train.seed"}
        changes = ", ".join(f"{k}={v}" for k, v in changed.items()) or "-"
        console.print(
            f"  {run.hash}  {run.row.name}  seed {run.seed}  {run.config.train.kimg:g} kimg  {changes}",
            markup=False,
        )
    from lafite.data.datasets import data_location

    reads: dict[str, list[str]] = {}
    for cfg, who in [(run.config, run.row.name) for run in full.runs] + \
            [(job.config, f"job {job.name}") for job in full.jobs if job.config is not None]:
        splits = ("train",) if cfg.mode == "zero-shot" else ("train", "test")
        if cfg.mode == "zero-shot":
            splits = ("test",) if cfg.eval.reference_split == "test" else ("train", "test")
        for split in splits:
            reads.setdefault(f"{split}: {data_location(cfg, split)}", []).append(who)
    for run in full.runs:
        if run.config.data.captions_file or run.config.data.captions_job:
            from lafite.data.datasets import captions_location

            reads.setdefault(f"train captions: {captions_location(run.config)}", []).append(
                run.row.name)
    console.print("data it reads (split: where, for whom):")
    for where, who in reads.items():
        names = sorted(set(who))
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        console.print(f"  {where}  [{shown}]", markup=False)
    if any(run.config.train.precision == "auto" for run in full.runs):
        from lafite import precision

        for line in sorted({precision.describe(r.config) for r in full.runs
                            if r.config.train.precision == "auto"}):
            console.print(line, markup=False)
    if show_configs and full.runs:
        console.print(f"[bold]resolved configuration[/bold] of {full.runs[0].label}:")
        console.print(yaml.safe_dump(full.runs[0].config.to_dict(), sort_keys=False), markup=False)


# -- preflight ---------------------------------------------------------------------------------


def preflight(full: FullPlan, workspace: Workspace) -> None:
    """Check what would otherwise fail half-way, before anything is recorded or trained: real
    datasets must exist (the data layer's UserError names the path and how to get the data),
    and so must the weights of a real CLIP (open_clip fails fast offline with a UserError); a
    captions file must be complete and valid for the training images (each problem named by
    file and line), and captioner jobs can only caption the built-in world. Last, as the slowest
    check, every image of a real dataset split that a run or job reads must open, and have a
    caption where one is needed (:func:`_data_needs`); a passed scan is cached by the folder's
    fingerprint (names, sizes and mtimes), so an unchanged folder is scanned once."""
    from lafite.captioners import check_world
    from lafite.data.datasets import open_dataset

    for job in full.jobs:
        if job.kind == "captioner" and job.config is not None:
            check_world(job.config, job.name)
    # A pre-training job reads its training split only (FFHQ has no test captions to score).
    configs = [(run.config, ("train", "test"), f"run {run.label}", "") for run in full.runs]
    configs += [(job.config, ("train",), f"job {job.name}", job.kind) for job in full.jobs
                if job.config is not None]
    opened: dict[tuple, Any] = {}

    def folder_of(cfg: RunConfig, split: str) -> Any:
        data = cfg.data
        limit = data.max_train_images if split == "train" else 0
        key = (data.dataset, data.data_root, data.train_path, data.test_path, data.resolution,
               split, limit)
        if key not in opened:  # listing a large folder takes a while: once per folder
            opened[key] = open_dataset(cfg, split, workspace)
        return opened[key]

    seen_data: set[tuple] = set()
    seen_clip: set[tuple] = set()
    for cfg, splits, _who, _kind in configs:
        if cfg.data.dataset != "world":
            for split in splits:
                folder_of(cfg, split)
        key = (cfg.data.dataset, cfg.data.data_root, cfg.data.train_path, cfg.data.test_path,
               cfg.data.resolution, cfg.world.domain)
        captions_key = (key, cfg.data.captions_file, cfg.data.max_train_images)
        if cfg.data.captions_file and captions_key not in seen_data:
            seen_data.add(captions_key)
            from lafite.data.datasets import check_captions_file

            check_captions_file(cfg, workspace)
        if cfg.train.init_checkpoint:
            _check_init_checkpoint(cfg)
        clip_key = (cfg.clip.name, cfg.clip.pretrained)
        if cfg.clip.name != "world" and clip_key not in seen_clip:
            seen_clip.add(clip_key)
            from lafite.clip import load_clip

            load_clip(cfg.clip, workspace, cfg.data.resolution)

    # One scan per folder and file count, with captions if anyone reading it needs them.
    scans: dict[tuple[str, int], tuple[Any, str]] = {}
    for cfg, _splits, who, kind in configs:
        if cfg.data.dataset == "world":
            continue
        for split, why in _data_needs(cfg, who, kind):
            folder = folder_of(cfg, split)
            slot = (str(folder.root.resolve()), len(folder))
            scans[slot] = (folder, scans.get(slot, (None, ""))[1] or why)
    for folder, why in scans.values():
        _check_folder(folder, why, workspace)


# Folders with more images than this show the progress of their scan.
_PROGRESS_FROM = 2000
# Bump when the scan checks more, so that earlier passes are not trusted.
_CHECK_VERSION = 1


def _data_needs(cfg: RunConfig, who: str, job_kind: str) -> list[tuple[str, str]]:
    """The splits ``cfg`` reads, each with who needs its captions and why ("" when nobody).

    Evaluation conditions the generator on test captions, so every run (trained or zero-shot)
    needs them; training needs the training split's own captions where the mode trains on
    captions and neither a captions file nor a captioner job replaces them; an inference-model
    job fits on image-caption pairs; a zero-shot run reads its training split only for the
    reference statistics, and a job (which is not evaluated) its training split only.
    """
    if job_kind == "inference-model":
        return [("train", f"{who} fits its inference model on image-caption pairs")]
    replaced = cfg.data.captions_file or cfg.data.captions_job
    trains_on_captions = cfg.uses_captions and cfg.data.paired_fraction > 0 and not replaced
    train = ("train", f"{who} trains in mode {cfg.mode}" if trains_on_captions else "")
    if job_kind:
        return [train]
    test = ("test", f"{who} is evaluated on the test split's captions")
    if cfg.mode == "zero-shot":
        return [test] + ([("train", "")] if cfg.eval.reference_split == "train" else [])
    return [train, test]


def _check_folder(folder: Any, why: str, workspace: Workspace) -> None:
    """Scan ``folder`` (ImageTextFolder.check) unless a scan of the same files passed before;
    record a pass, so that the next run on an unchanged folder skips the scan."""
    import sys

    from lafite.atomic import atomic_write

    need_captions = bool(why)
    fingerprint = folder.files_fingerprint()
    cache = workspace.cache_dir / "data-checks"
    with_captions = cache / f"{fingerprint}-v{_CHECK_VERSION}-captions.ok"
    images_only = cache / f"{fingerprint}-v{_CHECK_VERSION}-images.ok"
    if with_captions.exists() or (not need_captions and images_only.exists()):
        return
    total = len(folder)
    if total <= _PROGRESS_FROM:
        folder.check(need_captions, why)
    else:
        console = Console(stderr=True)
        if console.is_terminal:
            progress = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} images"), TimeElapsedColumn(),
                console=console, transient=True,
            )
            with progress:
                task = progress.add_task(f"checking {folder.root}", total=total)
                folder.check(need_captions, why, advance=lambda n: progress.advance(task, n))
        else:  # logs of batch jobs: a plain line every half minute instead of a bar
            state = {"done": 0, "shown": time.monotonic()}

            def advance(n: int) -> None:
                state["done"] += n
                if time.monotonic() - state["shown"] >= 30:
                    state["shown"] = time.monotonic()
                    print(f"checking {folder.root}: {state['done']}/{total} images",
                          file=sys.stderr, flush=True)

            print(f"checking {total} images in {folder.root} ...", file=sys.stderr, flush=True)
            folder.check(need_captions, why, advance=advance)
    record = f"{folder.root}\n{total} images passed, captions checked: {need_captions}\n"
    atomic_write(with_captions if need_captions else images_only,
                 lambda handle: handle.write(record.encode()))


def _check_init_checkpoint(cfg: Any) -> None:
    """A pre-trained checkpoint a run names must exist and fit the run's generator."""
    import torch

    from lafite.model import Generator
    from lafite.train import load_matching, read_pretrained

    path = Path(cfg.train.init_checkpoint)
    saved = read_pretrained(path)
    cond_dim = int(saved.get("cond_dim") or 0)
    with torch.device("meta"):
        generator = Generator(cfg.model, cfg.data.resolution, cond_dim)
    load_matching(generator, saved, "G_ema", path, load=False)


# -- locks -------------------------------------------------------------------------------------


class RunLock:
    """An exclusive, crash-aware lock on one run hash (a file created with O_EXCL)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def _me() -> dict[str, Any]:
        proc = psutil.Process()
        return {"pid": proc.pid, "host": socket.gethostname(), "started": proc.create_time()}

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_stale(self, holder: dict[str, Any] | None) -> bool:
        """True when the holder is a dead process on this host (or the file is unreadable)."""
        if holder is None:
            # Half-written by a process that died between create and write; a live writer
            # finishes within microseconds, so an empty file older than a few seconds is stale.
            try:
                return time.time() - self.path.stat().st_mtime > 5
            except FileNotFoundError:
                return False
        if holder.get("host") != socket.gethostname():
            return False  # cannot check another machine's processes: trust it
        try:
            proc = psutil.Process(int(holder["pid"]))
            return abs(proc.create_time() - float(holder["started"])) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, KeyError, ValueError):
            return True

    def acquire(self) -> bool:
        """Take the lock if free (or stale); False if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._remove_if_stale():
                    return False
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._me(), handle)
            return True
        return False

    def _remove_if_stale(self) -> bool:
        """Delete the lock file if its holder is dead; False if a live process holds it.

        Takeovers are serialised by a guard lock so that two processes that both judged the
        same lock stale cannot end with one deleting the fresh lock the other just made.
        """
        with exclusive(self.path.with_name(self.path.name + ".guard")):
            if not self.path.exists():
                return True
            if not self.is_stale(self.holder()):
                return False
            self.path.unlink(missing_ok=True)
            return True

    def release(self) -> None:
        holder = self.holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)


# -- execution ---------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    run: PlannedRun
    # "trained", "resumed", "retrained" (was damaged), "skipped", "failed"; with SLURM also
    # "submitted" and "queued" (already in the queue from an earlier or concurrent `run`).
    status: str
    run_id: str = ""
    seconds: float = 0.0
    error: str = ""
    job_id: str = ""


@dataclass
class Summary:
    spec_id: str
    scale: str
    parent_run_id: str = ""
    outcomes: list[RunOutcome] = field(default_factory=list)
    # SLURM: (job label, SLURM job id, "submitted" or "queued") of each job build it waits on.
    builds: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def run_spec(
    spec: Spec,
    scale: str,
    workspace: Workspace,
    *,
    seeds: int | None = None,
    rows: list[str] | tuple[str, ...] | None = None,
    extra: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    quiet: bool = False,
    console: Console | None = None,
    poll_seconds: float = 2.0,
    verify: bool = False,
    retrain_damaged: bool = False,
    launcher: str = "local",
    processes: int = 1,
    slurm: Any = None,
    wait: bool = False,
) -> Summary:
    """Train every planned run of ``spec`` at ``scale`` that is not finished yet.

    A finished run whose final checkpoint is damaged (see :func:`find_damaged`; ``verify``
    also reads each file through) stops the command with a :class:`UserError` naming each such
    run, unless ``retrain_damaged``: then its run folder is moved aside, its MLflow run marked
    damaged, and it is trained again from scratch under a new MLflow run.

    ``launcher`` says where a run executes: "local" (in this process), "torchrun" (``processes``
    DDP ranks on this node, started and awaited here) or "slurm" (``slurm``: SlurmSettings;
    jobs and runs are submitted and this returns, or with ``wait`` waits for them).
    """
    console = console or Console(stderr=True, quiet=quiet)
    full = make_plan(spec, scale, seeds, rows, extra, workspace)
    if launcher == "slurm":
        from lafite.launch import slurm as slurm_mod

        slurm_mod.check_cluster(slurm)
    elif launcher == "torchrun":
        from lafite.launch import torchrun

        torchrun.check_gpus(processes, sorted({r.config.train.device for r in full.runs}))
    preflight(full, workspace)
    if launcher == "slurm":
        return submit_to_slurm(full, workspace, slurm, tracking_uri=tracking_uri,
                               console=console, wait=wait, poll_seconds=poll_seconds)
    if not verify and not retrain_damaged:
        done = finished_without_mlflow(full, workspace, tracking_uri)
        if done is not None:
            return done
    from lafite.tracking import FAILED, FINISHED, KILLED, Tracker

    tracker = Tracker(workspace, tracking_uri)
    tracker.check()
    summary = Summary(spec.id, scale)
    damaged = {d.run_id: d for d in find_damaged(full, tracker, workspace, verify)}
    if damaged and not retrain_damaged:
        raise UserError(damaged_message(full, list(damaged.values())))
    for d in damaged.values():
        console.print(f"{d.run.label}: final checkpoint {d.path} {d.problem}; training it again "
                      "from scratch", markup=False)

    for job in full.jobs:
        if jobs_mod.artifact_path(job, workspace) is None:
            console.print(f"building job {job.label} [{job.hash}] ...")
            started = time.perf_counter()
            try:
                jobs_mod.ensure(job, workspace, progress=not quiet)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                rows = sorted({run.row.name for run in full.runs
                               if any(j.hash == job.hash for j in full.jobs_of_run[run.hash])})
                cause = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                raise UserError(
                    f"job {job.name!r} ({job.kind}, {job.hash}) failed: {cause}. Nothing was "
                    f"recorded for the rows that need it ({', '.join(rows)}); fix the cause and "
                    "run the same command again"
                ) from exc
            console.print(f"  done in {time.perf_counter() - started:.1f} s")

    def job_tags(run: PlannedRun) -> dict[str, str]:
        return launched_job_tags(full.jobs_of_run[run.hash], workspace)

    parent_id = tracker.parent_run(spec.id, scale)
    summary.parent_run_id = parent_id
    locks = workspace.locks_dir
    pending = list(full.runs)
    interrupted = False
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.2f}/{task.total:g} kimg"),
        TimeElapsedColumn(), console=console, disable=quiet, transient=True,
    )
    try:
        with progress:
            overall = progress.add_task(f"{spec.id} {scale}", total=len(pending))
            waiting_since: float | None = None
            while pending:
                advanced = False
                for run in list(pending):
                    record = tracker.find_child(spec.id, run.hash)
                    if (record is not None and record.status == FINISHED
                            and record.run_id not in damaged):
                        summary.outcomes.append(RunOutcome(run, "skipped", record.run_id))
                        pending.remove(run)
                        progress.advance(overall)
                        advanced = True
                        continue
                    if held_by_slurm(workspace, run.hash):
                        continue
                    lock = RunLock(locks / f"run-{run.hash}.lock")
                    if not lock.acquire():
                        continue
                    try:
                        # Another process may have finished it between our lookup and the lock.
                        record = tracker.find_child(spec.id, run.hash)
                        retrain = (record is not None and record.status == FINISHED
                                   and record.run_id in damaged)
                        if retrain:
                            _set_aside(tracker, damaged[record.run_id], workspace, console)
                            record = None
                        if record is not None and record.status == FINISHED:
                            outcome = RunOutcome(run, "skipped", record.run_id)
                        elif launcher == "torchrun":
                            outcome = _train_torchrun(
                                tracker, run, parent_id, workspace, tracking_uri,
                                resume_run_id=record.run_id if record else None,
                                processes=processes, progress=progress,
                            )
                        else:
                            outcome = _train_one(
                                tracker, run, parent_id, workspace, job_tags(run),
                                full.jobs_of_run[run.hash],
                                resume_run_id=record.run_id if record else None,
                                progress=progress, console=console,
                            )
                            if retrain and outcome.status == "trained":
                                outcome.status = "retrained"
                    finally:
                        lock.release()
                    summary.outcomes.append(outcome)
                    pending.remove(run)
                    progress.advance(overall)
                    advanced = True
                if pending and not advanced:
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                        holders = {str((RunLock(locks / f"run-{r.hash}.lock").holder() or {}).get("pid", "?"))
                                   for r in pending}
                        console.print(
                            f"waiting for {len(pending)} run(s) being trained by process(es) "
                            f"{', '.join(sorted(holders))}"
                        )
                    time.sleep(poll_seconds)
                else:
                    waiting_since = None
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        done = not pending and not summary.failed
        tracker.finish_parent(parent_id, FINISHED if done else (KILLED if interrupted else FAILED))
    return summary


def _train_one(
    tracker: Any,
    run: PlannedRun,
    parent_id: str,
    workspace: Workspace,
    job_tags: dict[str, str],
    needed: list[jobs_mod.Job],
    *,
    resume_run_id: str | None,
    progress: Progress,
    console: Console,
) -> RunOutcome:
    """Train (or resume) one run in this process under its MLflow child run."""
    from lafite.launch.execute import TAG_LAUNCHER, retire_failure, train_and_record
    from lafite.tracking import TAG_RUN_DIR

    cfg = run.config
    run_dir = workspace.runs_dir / run.hash
    logger = tracker.start_child(
        run.spec_id, parent_id, row=run.row.name, scale=run.scale, seed=run.seed,
        config_hash=run.hash, config=cfg.to_dict(), flat_params=cfg.flat(),
        extra_tags={TAG_RUN_DIR: str(run_dir), TAG_LAUNCHER: "local", **job_tags},
        resume_run_id=resume_run_id,
    )
    if resume_run_id:
        retire_failure(tracker.client, logger.run_id)
    task = progress.add_task(run.label, total=cfg.train.kimg)
    try:
        recorded = train_and_record(
            logger, cfg, run_dir, workspace, needed,
            on_progress=lambda kimg: progress.update(task, completed=kimg),
            on_failure=lambda reason: console.print(f"[red]{run.label} failed:[/red] {reason}"),
        )
    finally:
        progress.remove_task(task)
    if recorded.status == "failed":
        return RunOutcome(run, "failed", logger.run_id, recorded.seconds, recorded.error)
    status = "resumed" if resume_run_id else "trained"
    return RunOutcome(run, status, logger.run_id, recorded.seconds)


def _train_torchrun(
    tracker: Any,
    run: PlannedRun,
    parent_id: str,
    workspace: Workspace,
    tracking_uri: str | None,
    *,
    resume_run_id: str | None,
    processes: int,
    progress: Progress,
) -> RunOutcome:
    """Train (or resume) one run as ``processes`` torchrun ranks and read how it ended."""
    from lafite.launch import torchrun
    from lafite.launch.execute import TAG_FAILURE, TAG_LAUNCHER
    from lafite.tracking import FAILED, FINISHED, TAG_RUN_DIR

    started = time.perf_counter()
    run_dir = workspace.runs_dir / run.hash
    ticket = _ticket(tracker, run, parent_id, workspace, tracking_uri, resume_run_id,
                     {TAG_LAUNCHER: "torchrun", TAG_RUN_DIR: str(run_dir)})
    log = run_dir / "torchrun.log"
    task = progress.add_task(run.label, total=run.config.train.kimg)
    try:
        code = torchrun.launch(Path(ticket.path), processes, log,
                               lambda kimg: progress.update(task, completed=kimg))
    finally:
        progress.remove_task(task)
    seconds = time.perf_counter() - started
    mlflow_run = tracker.client.get_run(ticket.run_id)
    if mlflow_run.info.status == FINISHED and code == 0:
        return RunOutcome(run, "resumed" if resume_run_id else "trained", ticket.run_id, seconds)
    reason = mlflow_run.data.tags.get(TAG_FAILURE) or f"torchrun exited with code {code}"
    if mlflow_run.info.status != FAILED:
        tracker.client.set_tag(ticket.run_id, TAG_FAILURE, f"{reason}; log: {log}")
        tracker.client.set_terminated(ticket.run_id, status=FAILED)
    return RunOutcome(run, "failed", ticket.run_id, seconds, f"{reason} (log: {log})")


def _ticket(tracker: Any, run: PlannedRun, parent_id: str, workspace: Workspace,
            tracking_uri: str | None, resume_run_id: str | None, tags: dict[str, str],
            status: str = "RUNNING") -> Any:
    """Open (or reuse) the run's MLflow child run and write the ticket its processes read."""
    from lafite.launch.ticket import RunTicket, write_ticket

    cfg = run.config
    run_id = resume_run_id
    if run_id is None:
        run_id = tracker.create_child(
            run.spec_id, parent_id, row=run.row.name, scale=run.scale, seed=run.seed,
            config_hash=run.hash, config=cfg.to_dict(), flat_params=cfg.flat(), extra_tags=tags,
            status=status)
    else:
        tracker.client.update_run(run_id, status=status)
        for key, value in tags.items():
            tracker.client.set_tag(run_id, key, value)
    ticket = RunTicket(
        spec_id=run.spec_id, scale=run.scale, row=run.row.name, seed=run.seed, hash=run.hash,
        config=cfg.to_dict(), run_dir=str(workspace.runs_dir / run.hash),
        workspace=str(workspace.root), tracking_uri=tracking_uri, run_id=run_id,
        parent_id=parent_id)
    write_ticket(ticket)
    return ticket


# -- SLURM ---------------------------------------------------------------------------------------


def held_by_slurm(workspace: Workspace, run_hash: str) -> str:
    """The SLURM job id holding this run (queued or running), or ""."""
    from lafite.launch import slurm as slurm_mod

    record = slurm_mod.read_record(workspace, f"run-{run_hash}")
    if record is None:
        return ""
    state = slurm_mod.job_states([record["job_id"]], {record["job_id"]: record.get("log", "")})
    return record["job_id"] if state[record["job_id"]].active else ""


def submit_to_slurm(full: FullPlan, workspace: Workspace, settings: Any, *,
                    tracking_uri: str | None, console: Console, wait: bool,
                    poll_seconds: float = 2.0) -> Summary:
    """Submit the jobs the rows need that are not built, then every row that is neither
    finished nor already queued, each depending (afterok) on the builds it needs."""
    from lafite.launch import slurm as slurm_mod
    from lafite.launch.execute import TAG_FAILURE, TAG_LAUNCHER, TAG_SLURM_JOB, TAG_SLURM_LOG
    from lafite.run_records import SCHEDULED
    from lafite.tracking import FAILED, FINISHED, TAG_RUN_DIR, Tracker

    tracker = Tracker(workspace, tracking_uri)
    tracker.check()
    summary = Summary(full.spec.id, full.scale)
    with slurm_mod.submission_lock(workspace):
        build_ids: dict[str, str] = {}
        for job in full.jobs:
            if jobs_mod.artifact_path(job, workspace) is not None:
                continue
            key = f"job-{job.hash}"
            record = slurm_mod.read_record(workspace, key)
            if record is not None and slurm_mod.job_states(
                    [record["job_id"]], {record["job_id"]: record["log"]})[record["job_id"]].active:
                build_ids[job.hash] = record["job_id"]
                summary.builds.append((job.label, record["job_id"], "queued"))
                continue
            name = slurm_mod.job_name("build", job.name, job.hash)
            build_settings = replace_gpus(settings, 1 if settings.gpus_per_run else 0)
            submitted = slurm_mod.submit(slurm_mod.BuildTask(job, str(workspace.root)),
                                         build_settings, workspace, name)
            slurm_mod.write_record(workspace, key, submitted)
            build_ids[job.hash] = submitted.job_id
            summary.builds.append((job.label, submitted.job_id, "submitted"))

        parent_id = tracker.parent_run(full.spec.id, full.scale)
        summary.parent_run_id = parent_id
        for run in full.runs:
            record = tracker.find_child(full.spec.id, run.hash)
            if record is not None and record.status == FINISHED:
                summary.outcomes.append(RunOutcome(run, "skipped", record.run_id))
                continue
            key = f"run-{run.hash}"
            previous = slurm_mod.read_record(workspace, key)
            if previous is not None:
                state = slurm_mod.job_states([previous["job_id"]],
                                             {previous["job_id"]: previous["log"]})[previous["job_id"]]
                if state.active:
                    summary.outcomes.append(RunOutcome(run, "queued", record.run_id if record else "",
                                                       job_id=previous["job_id"]))
                    continue
                if record is not None and record.status != FAILED:
                    # Killed by the scheduler (memory, time, node) before it could say so itself.
                    why = f"SLURM job {previous['job_id']} ended {state.state}"
                    why += f" ({state.reason})" if state.reason else ""
                    tracker.client.set_tag(record.run_id, TAG_FAILURE,
                                           f"{why}; log: {previous['log']}")
                    tracker.client.set_terminated(record.run_id, status=FAILED)
            lock = RunLock(workspace.locks_dir / f"run-{run.hash}.lock")
            holder = lock.holder()
            if holder and not lock.is_stale(holder):
                summary.outcomes.append(RunOutcome(run, "queued", record.run_id if record else "",
                                                   error=f"being trained locally by pid {holder.get('pid')}"))
                continue
            after = [build_ids[j.hash] for j in full.jobs_of_run[run.hash] if j.hash in build_ids]
            run_dir = workspace.runs_dir / run.hash
            ticket = _ticket(tracker, run, parent_id, workspace, tracking_uri,
                             record.run_id if record else None,
                             {TAG_LAUNCHER: "slurm", TAG_RUN_DIR: str(run_dir)}, status=SCHEDULED)
            name = slurm_mod.job_name(full.spec.id, full.scale, run.row.name, f"s{run.seed}")
            task = slurm_mod.RunTask(ticket.path, max(settings.gpus_per_run, 1),
                                     settings.gpus_per_run)
            try:
                submitted = slurm_mod.submit(task, settings, workspace, name, after)
            except UserError:
                tracker.client.set_terminated(ticket.run_id, status=FAILED)
                raise
            slurm_mod.write_record(workspace, key, submitted, run_id=ticket.run_id)
            tracker.client.set_tag(ticket.run_id, TAG_SLURM_JOB, submitted.job_id)
            tracker.client.set_tag(ticket.run_id, TAG_SLURM_LOG, submitted.log)
            summary.outcomes.append(RunOutcome(run, "submitted", ticket.run_id,
                                               job_id=submitted.job_id))
    if wait:
        _wait_for_slurm(summary, workspace, tracker, console, poll_seconds)
    return summary


def replace_gpus(settings: Any, gpus: int) -> Any:
    from dataclasses import replace

    return replace(settings, gpus_per_run=gpus)


def _wait_for_slurm(summary: Summary, workspace: Workspace, tracker: Any, console: Console,
                    poll_seconds: float) -> None:
    """Until every submitted or queued run has left the queue; outcomes become "trained" or
    "failed" (with the reason MLflow or the scheduler gives)."""
    from lafite.launch import slurm as slurm_mod
    from lafite.launch.execute import TAG_FAILURE
    from lafite.tracking import FINISHED

    waiting = [o for o in summary.outcomes if o.status in ("submitted", "queued") and o.job_id]
    started = time.monotonic()
    while waiting:
        states = slurm_mod.job_states([o.job_id for o in waiting])
        for o in list(waiting):
            if states[o.job_id].active:
                continue
            run = tracker.client.get_run(o.run_id)
            if run.info.status == FINISHED:
                o.status = "trained"
            else:
                st = states[o.job_id]
                o.status = "failed"
                o.error = run.data.tags.get(TAG_FAILURE) or (
                    f"SLURM job {o.job_id} ended {st.state}" + (f" ({st.reason})" if st.reason else ""))
            o.seconds = time.monotonic() - started
            waiting.remove(o)
        if waiting:
            time.sleep(poll_seconds)


# -- damaged artefacts of finished runs ----------------------------------------------------------


@dataclass(frozen=True)
class Damaged:
    """A finished run whose final checkpoint cannot be used (missing, truncated, changed)."""

    run: PlannedRun
    run_id: str
    path: Path
    problem: str


def finished_without_mlflow(full: FullPlan, workspace: Workspace,
                            tracking_uri: str | None) -> Summary | None:
    """The summary of a table whose every planned run is recorded finished with a sound final
    checkpoint, read from the workspace's sqlite store without MLflow (a finished table re-runs
    in about a second); None when that is not so or cannot be told here: the full path decides.
    """
    from lafite.checkpoint import CHECKPOINT_NAME, checkpoint_problem
    from lafite.run_records import finished_runs

    records = finished_runs(workspace, tracking_uri, full.spec.id, [r.hash for r in full.runs])
    if records is None or any(run.hash not in records for run in full.runs):
        return None
    for run in full.runs:
        record = records[run.hash]
        path = Path(record.final_checkpoint or workspace.runs_dir / run.hash / CHECKPOINT_NAME)
        if checkpoint_problem(path, record.checkpoint_size, record.checkpoint_sha256 or None):
            return None
    summary = Summary(full.spec.id, full.scale)
    summary.outcomes = [RunOutcome(run, "skipped", records[run.hash].run_id) for run in full.runs]
    return summary


def find_damaged(full: FullPlan, tracker: Any, workspace: Workspace,
                 verify: bool = False) -> list[Damaged]:
    """The planned runs recorded as finished whose final checkpoint is damaged.

    Cheap by default (existence, recorded size, the zip directory at the file's end); with
    ``verify`` each file is read through (sha256, or the zip CRCs for runs recorded before the
    checksum was). Runs recorded before sizes were are trusted unless missing, empty or not a
    zip archive.
    """
    from lafite.checkpoint import CHECKPOINT_NAME, checkpoint_problem
    from lafite.tracking import FINISHED

    found = []
    for run in full.runs:
        record = tracker.find_child(full.spec.id, run.hash)
        if record is None or record.status != FINISHED:
            continue
        path = Path(record.final_checkpoint or workspace.runs_dir / run.hash / CHECKPOINT_NAME)
        problem = checkpoint_problem(path, record.checkpoint_size,
                                     record.checkpoint_sha256 or None, verify=verify)
        if problem is not None:
            found.append(Damaged(run, record.run_id, path, problem))
    return found


def damaged_message(full: FullPlan, damaged: list[Damaged]) -> str:
    lines = "\n".join(f"  {d.run.row.name} seed {d.run.seed} (MLflow run {d.run_id}): {d.path} "
                      f"{d.problem}" for d in damaged)
    # A store shared by machines that do not share the workspace: the file is elsewhere.
    elsewhere = (" If a missing file was written on another machine that shares this MLflow "
                 "store but not this workspace, run the command there instead."
                 if any(d.problem == "is missing" for d in damaged) else "")
    return (
        f"{full.spec.id} ({full.scale}): the final checkpoint of {len(damaged)} finished run(s) is "
        f"damaged, so `lafite-repro evaluate` and `generate` cannot use them:\n{lines}\n"
        "Restore the file(s) from a backup and run the same command again, or add "
        "--retrain-damaged to train these runs again from scratch (each run folder is moved "
        "aside, not deleted, and the old MLflow run is marked FAILED with the tag "
        f"lafite.damaged).{elsewhere}"
    )


def _set_aside(tracker: Any, damaged: Damaged, workspace: Workspace, console: Console) -> None:
    """Move a damaged run's folder aside and retire its MLflow run, so that it trains anew."""
    run_dir = workspace.runs_dir / damaged.run.hash
    aside = None
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(run_dir, aside)
        console.print(f"{damaged.run.label}: moved {run_dir} to {aside} (delete it once you no "
                      "longer need it)", markup=False)
    where = f"; its run folder was moved to {aside}" if aside else ""
    tracker.mark_damaged(damaged.run_id, f"final checkpoint {damaged.path} {damaged.problem}"
                                         f"{where}; retrained under a new MLflow run")


def print_summary(summary: Summary, console: Console) -> None:
    table = Table("row", "seed", "outcome", "seconds", "MLflow run", title=f"{summary.spec_id} ({summary.scale})")
    for o in summary.outcomes:
        table.add_row(o.run.row.name, str(o.run.seed), o.status, f"{o.seconds:.1f}", o.run_id)
    console.print(table)


__all__ = [
    "Damaged",
    "FullPlan",
    "RunLock",
    "RunOutcome",
    "Summary",
    "damaged_message",
    "describe_plan",
    "find_damaged",
    "make_plan",
    "preflight",
    "print_summary",
    "run_spec",
]
