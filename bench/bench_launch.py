"""What the cluster launchers cost, measured side by side in one run on this machine.

1. A smoke row with ``--launcher local`` and with ``--launcher slurm --wait`` on a real
   single-node SLURM (started here as in tests/engines.py; needs slurm-wlm and root): the
   SLURM job's submit-to-start time and the total against local.
2. Requeue to resume: a longer smoke row preempted with USR2 (submitit's path) once its first
   checkpoint exists: seconds from the signal until the job runs again, and until it has written
   a newer checkpoint.
3. torchrun with 2 gloo processes against 1 process at mini scale (training only, no
   evaluation): images/s ratio. CPU DDP is a correctness check, not a speed-up: both processes
   share the cores.

    python bench/bench_launch.py --mini-home /work/ws-mini      # mini needs its world CLIP built

Each smoke measurement starts from a copy of a template workspace whose helper models are
built once (``--template``, default: built here by one local smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from engines import slurm_missing, start_slurm  # noqa: E402

ROW = "LAFITE_G"


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "lafite.cli", *args], capture_output=True,
                         text=True, env={**(env or os.environ), "LAFITE_HOME": str(home),
                                         "HF_HUB_OFFLINE": "1"})
    if run.returncode != 0:
        raise SystemExit(f"lafite-repro {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - started


def fresh(template: Path, scratch: Path, name: str) -> Path:
    home = scratch / name
    shutil.copytree(template / "models", home / "models")
    return home


def squeue_times(env: dict[str, str], job_id: str) -> tuple[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True,
                         text=True).stdout
    return (re.search(r"SubmitTime=(\S+)", out).group(1), re.search(r"StartTime=(\S+)", out).group(1))


def seconds_between(a: str, b: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S"
    return time.mktime(time.strptime(b, fmt)) - time.mktime(time.strptime(a, fmt))


def job_ids(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %j"], env=env,
                         capture_output=True, text=True).stdout
    return sorted((line.split()[0] for line in out.splitlines() if "table5" in line), key=int)


def smoke(template: Path, scratch: Path, slurm) -> None:
    local = cli(fresh(template, scratch, "local"), "run", "table5", "--scale", "smoke", "--rows",
                ROW, "--quiet")
    home = fresh(template, scratch, "slurm")
    total = cli(home, "run", "table5", "--scale", "smoke", "--rows", ROW, "--launcher", "slurm",
                "--wait", "--quiet", env=slurm.env)
    job = job_ids(slurm.env)[-1]
    submit, start = squeue_times(slurm.env, job)
    print(f"smoke row {ROW}: local {local:.1f} s, slurm {total:.1f} s (ratio {total / local:.2f}); "
          f"SLURM submit to start {seconds_between(submit, start):.0f} s (1-s resolution)")


def requeue(template: Path, scratch: Path, slurm) -> None:
    from lafite.checkpoint import load_checkpoint

    home = fresh(template, scratch, "requeue")
    cli(home, "run", "table5", "--scale", "smoke", "--rows", ROW, "--launcher", "slurm",
        "--set", "train.kimg=1.6", "--set", "train.checkpoint_kimg=0.08", "--quiet",
        env=slurm.env)
    job = job_ids(slurm.env)[-1]
    checkpoint = next(iter((home / "runs").glob("*")), None)
    while checkpoint is None or not (checkpoint / "checkpoint.pt").exists():
        time.sleep(0.2)
        checkpoint = next(iter((home / "runs").glob("*")), None)
    first = load_checkpoint(checkpoint / "checkpoint.pt")["kimg"]
    signalled = time.perf_counter()
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm.env, check=True)
    running_again = None
    while True:
        show = subprocess.run(["scontrol", "show", "job", "-o", job], env=slurm.env,
                              capture_output=True, text=True).stdout
        if running_again is None and "Restarts=1" in show and "JobState=RUNNING" in show:
            running_again = time.perf_counter() - signalled
        if running_again is not None:
            try:
                kimg = load_checkpoint(checkpoint / "checkpoint.pt")["kimg"]
            except Exception:  # being replaced
                kimg = first
            if kimg > first + 0.08 + 1e-9 or "JobState=COMPLETED" in show:
                break
        elif "JobState=COMPLETED" in show or not show:
            raise SystemExit("the row finished before the preemption reached it; make it longer")
        time.sleep(0.2)
    newer = time.perf_counter() - signalled
    print(f"requeue: USR2 at {first} kimg -> running again after {running_again:.1f} s, a newer "
          f"checkpoint after {newer:.1f} s (that includes training one checkpoint interval)")


def torchrun_ratio(mini_home: Path, scratch: Path, kimg: float) -> None:
    import yaml

    from lafite import spec as spec_mod

    spec = spec_mod.find("table5")
    row = next(r for r in spec.trainable_rows if r.name == ROW)
    cfg = spec.resolve(row, "mini").override({"train.kimg": kimg, "train.log_every": 4,
                                             "train.checkpoint_kimg": 1000.0})
    config = scratch / "mini.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "LAFITE_HOME": str(mini_home), "HF_HUB_OFFLINE": "1"}
    speeds = {}
    for procs in (1, 2):
        run_dir = scratch / f"mini-{procs}"
        if procs == 1:
            command = [sys.executable, "-m", "lafite.train"]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nnodes=1", f"--nproc_per_node={procs}", "-m", "lafite.train"]
        out = subprocess.run([*command, "--config", str(config), "--run-dir", str(run_dir)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        rates = [float(m) for m in re.findall(r"timing/img_per_s=([0-9.e+]+)", out.stdout)]
        speeds[procs] = statistics.median(rates[1:] or rates)
    print(f"mini {ROW}, {kimg} kimg, training only: 1 process {speeds[1]:.1f} img/s, torchrun "
          f"2 gloo processes {speeds[2]:.1f} img/s (ratio {speeds[2] / speeds[1]:.2f}; "
          f"{os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, default=None,
                        help="a workspace whose models/ hold the smoke helper models")
    parser.add_argument("--mini-home", type=Path, default=None,
                        help="a workspace with the mini world CLIP (skip torchrun if absent)")
    parser.add_argument("--mini-kimg", type=float, default=0.64)
    parser.add_argument("--only", choices=["smoke", "requeue", "torchrun"], default=None)
    parser.add_argument("--keep-template", type=Path, default=None,
                        help="copy the template workspace built here to this folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    print(json.dumps({"cores": os.cpu_count(), "load": os.getloadavg()}))
    if args.only in (None, "torchrun") and args.mini_home:
        torchrun_ratio(args.mini_home, scratch, args.mini_kimg)
    if args.only == "torchrun":
        return
    why = slurm_missing()
    if why:
        raise SystemExit(f"cannot measure the SLURM launcher: {why}")
    template = args.template
    if template is None:
        template = scratch / "template"
        cli(template, "run", "table5", "--scale", "smoke", "--rows", ROW, "--quiet")
        if args.keep_template:
            shutil.copytree(template / "models", args.keep_template / "models")
    slurm = start_slurm(scratch / "slurm")
    try:
        if args.only in (None, "smoke"):
            smoke(template, scratch, slurm)
        if args.only in (None, "requeue"):
            requeue(template, scratch, slurm)
    finally:
        slurm.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
