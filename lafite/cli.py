"""The ``lafite-repro`` command line: the one CLI module of the suite.

Every command is a thin layer over the library: it resolves the workspace, calls one function
and prints what came back. A mistake the user can fix (a bad table id, spec, flag or path) is a
:class:`~lafite.errors.UserError`: it is printed as one message without a traceback and the exit
status is 2. Heavy imports (torch, mlflow) happen inside the commands that need them, so that
``list``, ``show`` and a ``run`` with nothing left to do start quickly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from lafite.errors import UserError
from lafite.spec import SCALES
from lafite.workspace import Workspace

SCALE_CHOICE = click.Choice(SCALES)


class _Group(click.Group):
    """Turns every UserError into one message and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _workspace(ctx: click.Context) -> Workspace:
    return ctx.obj["workspace"]


def _check_tracking(tracking_uri: str | None) -> None:
    """Stop in seconds, before any work, when the tracking server named by --tracking-uri or
    $MLFLOW_TRACKING_URI does not answer (MLflow itself retries for minutes)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.startswith(("http://", "https://")):
        return  # a local store: nothing to reach, and no reason to import MLflow here
    from lafite.tracking import check_server

    check_server(tracking_uri)


def _out() -> Console:
    # Pipes and CI logs get a wide fixed width instead of rich's 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", "-w", "home", metavar="DIR", default=None,
    help="Workspace folder (default: $LAFITE_HOME or ./lafite-workspace).",
)
@click.version_option(package_name="lafite-repro")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """Reproduce the tables and figures of LAFITE (CVPR 2022) at smoke, mini or paper scale."""
    ctx.ensure_object(dict)
    ctx.obj["workspace"] = Workspace.resolve(home)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# -- list, show ------------------------------------------------------------------------------


@main.command("list")
@click.option("--tracking-uri", metavar="URI", default=None,
              help="MLflow store (default: $MLFLOW_TRACKING_URI or the workspace's sqlite file).")
@click.pass_context
def list_cmd(ctx: click.Context, tracking_uri: str | None) -> None:
    """Tables and figures, their rows and how many have finished runs per scale."""
    from lafite import spec as spec_mod

    workspace = _workspace(ctx)
    tracker = None
    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (workspace.root / "mlflow.db").exists():
        from lafite.tracking import Tracker

        tracker = Tracker(workspace, tracking_uri)
    table = Table("id", "kind", "title", "rows", *(f"finished {s}" for s in SCALES))
    for spec_id, path in spec_mod.spec_files().items():
        try:
            spec = spec_mod.load(path)
        except UserError as exc:
            table.add_row(spec_id, "?", f"[red]invalid: {exc}[/red]", "", *("" for _ in SCALES))
            continue
        rows = spec.trainable_rows
        counts = []
        for scale in SCALES:
            if scale not in spec.scales:
                counts.append("-")
                continue
            done = 0
            if tracker is not None:
                finished = {r.row for r in tracker.children(spec.id, scale) if r.status == "FINISHED"}
                done = sum(r.name in finished for r in rows)
            counts.append(f"{done}/{len(rows)}")
        table.add_row(spec.id, spec.kind, spec.title, str(len(spec.rows)), *counts)
    _out().print(table)


@main.command()
@click.argument("table", required=False)
@click.option("--scale", type=SCALE_CHOICE, default=None,
              help="Also show each row's resolved configuration at this scale.")
@click.option("--study", metavar="STUDY", default=None,
              help="Show a tuning study instead: its state and best trials.")
@click.option("--storage", metavar="URL", default=None, help="Optuna storage of --study.")
@click.pass_context
def show(ctx: click.Context, table: str | None, scale: str | None, study: str | None,
         storage: str | None) -> None:
    """Rows of TABLE, the paper's numbers, and (with --scale) the resolved configurations."""
    import yaml

    from lafite import spec as spec_mod

    if study is not None:
        from lafite.tuning import describe_study

        click.echo(describe_study(study, _workspace(ctx), scale or "mini", storage))
        return
    if table is None:
        raise UserError("show: name a table or figure (see `lafite-repro list`) or give --study")
    spec = spec_mod.find(table)
    out = _out()
    ref = ", ".join(f"{k} {v}" for k, v in spec.paper.items())
    out.print(f"[bold]{spec.id}[/bold]: {spec.title} ({ref})")
    if spec.notes:
        out.print(spec.notes.strip())
    grid = Table("row", *(f"{m.label or m.name} {m.arrow}".rstrip() for m in spec.metrics),
                 title="the paper's numbers, as printed")
    for row in spec.rows:
        label = row.name + (" (reference)" if row.reference else "")
        grid.add_row(label, *(f"{row.paper[m.name]:.{2 if m.ranked else 0}f}"
                              if m.name in row.paper else "-" for m in spec.metrics))
    out.print(grid)
    out.print("scales: " + ", ".join(f"{s} ({spec.scales[s].seeds} seed(s))"
                                     for s in SCALES if s in spec.scales))
    if scale is None:
        return
    base = spec.base_config(scale)
    flat = base.flat()
    changes = Table("row", "changes from the base configuration", title=f"rows at scale {scale}")
    for row in spec.trainable_rows:
        cfg = spec.resolve(row, scale).flat()
        diff = {k: v for k, v in cfg.items() if flat.get(k) != v}
        changes.add_row(row.name, ", ".join(f"{k}={v}" for k, v in diff.items()) or "-")
    out.print(changes)
    out.print(f"[bold]base configuration at scale {scale}[/bold]:")
    out.print(yaml.safe_dump(base.to_dict(), sort_keys=False), markup=False)


# -- run ---------------------------------------------------------------------------------------

LAUNCHER_CHOICE = click.Choice(["local", "torchrun", "slurm"])


def _slurm_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The SLURM settings of --launcher slurm (also settable per scale in a spec and in the
    cluster file $LAFITE_CLUSTER_CONFIG or ~/.config/lafite-repro/cluster.yaml)."""
    options = [
        click.option("--partition", metavar="NAME", default=None, help="SLURM partition."),
        click.option("--time", "time_limit", metavar="LIMIT", default=None,
                     help="Time limit per job: minutes or D-HH:MM:SS (a job reaching it "
                          "checkpoints, is requeued and resumes)."),
        click.option("--account", metavar="NAME", default=None, help="SLURM account."),
        click.option("--qos", metavar="NAME", default=None, help="SLURM quality of service."),
        click.option("--constraint", metavar="FEATURES", default=None,
                     help="Node features (sbatch --constraint)."),
        click.option("--gpus-per-run", type=click.IntRange(min=0), default=None,
                     help="GPUs (DDP processes) of one node per run; 0 = CPU."),
        click.option("--cpus-per-task", type=click.IntRange(min=1), default=None,
                     help="CPU cores per process."),
        click.option("--mem-gb", type=click.IntRange(min=0), default=None,
                     help="Memory per node in GB."),
        click.option("--sbatch", "sbatch_args", multiple=True, metavar="--OPTION[=VALUE]",
                     help="Extra sbatch argument (repeatable), e.g. --sbatch=--exclusive."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _slurm_settings(spec_section: dict[str, Any] | None, where: str,
                    values: dict[str, Any]) -> Any:
    from lafite.launch.settings import resolve

    given = {k: v for k, v in values.items() if v not in (None, ())}
    if "time_limit" in given:
        given["time"] = given.pop("time_limit")
    if "sbatch_args" in given:
        given["sbatch"] = list(given.pop("sbatch_args"))
    return resolve(spec_section, where, given)


def _slurm_only(launcher: str, values: dict[str, Any]) -> None:
    given = [k for k, v in values.items() if v not in (None, ())]
    if launcher != "slurm" and given:
        flag = {"time_limit": "time", "sbatch_args": "sbatch"}.get(given[0], given[0])
        raise UserError(f"--{flag.replace('_', '-')} is a SLURM setting; add --launcher slurm")


def _describe_submissions(full: Any, settings: Any, workspace: Workspace, out: Console) -> None:
    """What --launcher slurm would submit: one sbatch line per job build and per run."""
    from lafite import jobs as jobs_mod
    from lafite.launch import slurm as slurm_mod
    from lafite.runner import replace_gpus

    out.print("SLURM jobs it would submit (sbatch options):")
    builds: dict[str, str] = {}
    for job in full.jobs:
        if jobs_mod.artifact_path(job, workspace) is not None:
            continue
        name = slurm_mod.job_name("build", job.name, job.hash)
        builds[job.hash] = f"<{name}>"
        line = slurm_mod.sbatch_line(replace_gpus(settings, 1 if settings.gpus_per_run else 0), name)
        out.print(f"  build {job.label}: {line}", markup=False)
    for run in full.runs:
        name = slurm_mod.job_name(full.spec.id, full.scale, run.row.name, f"s{run.seed}")
        after = [builds[j.hash] for j in full.jobs_of_run[run.hash] if j.hash in builds]
        out.print(f"  run {run.label}: {slurm_mod.sbatch_line(settings, name, after)}",
                  markup=False)


@main.command()
@click.argument("table")
@click.option("--scale", type=SCALE_CHOICE, default="mini", show_default=True,
              help="smoke: seconds (tests); mini: the built-in world on a CPU; paper: the paper.")
@click.option("--rows", "rows", multiple=True, metavar="NAME",
              help="Run only this row (repeat for several). Default: every row.")
@click.option("--seeds", type=click.IntRange(min=1), default=None, metavar="N",
              help="Seeds 0..N-1 per row (default: the scale's count in the spec).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a configuration key in every run, e.g. --set data.data_root=/data "
                   "(repeatable; part of each run's hash).")
@click.option("--dry-run", is_flag=True, help="Print the plan and configurations; run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display (CI); one summary line.")
@click.option("--tracking-uri", metavar="URI", default=None,
              help="MLflow store (default: $MLFLOW_TRACKING_URI or the workspace's sqlite file).")
@click.option("--verify", is_flag=True,
              help="Also read each finished run's final checkpoint through and check its sha256 "
                   "(by default only its presence and size are checked).")
@click.option("--retrain-damaged", is_flag=True,
              help="Train finished runs whose final checkpoint is missing or damaged again from "
                   "scratch (their run folders are moved aside) instead of stopping.")
@click.option("--launcher", type=LAUNCHER_CHOICE, default="local", show_default=True,
              help="Where each run executes: in this process, as torchrun DDP processes on "
                   "this node (--gpus), or as one SLURM job per run (submitit).")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="--launcher torchrun: processes (one per GPU; gloo on a CPU) per run.")
@click.option("--wait", is_flag=True,
              help="--launcher slurm: wait until every submitted run has left the queue.")
@_slurm_options
@click.pass_context
def run(ctx: click.Context, table: str, scale: str, rows: tuple[str, ...], seeds: int | None,
        assignments: tuple[str, ...], dry_run: bool, quiet: bool, tracking_uri: str | None,
        verify: bool, retrain_damaged: bool, launcher: str, gpus: int, wait: bool,
        **slurm_values: Any) -> None:
    """Run every row of TABLE at a scale; finished runs are skipped, interrupted ones resumed.

    To resume after an interruption, run the same command again. A finished run whose final
    checkpoint is missing or damaged stops the command with a list of such runs; restore the
    files, or add --retrain-damaged. With --launcher slurm the command submits the jobs and
    returns (watch them with `lafite-repro status TABLE`), or waits with --wait.
    """
    from lafite import runner
    from lafite import spec as spec_mod

    _slurm_only(launcher, slurm_values)
    if not dry_run:
        _check_tracking(tracking_uri)
        _workspace(ctx).check()
    spec = spec_mod.find(table)
    extra = spec_mod.parse_assignments(assignments)
    full = runner.make_plan(spec, scale, seeds, list(rows) or None, extra, _workspace(ctx))
    settings = None
    if launcher == "slurm":
        section = spec.scales[scale].slurm if scale in spec.scales else {}
        settings = _slurm_settings(section, f"{spec.path or spec.id}: scales.{scale}.slurm",
                                   slurm_values)
    out = _out()
    if dry_run:
        runner.describe_plan(full, out)
        if settings is not None:
            _describe_submissions(full, settings, _workspace(ctx), out)
        elif launcher == "torchrun":
            out.print(f"each run: torchrun --standalone --nproc_per_node={gpus} "
                      "-m lafite.launch.execute <run folder>/ticket.json", markup=False)
        return
    summary = runner.run_spec(
        spec, scale, _workspace(ctx), seeds=seeds, rows=list(rows) or None, extra=extra,
        tracking_uri=tracking_uri, quiet=quiet, verify=verify, retrain_damaged=retrain_damaged,
        launcher=launcher, processes=gpus, slurm=settings, wait=wait,
    )
    for label, job_id, how in summary.builds:
        click.echo(f"build {label}: SLURM job {job_id} ({how})")
    for o in summary.outcomes:
        if o.job_id:
            click.echo(f"{o.run.label}: SLURM job {o.job_id} ({o.status}; log: "
                       f"{Path(_workspace(ctx).root, 'slurm', 'logs', o.job_id)})")
    counts = {s: summary.count(s) for s in ("trained", "resumed", "retrained", "skipped",
                                            "submitted", "queued", "failed")}
    line = f"{spec.id} ({scale}): {len(summary.outcomes)} run(s): " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n
    )
    if quiet:
        click.echo(line)
    else:
        runner.print_summary(summary, out)
        out.print(line)
    if summary.failed:
        names = ", ".join(o.run.label for o in summary.failed)
        click.echo(f"error: {len(summary.failed)} run(s) failed: {names}. "
                   "Fix the cause and run the same command again to resume them.", err=True)
        ctx.exit(1)


@main.command()
@click.argument("table")
@click.option("--scale", type=SCALE_CHOICE, default="mini", show_default=True)
@click.option("--rows", "rows", multiple=True, metavar="NAME", help="Only this row (repeatable).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, metavar="N")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="The same overrides the runs were started with.")
@click.option("--tracking-uri", metavar="URI", default=None)
@click.pass_context
def status(ctx: click.Context, table: str, scale: str, rows: tuple[str, ...], seeds: int | None,
           assignments: tuple[str, ...], tracking_uri: str | None) -> None:
    """Each run of TABLE: pending, running (kimg, metrics), requeued, finished, failed (why,
    and its log), from MLflow and the SLURM queue."""
    from lafite import runner
    from lafite import spec as spec_mod
    from lafite.status import table_status
    from lafite.tracking import Tracker

    _check_tracking(tracking_uri)
    spec = spec_mod.find(table)
    full = runner.make_plan(spec, scale, seeds, list(rows) or None,
                            spec_mod.parse_assignments(assignments), _workspace(ctx))
    tracker = Tracker(_workspace(ctx), tracking_uri)
    states = table_status(full, _workspace(ctx), tracker)
    out = _out()
    shown = Table("run", "state", "kimg", "metrics", "SLURM job", "detail",
                  title=f"{spec.id} ({scale})")
    for st in states:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(st.metrics.items()))
        kimg = f"{st.kimg:g}" if st.kimg is not None else ""
        detail = st.detail + (f" (log: {st.log})" if st.log and st.state == "failed" else "")
        shown.add_row(st.label, st.state, kimg, metrics, st.job_id, detail)
    out.print(shown)
    counts: dict[str, int] = {}
    for st in states:
        counts[st.state] = counts.get(st.state, 0) + 1
    out.print(f"{spec.id} ({scale}): " + ", ".join(f"{n} {k}" for k, n in counts.items()),
              markup=False)


# -- tune, report ------------------------------------------------------------------------------


@main.command()
@click.option("--study", required=True, metavar="STUDY",
              help="A study file's id (experiments/studies/*.yaml).")
@click.option("--scale", type=SCALE_CHOICE, default="mini", show_default=True)
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Trials to reach (default: the study file's).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes sharing the study on this machine.")
@click.option("--storage", metavar="URL", default=None,
              help="Optuna storage (default: the workspace's optuna.db).")
@click.option("--dry-run", is_flag=True, help="Print the search space and plan; run nothing.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--tracking-uri", metavar="URI", default=None)
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local",
              show_default=True,
              help="local: worker processes on this machine; slurm: one SLURM job per worker "
                   "(use a PostgreSQL or journal --storage that every node can reach).")
@click.option("--wait", is_flag=True, help="--launcher slurm: wait for the workers to finish.")
@_slurm_options
@click.pass_context
def tune(ctx: click.Context, study: str, scale: str, trials: int | None, workers: int,
         storage: str | None, dry_run: bool, quiet: bool, tracking_uri: str | None,
         launcher: str, wait: bool, **slurm_values: Any) -> None:
    """Tune hyper-parameters of a row with Optuna; running it again continues the study."""
    from lafite.tuning import run_study

    _slurm_only(launcher, slurm_values)
    settings = None
    if launcher == "slurm":
        settings = _slurm_settings(None, "", slurm_values)
    if not dry_run:
        _check_tracking(tracking_uri)
        _workspace(ctx).check()
    summary = run_study(study, _workspace(ctx), scale=scale, trials=trials, workers=workers,
                        storage=storage, dry_run=dry_run, quiet=quiet, tracking_uri=tracking_uri,
                        slurm=settings, wait=wait)
    for index, job_id in enumerate(summary.worker_job_ids):
        click.echo(f"worker {index}: SLURM job {job_id} (log: "
                   f"{Path(_workspace(ctx).root, 'slurm', 'logs', job_id)})")
    if not dry_run:
        click.echo(summary.line())


@main.command()
@click.argument("tables", nargs=-1)
@click.option("--scale", type=SCALE_CHOICE, default=None,
              help="Only this scale (default: every scale with finished runs).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["html", "markdown"]), default="html",
              show_default=True)
@click.option("--tracking-uri", metavar="URI", default=None)
@click.pass_context
def report(ctx: click.Context, tables: tuple[str, ...], scale: str | None, out_dir: str,
           fmt: str, tracking_uri: str | None) -> None:
    """Paper-versus-reproduced tables and figures from the finished runs (HTML or Markdown)."""
    from lafite.report import build_report

    _check_tracking(tracking_uri)
    written = build_report(_workspace(ctx), scale=scale, out_dir=Path(out_dir), fmt=fmt,
                           tracking_uri=tracking_uri, specs=list(tables) or None)
    click.echo(str(written[0]))


# -- ui ----------------------------------------------------------------------------------------


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; keep 127.0.0.1 unless you mean to share it.")
@click.pass_context
def ui(ctx: click.Context, port: int, host: str) -> None:
    """Start the MLflow UI on the workspace's store; prints its address once it answers."""
    import subprocess

    from lafite.tracking import serve_command, wait_until_serving

    workspace = _workspace(ctx)
    command, env = serve_command(workspace, host, port)
    url = f"http://{host}:{port}"
    click.echo(f"starting the MLflow UI for {workspace.root} ...", err=True)
    server = subprocess.Popen(command, env={**os.environ, **env})
    try:
        ready = wait_until_serving(url, server)
        if ready is None:
            if server.poll() is None:
                server.terminate()
            raise UserError(
                f"the MLflow UI did not answer at {url} (its server exited with code "
                f"{server.wait()}; see its messages above). If the port is taken, choose "
                "another with --port"
            )
        click.echo(f"MLflow UI at {url} (answered after {ready:.1f} s; Ctrl-C stops it)", err=True)
        server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(timeout=30)


# -- clip, world -------------------------------------------------------------------------------


@main.group(cls=_Group)
def clip() -> None:
    """The world's small CLIP (the condition space at mini and smoke scale)."""


def _print_numbers(title: str, numbers: dict[str, Any]) -> None:
    table = Table("key", "value", title=title)
    for key, value in numbers.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _out().print(table)


_PATCH_SIZE = click.option(
    "--patch-size", type=click.IntRange(min=0), default=0, show_default=True,
    help="Patch size (px) of the vision transformer; 0 = the shipped one (clip.world_patch_size; "
         "8 is Table 6's ViT-B/16 analogue).")


@clip.command("pretrain")
@click.option("--resolution", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_PATCH_SIZE
@click.pass_context
def clip_pretrain(ctx: click.Context, resolution: int, seed: int, patch_size: int) -> None:
    """Train the world's CLIP for RESOLUTION (once; cached) and print its retrieval numbers."""
    from lafite.clip import pretrain_world_clip, world_clip_report

    workspace = _workspace(ctx)
    pretrain_world_clip(workspace, resolution, seed=seed, patch_size=patch_size)
    _print_numbers("world CLIP", world_clip_report(workspace, resolution, seed, patch_size=patch_size))


@clip.command("eval")
@click.option("--resolution", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_PATCH_SIZE
@click.pass_context
def clip_eval(ctx: click.Context, resolution: int, seed: int, patch_size: int) -> None:
    """Re-measure held-out retrieval and the attribute probe (what its features say about shape, colour, size, position, background) of the trained world CLIP."""
    from lafite.clip import world_clip_report

    _print_numbers("world CLIP", world_clip_report(_workspace(ctx), resolution, seed, recompute=True,
                                                   patch_size=patch_size))


@main.group(cls=_Group)
def world() -> None:
    """The built-in synthetic world: its inspector and its datasets on disk."""


@world.command("inspector")
@click.option("--resolution", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def world_inspector(ctx: click.Context, resolution: int, seed: int) -> None:
    """Train the world's inspector (once; cached) and print its held-out accuracies."""
    from lafite.data.inspector import load_inspector_file, train_inspector

    path = train_inspector(_workspace(ctx), resolution, seed=seed)
    numbers = {"path": str(path), **load_inspector_file(path).metrics}
    _print_numbers(f"inspector {resolution}px", numbers)


@world.command("anchors")
@click.argument("table", default="table5")
@click.option("--scale", type=click.Choice([s for s in SCALES if s != "paper"]), default="mini",
              show_default=True)
@click.option("--row", default=None, help="Row whose evaluation settings to use (default: the first).")
@click.option("--n", "n", type=click.IntRange(min=2), default=None,
              help="Images per anchor (default: the row's eval.n_samples).")
@click.pass_context
def world_anchors(ctx: click.Context, table: str, scale: str, row: str | None, n: int | None) -> None:
    """FID-0 of real world images under controlled corruptions (objects drawn as circles, a
    main attribute redrawn, blur, ...), with TABLE's evaluation settings at SCALE: the scale
    that a world FID number reads against."""
    from lafite import spec as spec_mod
    from lafite.metrics.anchors import fid_anchors

    spec = spec_mod.find(table)
    chosen = spec.row(row) if row else spec.trainable_rows[0]
    cfg = spec.resolve(chosen, scale)
    workspace = _workspace(ctx)
    console = _out()
    with console.status("scoring anchors ...") as status:
        anchors = fid_anchors(cfg, workspace, n, progress=lambda name: status.update(f"scoring {name} ..."))
    out = Table("anchor", "FID-0", "what is scored",
                title=f"FID-0 anchors, {table} {scale} ({cfg.world.domain}, {cfg.data.resolution}px, "
                      f"reference: {cfg.eval.reference_split}; world analogue, not the paper's FID)")
    for anchor in anchors:
        out.add_row(anchor.name, f"{anchor.fid:.1f}", anchor.description)
    console.print(out)


@world.command("materialise")
@click.option("--domain", default="scenes", show_default=True,
              help="scenes, objects, narratives or web.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--resolution", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--size", type=click.IntRange(min=1), default=None, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write (default: inside the workspace).")
@click.pass_context
def world_materialise(ctx: click.Context, domain: str, split: str, resolution: int,
                      size: int | None, seed: int, out_dir: str | None) -> None:
    """Write a world split as PNG + .txt files (the format real datasets use)."""
    from lafite.data.world import World, materialise

    world_data = World(domain, split, resolution=resolution, seed=seed, size=size)
    target = Path(out_dir) if out_dir else (
        _workspace(ctx).world_dir / f"{domain}-{split}-r{resolution}-s{seed}-n{len(world_data)}"
    )
    click.echo(str(materialise(world_data, target, progress=True)))


# -- generate, evaluate ------------------------------------------------------------------------


def _checkpoint(ctx: click.Context, run_ref: str, tracking_uri: str | None) -> Path:
    """A run given as a checkpoint file, a run folder, or an MLflow run id."""
    path = Path(run_ref)
    if path.is_file():
        return path
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        return path / "checkpoint.pt"
    from lafite.tracking import Tracker

    return Tracker(_workspace(ctx), tracking_uri).run_checkpoint(run_ref)


@main.command()
@click.option("--run", "run_ref", required=True, metavar="RUN",
              help="MLflow run id, run folder or checkpoint file.")
@click.option("--caption", "captions", multiple=True, metavar="TEXT",
              help="Caption to draw (repeat for several).")
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Condition on this image's CLIP feature instead (language-free models).")
@click.option("--n", "n", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Images per caption.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), default="grid.png",
              show_default=True)
@click.option("--tracking-uri", metavar="URI", default=None)
@click.pass_context
def generate(ctx: click.Context, run_ref: str, captions: tuple[str, ...], image: str | None,
             n: int, seed: int, out: str, tracking_uri: str | None) -> None:
    """Draw images from a trained generator for captions (or an image) into a grid PNG."""
    if not captions and image is None:
        raise UserError("generate: give at least one --caption TEXT or an --image PATH")
    if image is not None and len(captions) > 1:
        raise UserError("generate: with --image give at most one --caption (image + caption)")
    from lafite import sampling
    from lafite.encoders import load_text_encoder
    from lafite.train import load_generator

    workspace = _workspace(ctx)
    g_ema, cfg = load_generator(_checkpoint(ctx, run_ref, tracking_uri))
    if image is not None and cfg.encoder.name != "clip":
        raise UserError(
            f"generate --image: this run conditions on {cfg.encoder.name!r}, a text-only encoder "
            "with no image features; give --caption only"
        )
    encoder = load_text_encoder(cfg, workspace)
    if image is None:
        grid = sampling.make_grid(g_ema, list(captions), encoder, n, seed)
    else:
        grid = sampling.generate_grid(
            g_ema, encoder, caption=captions[0] if captions else None, image=image, n=n, seed=seed
        )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path)
    click.echo(str(out_path))


@main.command()
@click.option("--run", "run_ref", required=True, metavar="RUN",
              help="MLflow run id, run folder or checkpoint file.")
@click.option("--metric", "metric_names", multiple=True, metavar="NAME",
              help="Score only these metrics (repeat; default: the run's eval.metrics).")
@click.option("--tracking-uri", metavar="URI", default=None)
@click.pass_context
def evaluate(ctx: click.Context, run_ref: str, metric_names: tuple[str, ...],
             tracking_uri: str | None) -> None:
    """Score a trained generator with its run's evaluation settings; prints JSON.

    Given an MLflow run id, the scores are also logged to that run.
    """
    from lafite.metrics import metric_info
    from lafite.metrics.evaluate import evaluate_generator
    from lafite.train import load_generator

    for name in metric_names:
        metric_info(name, where="--metric")
    if not Path(run_ref).exists():  # the scores go to the run in the store
        _check_tracking(tracking_uri)
    checkpoint = _checkpoint(ctx, run_ref, tracking_uri)
    g_ema, cfg = load_generator(checkpoint)
    if metric_names:
        cfg = cfg.override({"eval.metrics": list(metric_names)}, where="--metric")
    workspace = _workspace(ctx)
    result = evaluate_generator(cfg, g_ema, workspace, progress=True)
    if not Path(run_ref).exists():
        from lafite.tracking import Tracker

        Tracker(workspace, tracking_uri).log_evaluation(
            run_ref, cfg.train.kimg, result.for_tracking(), result.to_dict()
        )
    click.echo(json.dumps(result.to_dict(), indent=2, default=str))



# -- import ------------------------------------------------------------------------------------


@main.command("import")
@click.argument("pkl", type=click.Path(dir_okay=False))
@click.option("--name", metavar="NAME", default=None,
              help="Name of the imported model (default: the snapshot's folder and file name); "
                   "a spec row names it with `import: NAME`.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Evaluation settings recorded with the model for `evaluate --run` (data.*, "
                   "clip.*, eval.*), as in `run --set`; the layout comes from the snapshot.")
@click.option("--tracking-uri", metavar="URI", default=None)
@click.pass_context
def import_cmd(ctx: click.Context, pkl: str, name: str | None, assignments: tuple[str, ...],
               tracking_uri: str | None) -> None:
    """Import an official LAFITE network-snapshot-*.pkl (the authors' checkpoints).

    The pickle is read without running the code stored in it (only tensors, plain containers
    and StyleGAN2-ADA persistence records are accepted), its parameters are mapped onto our
    networks and their shapes checked, and the model is recorded as a finished MLflow run
    (experiment "imported") that `evaluate --run`, `generate --run` and train.init_checkpoint
    use like one of ours. Importing the same file under the same name again does nothing.
    """
    from lafite.importer import record_import
    from lafite.spec import parse_assignments

    _check_tracking(tracking_uri)
    workspace = _workspace(ctx).check()
    record = record_import(Path(pkl), workspace, name=name,
                           overrides=parse_assignments(assignments) or None,
                           tracking_uri=tracking_uri)
    d = record.detected
    channels = ", ".join(f"{r}:{c}" for r, c in d["channels"].items())
    lines = {
        "name": record.name + (" (already imported)" if record.reused else ""),
        "MLflow run": record.run_id,
        "checkpoint": str(record.checkpoint),
        "source sha256": record.sha256,
        "layout": (f"{d['resolution']} px, f_dim {d['f_dim']}, mapping layers "
                   f"{d['mapping_layers']}, structure {d['structure']} ({d['cond_form']}), "
                   f"channels {channels}"),
        "parameters": f"G {record.params_G:,}, D {record.params_D:,}",
        "import time": f"{record.seconds:.1f} s",
    }
    for key, value in lines.items():
        click.echo(f"{key}: {value}")


# -- data ------------------------------------------------------------------------------------


@main.group(cls=_Group)
def data() -> None:
    """The paper's datasets in their published formats (lafite.data.formats)."""


@data.command("check")
@click.argument("name", metavar="NAME")
@click.option("--root", required=True, metavar="DIR", type=click.Path(file_okay=False),
              help="The dataset's folder as downloaded (or the folder holding NAME/).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "test"]),
              help="Check this split only (repeatable; default: both).")
@click.option("--skip-corrupt", is_flag=True,
              help="Count corrupt or missing items as skipped (as data.skip_corrupt: true does "
                   "for runs) instead of failing.")
@click.option("--no-scan", is_flag=True, help="Do not open every image (faster; lists only).")
def data_check(name: str, root: str, splits: tuple[str, ...], skip_corrupt: bool,
               no_scan: bool) -> None:
    """Report what dataset NAME in DIR holds, read as training reads it: images per split,
    captions per image, unreadable files, and what is missing with how to get it. Exits with
    status 1 when a run on this data would stop."""
    from lafite.data.formats.check import check_data, render

    report = check_data(name, root, splits=splits or ("train", "test"),
                        skip_corrupt=skip_corrupt, scan_images=not no_scan)
    click.echo(render(report))
    if report.problems:
        sys.exit(1)

if __name__ == "__main__":
    main()
