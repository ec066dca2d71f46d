"""Train one planned run under its MLflow child run: the one piece every launcher executes.

The local launcher calls :func:`train_and_record` in the runner's process. The torchrun and
SLURM launchers write a :class:`~lafite.launch.ticket.RunTicket` and start processes that call
:func:`execute` on it (``python -m lafite.launch.execute TICKET``; under torchrun one process per
GPU, rank 0 alone talking to MLflow). Whichever launcher ran it, a run ends the same way: its
final checkpoint recorded with size and sha256, its final evaluation logged, its MLflow run
FINISHED; or FAILED with the reason in the ``lafite.failure`` tag.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lafite import jobs as jobs_mod
from lafite.config import RunConfig
from lafite.errors import UserError
from lafite.launch.ticket import RunTicket, read_ticket
from lafite.run_records import FAILED, FINISHED, KILLED
from lafite.workspace import Workspace

EVALUATION_KEY = "_evaluation"
TAG_FAILURE = "lafite.failure"
TAG_PREVIOUS_FAILURE = "lafite.previous_failure"
TAG_LAUNCHER = "lafite.launcher"
TAG_SLURM_JOB = "lafite.slurm.job_id"
TAG_SLURM_LOG = "lafite.slurm.log"
TAG_SLURM_RESTARTS = "lafite.slurm.restarts"
TAG_WORLD_SIZE = "lafite.world_size"


def make_evaluator(cfg: RunConfig, workspace: Workspace) -> Callable[[Any, float], dict[str, Any]]:
    """The evaluation training calls periodically and at the end (the metrics module's).

    Returns MLflow-ready metric values plus the full result (not-computed reasons, labels,
    details) under ``EVALUATION_KEY``, which is stored as a JSON artifact.
    """

    def evaluate(g_ema: Any, kimg: float) -> dict[str, Any]:
        from lafite.metrics.evaluate import evaluate_generator

        result = evaluate_generator(cfg, g_ema, workspace)
        return {**result.for_tracking(), EVALUATION_KEY: result.to_dict()}

    return evaluate


@dataclass
class Recorded:
    """How one execution ended: "finished" or "failed" (with the reason)."""

    status: str
    seconds: float
    error: str = ""


def job_extras(cfg: RunConfig, needed: list[jobs_mod.Job], workspace: Workspace) -> dict[str, Any]:
    """The built artefacts ``train_run`` takes from the jobs a run needs."""
    extra: dict[str, Any] = {}
    for job in needed:
        path = jobs_mod.artifact_path(job, workspace)
        if path is None:
            raise UserError(
                f"job {job.name!r} ({job.kind}, {job.hash}) that this run needs is not built in "
                f"{workspace.root}; run the table again (it builds or submits its jobs first)")
        if job.name == cfg.perturb.nn_job and job.kind == "inference-model":
            from lafite.perturb import load_inference_model

            extra["inference_model"] = load_inference_model(path)
        elif job.name == cfg.train.init_job and job.kind == "generator":
            extra["init_checkpoint"] = path
        elif job.name == cfg.data.captions_job and job.kind == "captioner":
            extra["captions"] = path
    return extra


def job_tags(needed: list[jobs_mod.Job], workspace: Workspace) -> dict[str, str]:
    """Which build of each job a run used (two rows may need two builds of one job, e.g.
    Table 6's two world CLIPs)."""
    return {f"lafite.job.{job.name}": f"{job.hash} {jobs_mod.artifact_path(job, workspace)}"
            for job in needed}


def retire_failure(client: Any, run_id: str) -> None:
    """A new attempt of a run that failed: why the last one ended moves to
    ``lafite.previous_failure``, so that ``lafite.failure`` always describes the current one."""
    earlier = client.get_run(run_id).data.tags.get(TAG_FAILURE)
    if earlier:
        client.set_tag(run_id, TAG_PREVIOUS_FAILURE, earlier)
        client.delete_tag(run_id, TAG_FAILURE)


def train_and_record(
    logger: Any,
    cfg: RunConfig,
    run_dir: Path,
    workspace: Workspace,
    needed: list[jobs_mod.Job],
    *,
    on_progress: Callable[[float], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> Recorded:
    """Train (or resume) ``cfg`` in ``run_dir``, logging to ``logger`` (an open RunLogger),
    evaluate at the end if training did not, record the final checkpoint, close the run.

    A UserError and a KeyboardInterrupt propagate (the run is closed FAILED or KILLED first);
    any other exception is recorded as the run's failure and returned.
    """
    from lafite.checkpoint import file_fingerprint
    from lafite.tracking import TAG_CHECKPOINT, TAG_CHECKPOINT_SHA256, TAG_CHECKPOINT_SIZE
    from lafite.train import TrainCallbacks, load_generator, train_run

    started = time.perf_counter()
    evaluated_at: list[float] = []

    def on_metrics(kimg: float, values: dict[str, Any]) -> None:
        logger.log_metrics(kimg, values)
        if on_progress:
            on_progress(kimg)

    def on_evaluate(kimg: float, values: dict[str, Any]) -> None:
        evaluated_at.append(kimg)
        values = dict(values)
        full_result = values.pop(EVALUATION_KEY, None)
        logger.log_metrics(kimg, values)
        if full_result is not None:
            logger.log_text(json.dumps(full_result, indent=2, default=str),
                            f"evaluation/kimg_{kimg:010.3f}.json")
            skipped = full_result.get("not_computed") or {}
            if skipped:
                logger.set_tags({f"lafite.not_computed.{k}": str(v)[:500] for k, v in skipped.items()})

    evaluate = make_evaluator(cfg, workspace)
    callbacks = TrainCallbacks(
        on_metrics=on_metrics,
        on_evaluate=on_evaluate,
        on_tags=logger.set_tags,  # e.g. the precision "auto" resolved to, and why
        on_artifact=lambda path: logger.log_artifact(path, "samples"),
        on_checkpoint=lambda path: None,
        evaluate=evaluate,
    )

    def fail(status: str, reason: str) -> None:
        logger.set_tags({TAG_FAILURE: reason[:4000]})
        if on_failure:
            on_failure(reason)
        logger.close(status)

    try:
        result = train_run(cfg, run_dir, workspace, callbacks,
                           **job_extras(cfg, needed, workspace))
        if not evaluated_at or evaluated_at[-1] < result.kimg:
            # Killed after the last checkpoint but before (or during) the final evaluation:
            # training has nothing left to do, the evaluation still has.
            g_ema, _ = load_generator(result.final_checkpoint)
            on_evaluate(result.kimg, evaluate(g_ema, result.kimg))
    except KeyboardInterrupt:
        logger.close(KILLED)
        raise
    except UserError as exc:
        fail(FAILED, str(exc))
        raise
    except Exception as exc:  # recorded, reported at the end; the other rows still run
        reason = f"{type(exc).__name__}: {exc}"
        fail(FAILED, reason)
        return Recorded("failed", time.perf_counter() - started, reason)
    checkpoint = str(Path(result.final_checkpoint).resolve())
    # Recorded so that a later `run` can tell a damaged checkpoint from a finished one.
    size, sha256 = file_fingerprint(Path(checkpoint))
    logger.set_tags({TAG_CHECKPOINT: checkpoint, TAG_CHECKPOINT_SIZE: str(size),
                     TAG_CHECKPOINT_SHA256: sha256})
    logger.log_text(checkpoint + "\n", "final_checkpoint.txt")
    logger.close(FINISHED)
    return Recorded("finished", time.perf_counter() - started)


def execute(ticket: RunTicket, launcher_tags: dict[str, str] | None = None) -> str:
    """Execute a ticket in this process: as the only process, or as one rank of a torchrun /
    SLURM task group (``RANK``/``WORLD_SIZE`` in the environment). Returns "finished",
    "failed", or "rank" (a non-zero rank, which records nothing)."""
    from lafite.train import TrainCallbacks, train_run

    workspace = Workspace.resolve(ticket.workspace)
    cfg = RunConfig.from_dict(ticket.config, where=f"ticket {ticket.path}")
    needed = jobs_mod.needed_jobs(cfg)
    run_dir = Path(ticket.run_dir)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:
        # Every rank trains; rank 0 alone writes checkpoints, evaluates and talks to MLflow.
        # The others still pass an evaluate hook: training waits for rank 0's evaluation at a
        # barrier only when there is one, and every rank must meet at the same barriers.
        train_run(cfg, run_dir, workspace, TrainCallbacks(evaluate=lambda g_ema, kimg: None),
                  **job_extras(cfg, needed, workspace))
        return "rank"
    from lafite.tracking import TAG_RUN_DIR, Tracker

    tracker = Tracker(workspace, ticket.tracking_uri)
    logger = tracker.start_child(
        ticket.spec_id, ticket.parent_id, row=ticket.row, scale=ticket.scale, seed=ticket.seed,
        config_hash=ticket.hash, config=cfg.to_dict(), flat_params=cfg.flat(),
        resume_run_id=ticket.run_id,
    )
    retire_failure(tracker.client, logger.run_id)
    logger.set_tags({TAG_RUN_DIR: str(run_dir), TAG_WORLD_SIZE: str(world),
                     **job_tags(needed, workspace), **(launcher_tags or {})})
    logger.flush()
    recorded = train_and_record(logger, cfg, run_dir, workspace, needed,
                                on_progress=_print_progress(ticket))
    print(f"{ticket.row} (seed {ticket.seed}): {recorded.status} in {recorded.seconds:.1f} s"
          + (f": {recorded.error}" if recorded.error else ""), flush=True)
    return recorded.status


def _print_progress(ticket: RunTicket) -> Callable[[float], None]:
    """A line per 10% of the run in the job's log (no live display in a batch log)."""
    total = max(float(ticket.config.get("train", {}).get("kimg", 0) or 0), 1e-9)
    shown = [-1]

    def show(kimg: float) -> None:
        tenth = int(10 * kimg / total)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"{ticket.row} (seed {ticket.seed}): {kimg:.3f}/{total:g} kimg", flush=True)

    return show


def main(argv: list[str] | None = None) -> int:
    """``python -m lafite.launch.execute TICKET`` (what torchrun starts on every rank)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lafite.launch.execute TICKET.json", file=sys.stderr)
        return 2
    ticket = read_ticket(Path(args[0]))
    launcher = os.environ.get("LAFITE_LAUNCHER", "torchrun")
    try:
        status = execute(ticket, {TAG_LAUNCHER: launcher})
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
